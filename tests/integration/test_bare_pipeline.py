"""The bare pipeline (the engine's messages and commits with no engine) runs end to end on
the real broker and database, reports the same figures as the other peers, and leaves
neither its queues nor its table behind."""

from __future__ import annotations

import pytest

from bench.peers.bare_pipeline import Options, run
from bench.peers.bare_roles import Names
from orchestrator.config import Settings
from tests.support import harness

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("start_in_database", [False, True], ids=["by-command", "in-database"])
async def test_every_instance_goes_through_every_step_and_nothing_stays(
    settings: Settings, start_in_database: bool
) -> None:
    options = Options(
        amqp_url=settings.amqp_url,
        database_url=settings.database_url,
        instances=60,
        steps=3,
        workers=2,
        rate=40.0,
        rate_instances=20,
        warmup=10,
        timeout_s=60.0,
        start_in_database=start_in_database,
    )

    # An instance counts as done only when its last step's commit set ended_at: the run
    # would time out if any step's task or report went missing.
    result = await run(options)

    assert result["tasks_per_s"] > 0 and result["instances_per_s"] > 0
    assert 0 < result["instance_latency_ms"]["p50"] <= result["instance_latency_ms"]["p99"]
    # Every step of every latency-phase instance went through a worker.
    assert result["dispatch_latency_ms"]["p50"] is not None
    phase = result["latency_phase"]
    assert phase["instances"] == 20
    assert ("committed by the client" in result["variant"]) == start_in_database
    assert set(phase["cpu_s_per_1000_tasks"]) == {
        "coordinator",
        "workers",
        "postgres",
        "rabbitmq",
        "bench client",
    }

    names = Names(result["run"], options.steps)
    for queue in names.queues:
        assert not await harness.queue_exists(settings.amqp_url, queue)
    assert not await harness.table_exists(settings.database_url, names.table)
