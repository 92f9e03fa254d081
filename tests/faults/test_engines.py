"""Two engine replicas, one of them killed with -9 again and again (and one dying right
between committing a batch and publishing its task messages): nothing is lost, nothing is
applied twice. And the same two replicas without faults, as the suite's baseline."""

from __future__ import annotations

import pytest

from tests.faults.workload import Workload, exited

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

KILLS = 5


@pytest.mark.timeout(120)
async def test_two_engines_without_faults(workload: Workload) -> None:
    # A long lock: without faults no lease may expire, however busy the machine is.
    workload.configure("baseline: 2 engines, no fault", count=300, lock="30s")
    workload.engine()
    workload.engine()
    await workload.deploy()
    workload.worker()
    workload.worker()
    workload.start()  # all at once: the two engines race for every batch

    verdict = await workload.finish()
    # Without faults nothing runs or arrives twice: the accounting itself adds no repeats.
    assert verdict.repeat_runs == 0, verdict
    assert verdict.ledger_repeats == 0, verdict
    assert verdict.counter("leases_expired") == 0, verdict


@pytest.mark.timeout(150)
async def test_engine_killed_repeatedly_with_two_replicas(workload: Workload) -> None:
    workload.configure("kill -9 engine, 2 replicas", count=300)
    # This one dies (exit 137, as kill -9) right after committing its fifth report batch,
    # before acking the reports and publishing the batch's task messages.
    crashing = workload.engine(ORCH_CRASH_AT="after_commit", ORCH_CRASH_AFTER="5")
    workload.engine()
    await workload.deploy()
    workload.worker()
    workload.worker()
    workload.start(rate=40)

    assert await exited(crashing, timeout=60) == 137
    workload.died(crashing, "crash after commit")
    workload.engine()
    for _ in range(KILLS):
        await workload.progressed(by=60)
        victim = workload.live(workload.engines)[0]  # the oldest: alternates between two
        await workload.kill(victim, "kill -9 engine")
        workload.engine()

    await workload.finish(exact_reports=False)
