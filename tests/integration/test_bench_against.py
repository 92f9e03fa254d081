"""`./dev bench --against DIR` end to end: both sides run the workload at the same
time on the real services, and the other side's figures come back from the other checkout
(here the same one, which the run checks by the code path the other side reports)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from bench import ROOT
from bench.against import this_checkout
from orchestrator.services import Services

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_both_sides_run_and_report(services: Services) -> None:
    env = {
        **os.environ,
        "ORCH_DATABASE_URL": services.database_url,
        "ORCH_AMQP_URL": services.amqp_url,
    }
    command = [
        sys.executable, "-m", "bench",
        "--instances", "60", "--rate", "20", "--rate-seconds", "1",
        "--against", str(this_checkout()), "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=280,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = orjson.loads(done.stdout.decode().strip().splitlines()[-1])
    theirs = result["against"]
    assert "error" not in theirs, theirs
    assert theirs["name"].startswith("orchestrator@")
    assert theirs["code"] == result["code"] == str(this_checkout())
    for side in (result, theirs):
        assert side["instances"] == 60 and side["tasks_per_s"] > 0
        assert side["latency_phase"]["rate"] == 20.0
        assert side["instance_latency_ms"]["p50"] > 0
        # The stages are cut where one transaction closes a task and creates the next: if
        # those moments did not coincide, the parts would not add up to the whole.
        stages = side["latency_phase"]["breakdown"]
        assert stages["instances"] == 20 and stages["steps"] == 60
        for stage in ("start", "engine", "to_worker", "back"):
            assert stages[stage]["mean"] > 0, (stage, stages)
        parts = stages["start"]["mean"] + 3 * sum(
            stages[s]["mean"] for s in ("engine", "to_worker", "back")
        )
        assert abs(parts - stages["total_mean"]) < 0.06, stages
    assert theirs["name"] in done.stdout.decode()
