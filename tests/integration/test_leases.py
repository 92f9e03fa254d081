"""Leases: a taken task is held until its deadline, then handed to someone else exactly once.

DESIGN: a worker that takes a task holds it until its deadline and nobody else receives it
meanwhile; the clock starts when a worker takes it (not when it is published), so a backlog
never burns lock time. When the deadline passes with no report, the task is visible again as a
new attempt within deadline + 1 s. The first completion wins; a later one is a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest

from orchestrator.broker.topology import Topology
from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import (
    Processes,
    counter,
    instance_states,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

LOCK_S = 2.0
LOCK = timedelta(seconds=LOCK_S)
#: DESIGN: after the deadline the task is visible again as a new attempt within this long.
REDISPATCH_WITHIN = timedelta(seconds=1)
#: Timestamps from PostgreSQL and from this process share the host clock; allow for rounding.
CLOCK_TOLERANCE = timedelta(milliseconds=50)
LEASE_WORKER = "tests.support.lease_workers:worker"
EXECUTIONS_DDL = """
CREATE TABLE lease_executions (
    id              bigserial PRIMARY KEY,
    idempotency_key text        NOT NULL,
    attempt         integer     NOT NULL,
    worker_pid      integer     NOT NULL,
    started_at      timestamptz NOT NULL
)
"""


# --- helpers ---------------------------------------------------------------------------


async def task_of(db: asyncpg.Pool, instance_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT id, status, attempt, worker_id, lease_expires_at, lock_ms, lease_expiries, "
        "created_at, closed_at FROM tasks WHERE instance_id = $1",
        instance_id,
    )
    assert row is not None, f"instance {instance_id} has no task"
    return row


async def task_status_is(db: asyncpg.Pool, instance_id: str, status: str) -> bool:
    row = await db.fetchrow("SELECT status FROM tasks WHERE instance_id = $1", instance_id)
    return row is not None and row["status"] == status


async def executions(db: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT idempotency_key, attempt, worker_pid, started_at FROM lease_executions ORDER BY id"
    )
    return rows


async def outcome_ledger(db: asyncpg.Pool, task_id: Any) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT kind, attempt, worker_id, duplicates, conflicts FROM report_ledger "
        "WHERE task_id = $1 AND slot = 'outcome'",
        task_id,
    )


async def repeats_of(db: asyncpg.Pool, task_id: Any) -> int:
    row = await outcome_ledger(db, task_id)
    return 0 if row is None else int(row["duplicates"] + row["conflicts"])


async def history_of(db: asyncpg.Pool, instance_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT at, kind, detail FROM history WHERE instance_id = $1 ORDER BY id", instance_id
    )
    return rows


async def queue_state(settings: Settings, topic: str) -> str:
    """Ready messages and consumers of a topic's queue, as the broker reports them."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(settings.namespace).task_queue(topic), passive=True
        )
        result = queue.declaration_result
        return f"ready={result.message_count} consumers={result.consumer_count}"
    finally:
        await connection.close()


async def describe(db: asyncpg.Pool, settings: Settings, instance_id: str, topic: str) -> str:
    """Everything worth seeing when a lease assertion fails."""
    task = await task_of(db, instance_id)
    lines = [
        f"task: {dict(task)}",
        f"outcome ledger: {await outcome_ledger(db, task['id'])}",
        f"queue {topic}: {await queue_state(settings, topic)}",
        "history:",
        *(
            f"  {row['at'].isoformat()} {row['kind']} {row['detail']}"
            for row in await history_of(db, instance_id)
        ),
    ]
    with contextlib.suppress(asyncpg.UndefinedTableError):
        runs = await executions(db)
        lines += ["executions:", *(f"  {dict(row)}" for row in runs)]
    return "\n".join(lines)


async def wait_explained(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], Awaitable[str]],
) -> float:
    """`wait_until`, with the state of the system in the failure message."""
    try:
        return await wait_until(check, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await explain()}") from None


def seconds_until(moment: datetime) -> float:
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


# --- 1. a handler that hangs -----------------------------------------------------------


async def test_hung_handler_holds_lease_until_deadline_then_next_attempt_wins(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topic = "lease-hang"
    topics.add(topic)
    release = asyncio.Event()
    hung_seen: list[tuple[int, datetime]] = []
    fast_seen: list[tuple[int, datetime]] = []

    # One slot: A has taken the task and is busy with it, so it has no room for another one.
    hung = Worker("hung", settings=settings, shutdown_grace_s=3.0)

    @hung.task(topic, concurrency=1)
    async def hang(task: TaskContext) -> dict[str, Any]:
        hung_seen.append((task.attempt, datetime.now(UTC)))
        await release.wait()
        return {"by": "hung", "attempt": task.attempt}

    fast = Worker("fast", settings=settings, shutdown_grace_s=3.0)

    @fast.task(topic)
    async def finish(task: TaskContext) -> dict[str, Any]:
        fast_seen.append((task.attempt, datetime.now(UTC)))
        return {"by": "fast", "attempt": task.attempt}

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(sequential_process("lease_hang", [topic], lock="2s"))
        started = await client.start("lease_hang")
        instance = started.instance_id

        async def explain() -> str:
            running = sorted(key[1] for key in hung._running)
            return (
                f"hung worker saw {hung_seen}, holds attempts {running}; "
                f"fast worker saw {fast_seen}\n" + await describe(db, settings, instance, topic)
            )

        async def published() -> bool:
            pending = await db.fetchval("SELECT count(*) FROM outbox")
            return pending == 0 and await task_status_is(db, instance, "queued")

        await wait_explained(
            published, timeout=10, what="the task to be published", explain=explain
        )
        await stack.enter_async_context(running_worker(hung))
        # Unwinds before A's shutdown, so A's handler returns instead of being given back.
        stack.callback(release.set)

        await wait_explained(
            lambda: task_status_is(db, instance, "claimed"),
            timeout=10,
            what="worker A to claim the task",
            explain=explain,
        )
        lease = await task_of(db, instance)
        lease_end: datetime = lease["lease_expires_at"]
        lease_start = lease_end - timedelta(milliseconds=lease["lock_ms"])
        assert lease["attempt"] == 1
        assert lease["worker_id"] == hung.worker_id
        assert lease["lock_ms"] == LOCK_S * 1000

        await stack.enter_async_context(running_worker(fast))

        async def fast_started() -> bool:
            return bool(fast_seen)

        await wait_explained(
            fast_started,
            timeout=seconds_until(lease_end + REDISPATCH_WITHIN) + 2.0,
            what="worker B to receive the task after A's lease ended",
            explain=explain,
        )
        await wait_explained(
            lambda: task_status_is(db, instance, "completed"),
            timeout=10,
            what="B's completion to be applied",
            explain=explain,
        )
        fast_attempt, fast_entry = fast_seen[0]
        details = await explain()
        # The lease started when A took the task, not when it was published.
        assert hung_seen[0][0] == 1, details
        assert lease_start >= hung_seen[0][1] - CLOCK_TOLERANCE, details
        # Nobody else got it before the deadline; it came back within deadline + 1 s.
        assert fast_attempt == 2, details
        assert fast_entry >= lease_end - CLOCK_TOLERANCE, details
        assert fast_entry <= lease_end + REDISPATCH_WITHIN, details
        assert [attempt for attempt, _ in hung_seen] == [1], details

        # Now A's handler returns: its completion of attempt 1 comes after B's and must not
        # be applied a second time.
        release.set()
        await wait_explained(
            lambda: _repeated_once(db, lease["id"]),
            timeout=10,
            what="A's late completion to be answered as a repeat",
            explain=explain,
        )
        details = await explain()

    completions = [h for h in await history_of(db, instance) if h["kind"] == "task_completed"]
    ledger = await outcome_ledger(db, lease["id"])
    task = await task_of(db, instance)
    state = await db.fetchrow(
        "SELECT status, variables FROM process_instances WHERE id = $1", instance
    )
    assert len(completions) == 1, details
    assert ledger is not None, details
    assert (ledger["kind"], ledger["attempt"], ledger["worker_id"]) == (
        "completed",
        2,
        fast.worker_id,
    ), details
    assert ledger["duplicates"] + ledger["conflicts"] == 1, details
    assert (task["status"], task["attempt"], task["lease_expiries"]) == ("completed", 2, 1)
    assert state is not None
    assert state["status"] == "completed", details
    assert state["variables"]["by"] == "fast", details
    assert await counter(db, "leases_expired") == 1


async def _repeated_once(db: asyncpg.Pool, task_id: Any) -> bool:
    return await repeats_of(db, task_id) >= 1


# --- 2. a worker that is stopped (SIGSTOP) ---------------------------------------------


async def test_stopped_worker_loses_task_to_another_after_deadline(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    topic = "lease-stop"
    topics.add(topic)
    await db.execute(EXECUTIONS_DDL)
    env = {"LEASE_TOPIC": topic, "LEASE_DB_URL": settings.database_url}
    processes.engine()
    async with Client(settings) as client:
        await client.deploy(sequential_process("lease_stop", [topic], lock="2s"))
        started = await client.start("lease_stop")
    instance = started.instance_id

    async def explain() -> str:
        return await describe(db, settings, instance, topic) + "\n" + processes.logs()

    # Its one slot is busy for 8 s: longer than the lease plus the takeover, so its late
    # completion arrives after SIGCONT, once the task is already done by the other worker.
    slow = processes.worker(LEASE_WORKER, **env, LEASE_DELAY_S="8", LEASE_CONCURRENCY="1")
    await wait_explained(
        lambda: task_status_is(db, instance, "claimed"),
        timeout=20,
        what="the slow worker to claim the task",
        explain=explain,
    )
    os.kill(slow.pid, signal.SIGSTOP)
    lease = await task_of(db, instance)
    lease_end: datetime = lease["lease_expires_at"]
    lease_start = lease_end - timedelta(milliseconds=lease["lock_ms"])
    fast = processes.worker(LEASE_WORKER, **env, LEASE_DELAY_S="0")

    # Bound on the completion: the DESIGN's redispatch bound (lock + 1 s) plus 1 s for what
    # follows it, none of which the lease covers: the subprocess engine's reaper polls every
    # 200 ms (its default; the environment cannot lower it), then the relay publishes, the
    # fast worker handles it (no delay) and reports, and the engine applies the report.
    complete_by = lease_start + LOCK + REDISPATCH_WITHIN + timedelta(seconds=1)
    try:
        await wait_explained(
            lambda: task_status_is(db, instance, "completed"),
            timeout=seconds_until(complete_by) + 3.0,
            what="another worker to complete the task of the stopped one",
            explain=explain,
        )
        done = await task_of(db, instance)
        runs = await executions(db)
        expiries = [h for h in await history_of(db, instance) if h["kind"] == "lease_expired"]
        details = await explain()
        assert done["closed_at"] <= complete_by, details
        assert done["attempt"] == 2, details
        assert [(r["attempt"], r["worker_pid"]) for r in runs] == [(1, slow.pid), (2, fast.pid)], (
            details
        )
        takeover = runs[1]["started_at"]
        assert lease_end - CLOCK_TOLERANCE <= takeover <= lease_end + REDISPATCH_WITHIN, details
        assert len(expiries) == 1, details
        assert expiries[0]["at"] <= lease_end + REDISPATCH_WITHIN, details
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slow.pid, signal.SIGCONT)

    # The stopped worker wakes up and finishes attempt 1: answered as a repeat, not applied.
    await wait_explained(
        lambda: _repeated_once(db, lease["id"]),
        timeout=20,
        what="the woken worker's late completion to be answered as a repeat",
        explain=explain,
    )
    details = await explain()
    completions = [h for h in await history_of(db, instance) if h["kind"] == "task_completed"]
    ledger = await outcome_ledger(db, lease["id"])
    assert len(completions) == 1, details
    assert ledger is not None, details
    assert (ledger["kind"], ledger["attempt"]) == ("completed", 2), details
    assert ledger["duplicates"] + ledger["conflicts"] == 1, details
    assert (await instance_states(db, "lease_stop")) == {"completed": 1}, details


# --- 3. a backlog much older than the lock ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_backlog_older_than_lock_is_done_once_without_expiries(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    topic = "lease-backlog"
    topics.add(topic)
    total, chunk = 5_000, 500
    await db.execute(EXECUTIONS_DDL)
    processes.engine()

    async def explain() -> str:
        counts = await db.fetchrow(
            "SELECT count(*) AS runs, count(DISTINCT idempotency_key) AS keys, "
            "max(attempt) AS max_attempt FROM lease_executions"
        )
        counters = await db.fetch(
            "SELECT name, sum(value) AS value FROM engine_counters GROUP BY name ORDER BY name"
        )
        return (
            f"instances: {await instance_states(db, 'lease_backlog')}\n"
            f"executions: {dict(counts) if counts else None}\n"
            f"counters: {[tuple(c) for c in counters]}\n"
            f"queue {topic}: {await queue_state(settings, topic)}\n" + processes.logs()
        )

    async with Client(settings) as client:
        await client.deploy(sequential_process("lease_backlog", [topic], lock="2s"))
        began = time.monotonic()
        for offset in range(0, total, chunk):
            await asyncio.gather(
                *(
                    client.start("lease_backlog", business_key=f"b-{n}", timeout=30)
                    for n in range(offset, min(offset + chunk, total))
                )
            )
    started_in = time.monotonic() - began

    async def all_published() -> bool:
        queued = await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'queued'")
        pending = await db.fetchval("SELECT count(*) FROM outbox")
        return bool(queued == total and pending == 0)

    await wait_explained(
        all_published, timeout=60, what="all tasks to be published", explain=explain
    )

    # Two workers, 20 handlers of ~100 ms each: about 400 tasks/s, so the last tasks wait
    # in the queue for many times the 2 s lock before anyone takes them.
    env = {
        "LEASE_TOPIC": topic,
        "LEASE_DB_URL": settings.database_url,
        "LEASE_DELAY_S": "0.1",
        "LEASE_CONCURRENCY": "20",
    }
    processes.worker(LEASE_WORKER, **env)
    processes.worker(LEASE_WORKER, **env)

    async def all_completed() -> bool:
        return (await instance_states(db, "lease_backlog")).get("completed") == total

    drained_in = await wait_explained(
        all_completed, timeout=150, what="all instances to complete", explain=explain
    )
    details = await explain() + f"\nstarted in {started_in:.1f}s, drained in {drained_in:.1f}s"

    runs = await db.fetchrow(
        "SELECT count(*) AS runs, count(DISTINCT idempotency_key) AS keys, "
        "min(attempt) AS min_attempt, max(attempt) AS max_attempt, "
        "count(DISTINCT worker_pid) AS workers FROM lease_executions"
    )
    unexecuted = await db.fetchval(
        "SELECT count(*) FROM tasks t WHERE NOT EXISTS "
        "(SELECT 1 FROM lease_executions e WHERE e.idempotency_key = t.id::text)"
    )
    tasks = await db.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'completed') AS completed, "
        "max(attempt) AS max_attempt, max(lease_expiries) AS max_expiries, "
        "min(created_at) AS first_created FROM tasks"
    )
    last_taken = await db.fetchval("SELECT max(started_at) FROM lease_executions")
    repeats = await db.fetchval(
        "SELECT coalesce(sum(duplicates + conflicts), 0) FROM report_ledger"
    )
    expired_rows = await db.fetchval("SELECT count(*) FROM history WHERE kind = 'lease_expired'")
    assert runs is not None and tasks is not None, details

    # The scenario really is a backlog: the last task was taken long after it was queued.
    assert last_taken - tasks["first_created"] > 2 * LOCK, details
    assert (tasks["n"], tasks["completed"], tasks["max_attempt"]) == (total, total, 1), details
    assert tasks["max_expiries"] == 0, details
    # Every task ran exactly once, as its first attempt.
    assert (runs["runs"], runs["keys"]) == (total, total), details
    assert (runs["min_attempt"], runs["max_attempt"]) == (1, 1), details
    assert unexecuted == 0, details
    assert await counter(db, "leases_expired") == 0, details
    assert expired_rows == 0, details
    assert repeats == 0, details
