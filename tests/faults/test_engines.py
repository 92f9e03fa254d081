"""Two engine replicas, one of them killed with -9 again and again (and one dying right
between committing a batch and publishing its task messages): nothing is lost, nothing is
applied twice. The same with a parallel process, killed while instances sit in their branches
and joins: each join still fires exactly once. And the same two replicas without faults, as
the suite's baseline."""

from __future__ import annotations

import pytest

from tests.faults.workload import PARALLEL, Workload, exited

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


#: At 55 a second, about 16 s of arrivals: five kill cycles (each waits for 100 more
#: completions and for a new engine, over a second to start on a small machine) all land
#: while instances still arrive.
JOIN_INSTANCES = 900
JOIN_KILLS = 5


@pytest.mark.timeout(90)
async def test_engine_killed_amid_parallel_branches_and_joins(workload: Workload) -> None:
    # Each task takes 150-250 ms, so an instance's three branches finish within moments of
    # each other and their completions reach both engines at once: the join is decided under
    # the instance's row lock by whichever engine gets there, and either may be the one killed.
    workload.configure(
        "kill -9 engine amid parallel branches and joins",
        count=JOIN_INSTANCES,
        shape=PARALLEL,
        min_delay_ms=150,
        max_delay_ms=250,
    )
    workload.engine()
    workload.engine()
    await workload.deploy()
    await workload.engines_consuming(2)
    workload.worker()
    workload.worker()
    workload.start(rate=55)  # 20-50 instances in branches at any time

    amid: list[tuple[int, int]] = []
    for _ in range(JOIN_KILLS):
        await workload.progressed(by=100)
        # Kill with instances in their branches and some already parked at their join.
        amid.append(await workload.amid_joins(branching=12, parked=3))
        victim = workload.live(workload.engines)[0]  # the oldest: alternates between two
        await workload.kill(victim, "kill -9 engine")
        workload.engine()
        # The next kill hits one of two running engines again, not the last one standing.
        await workload.engines_consuming(2)

    verdict = await workload.finish(exact_reports=False)
    # With -s: where the kills landed, and how often the engines met on one instance (a
    # report set aside while the other held the row; a copy the other had changed).
    print(
        f"killed amid (in branches, parked at the join): {amid}; joins: {verdict.joins}; "
        f"reports_deferred {verdict.counter('reports_deferred')}, "
        f"recent_copies_stale {verdict.counter('recent_copies_stale')}"
    )
    assert verdict.joins == JOIN_INSTANCES, verdict
