"""RabbitMQ and PostgreSQL restart while instances are in flight: nothing is lost, nothing
is applied twice. Needs control of the local services (rabbitmqctl, pg_ctlcluster); runs
that include these must hold /tmp/orch-services.lock (see README)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=60)


def restart_postgres() -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            versions[-1],
            "main",
            "restart",
            "-m",
            "fast",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def can_restart(tool: str) -> bool:
    if tool == "pg_ctlcluster" and not Path("/etc/postgresql").exists():
        return False
    return shutil.which(tool) is not None


async def run_through_restart(workload: Workload, name: str, restart: Callable[[], None]) -> None:
    workload.configure(name, count=250)
    workload.engine()
    workload.engine()
    await workload.deploy()
    workload.worker()
    workload.worker()
    workload.start(rate=40)
    await workload.progressed(by=80)
    await asyncio.to_thread(restart)
    workload.fault("restart")
    # An engine may have committed a batch whose ack the restart swallowed: it reads those
    # reports again, and the ledger records them as repeats.
    await workload.finish(exact_reports=False)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not can_restart("rabbitmqctl"), reason="needs a local RabbitMQ to restart")
async def test_rabbitmq_restart_under_load(workload: Workload) -> None:
    await run_through_restart(workload, "RabbitMQ stop_app/start_app", restart_rabbitmq)


@pytest.mark.timeout(180)
@pytest.mark.skipif(not can_restart("pg_ctlcluster"), reason="needs a local PostgreSQL to restart")
async def test_postgres_restart_under_load(workload: Workload) -> None:
    await run_through_restart(workload, "PostgreSQL restart", restart_postgres)
