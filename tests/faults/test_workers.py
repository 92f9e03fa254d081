"""Workers die (kill -9) or freeze (SIGSTOP) with tasks in hand, again and again: each task
is done once, by someone, and the repeats are recorded, not applied."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial

import pytest

from tests.faults.workload import Workload, tolerant
from tests.support.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

KILLS = 5
STOPS = 2
#: After its leases expired, a stopped worker stays stopped until others did its tasks, but
#: no longer than this.
STOPPED_AT_MOST_S = 4.0


@pytest.mark.timeout(150)
async def test_worker_killed_mid_task_repeatedly(workload: Workload) -> None:
    # Long enough that all the kills land while work is still arriving.
    workload.configure("kill -9 worker mid-task", count=400)
    workload.engine()
    await workload.deploy()
    for _ in range(3):
        workload.worker()
    workload.start(rate=40)
    interrupted = []
    for _ in range(KILLS):
        await workload.progressed(by=60)
        pid = await workload.busy_worker(workload.workers)
        victim = next(proc for proc in workload.workers if proc.pid == pid)
        await workload.kill(victim, "kill -9 worker")
        interrupted.append(await workload.unfinished_runs(pid))
        workload.worker()  # a replacement, so the others do not carry it all

    verdict = await workload.finish()
    # The kills hit work in hand, and all of it was done again by another worker (the effect
    # still applied once: finish() checked that). Not every kill need hit some: a run whose
    # last statement was already on its way to PostgreSQL finishes even though its worker
    # is dead, and on a loaded machine a victim's runs can all end that way.
    assert sum(1 for n in interrupted if n >= 1) >= KILLS - 2, interrupted
    assert verdict.interrupted_runs == sum(interrupted), verdict
    assert verdict.repeat_runs >= sum(interrupted), verdict
    # Claimed tasks of a dead worker came back through their lease.
    assert verdict.counter("leases_expired") >= 1, verdict


@pytest.mark.timeout(150)
async def test_worker_stopped_longer_than_its_lock(workload: Workload) -> None:
    # Longer handlers: more tasks in hand when it stops.
    workload.configure(
        "SIGSTOP worker past its lock, then SIGCONT", count=250, lock="2s", max_delay_ms=400
    )
    workload.engine()
    await workload.deploy()
    for _ in range(3):
        workload.worker()
    workload.start(rate=30)
    stopped: list[int] = []
    taken_over: set[str] = set()
    for _ in range(STOPS):
        await workload.progressed(by=80)
        pid = await workload.busy_worker([p for p in workload.workers if p.pid not in stopped])
        os.kill(pid, signal.SIGSTOP)
        workload.fault("SIGSTOP > lock + SIGCONT")
        stopped.append(pid)
        try:
            # Stopped until the engine took back every lease it held (they expired) ...
            await wait_until(
                partial(tolerant, partial(leases_taken_back, workload, pid)),
                timeout=30,
                what=f"the leases of stopped worker {pid} to expire",
            )
            # ... and then until other workers completed those tasks, for a few seconds at
            # most: a new attempt may have gone to the stopped worker itself, where it waits
            # (see test_frozen_idle_worker_does_not_hold_up_new_tasks).
            await for_at_most(
                STOPPED_AT_MOST_S, partial(tolerant, partial(all_done_elsewhere, workload, pid))
            )
            taken_over.update(await done_elsewhere(workload, pid))
        finally:
            os.kill(pid, signal.SIGCONT)

    verdict = await workload.finish()
    # Woken up, the stopped worker finished and reported the tasks that others had done
    # meanwhile: each of those completions was answered as a repeat and recorded.
    unrecorded = await workload.db.fetch(
        "SELECT t.id FROM tasks t LEFT JOIN report_ledger l "
        "ON l.task_id = t.id AND l.slot = 'outcome' "
        "WHERE t.id = ANY($1::uuid[]) AND coalesce(l.duplicates + l.conflicts, 0) = 0",
        sorted(taken_over),
    )
    assert not unrecorded, (unrecorded, verdict)
    assert verdict.counter("leases_expired") >= STOPS, verdict
    assert verdict.ledger_repeats >= len(taken_over), verdict


@pytest.mark.timeout(90)
async def test_frozen_idle_worker_does_not_hold_up_new_tasks(workload: Workload) -> None:
    workload.configure("SIGSTOP idle worker, new tasks arrive", count=200, lock="2s")
    workload.engine()
    await workload.deploy()
    live, frozen = workload.worker(), workload.worker()
    await workload.consuming(2)
    os.kill(frozen.pid, signal.SIGSTOP)
    workload.fault("SIGSTOP idle worker")
    try:
        workload.start()
        # One live worker with 20 free slots does 200 x 3 tasks of at most 150 ms in a few
        # seconds. The tasks RabbitMQ handed the frozen one (never claimed, so no lease runs)
        # come back when RabbitMQ drops its silent connection, about two 5 s heartbeats
        # later: well before RabbitMQ's default of 60 s, and while it is still frozen.
        await workload.all_completed(timeout=30)
        assert live.poll() is None
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    await workload.finish()


def worker_pattern(pid: int) -> str:
    """Matches the worker ids of process `pid` (name@host:pid:suffix)."""
    return f"%:{pid}:%"


async def done_elsewhere(workload: Workload, pid: int) -> list[str]:
    """Tasks whose lease worker `pid` lost and that another worker has completed."""
    rows = await workload.db.fetch(
        "SELECT DISTINCT t.id::text AS id FROM history h JOIN tasks t ON t.id = h.task_id "
        "WHERE h.kind = 'lease_expired' AND h.detail->>'worker' LIKE $1 "
        "AND t.status = 'completed' AND t.worker_id NOT LIKE $1",
        worker_pattern(pid),
    )
    return [row["id"] for row in rows]


async def leases_taken_back(workload: Workload, pid: int) -> bool:
    """Worker `pid` holds no lease any more, and at least one of its leases expired."""
    row = await workload.db.fetchrow(
        """
        SELECT (SELECT count(*) FROM tasks WHERE status = 'claimed' AND worker_id LIKE $1)
                   AS holding,
               (SELECT count(*) FROM history
                WHERE kind = 'lease_expired' AND detail->>'worker' LIKE $1) AS expired
        """,
        worker_pattern(pid),
    )
    return row is not None and row["holding"] == 0 and row["expired"] >= 1


async def all_done_elsewhere(workload: Workload, pid: int) -> bool:
    """Every task whose lease worker `pid` lost is completed (by another worker)."""
    open_tasks = await workload.db.fetchval(
        "SELECT count(*) FROM history h JOIN tasks t ON t.id = h.task_id "
        "WHERE h.kind = 'lease_expired' AND h.detail->>'worker' LIKE $1 "
        "AND t.status <> 'completed'",
        worker_pattern(pid),
    )
    return bool(open_tasks == 0)


async def for_at_most(seconds: float, check: Callable[[], Awaitable[bool]]) -> bool:
    """Wait until `check` holds, or `seconds` passed (then False): a bounded hold."""
    try:
        await wait_until(check, timeout=seconds, what="")
    except AssertionError:
        return False
    return True
