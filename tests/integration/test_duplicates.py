"""Repeated and conflicting outcome reports: recorded in the ledger, answered, applied once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest

from orchestrator.broker.topology import REPORT_ROUTING_KEY
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.model.wire import (
    Claimed,
    Completed,
    Released,
    ReportAnswer,
    TaskMessage,
    TaskRevoked,
)
from tests.support.harness import (
    counter,
    publish_raw,
    running_engine,
    sequential_process,
    wait_until,
)
from tests.support.raw_worker import TIMEOUT, RawWorker, body_of

pytestmark = pytest.mark.integration

FIRST = "dup-first"
SECOND = "dup-second"
RESULT = {"result": 42, "detail": {"carrier": "acme", "parcels": [{"id": 1, "kg": 2.5}]}}


# --- database views ------------------------------------------------------------------------


async def tasks_of(db: asyncpg.Pool, instance_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id::text AS id, node_id, status, attempt, worker_id FROM tasks "
        "WHERE instance_id = $1 ORDER BY created_at, id",
        instance_id,
    )
    return rows


async def history_count(db: asyncpg.Pool, task_id: str, kind: str) -> int:
    value = await db.fetchval(
        "SELECT count(*) FROM history WHERE task_id = $1 AND kind = $2", task_id, kind
    )
    return int(value)


async def outcome_ledger(db: asyncpg.Pool, task_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT kind, attempt, worker_id, duplicates, conflicts FROM report_ledger "
        "WHERE task_id = $1 AND slot = 'outcome'",
        task_id,
    )
    assert row is not None, f"no outcome ledger row for task {task_id}"
    return row


async def instance_of(db: asyncpg.Pool, instance_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT status, variables FROM process_instances WHERE id = $1", instance_id
    )
    assert row is not None, f"instance {instance_id} does not exist"
    return row


async def start_two_step(client: Client, key: str, variables: dict[str, Any]) -> str:
    await client.deploy(sequential_process(key, [FIRST, SECOND]))
    started = await client.start(key, variables=variables)
    return started.instance_id


async def finish_second_step(
    worker: RawWorker, db: asyncpg.Pool, instance_id: str, second: TaskMessage
) -> asyncpg.Record:
    """Complete step 2 normally and wait for the instance to complete."""
    await worker.report(
        Completed(
            task_id=second.task_id,
            attempt=second.attempt,
            worker_id="raw-2",
            variables={"shipped": True},
        ),
        reply=False,
    )

    async def completed() -> bool:
        status: str = (await instance_of(db, instance_id))["status"]
        return status == "completed"

    await wait_until(completed, timeout=TIMEOUT, what="the instance to complete after step 2")
    return await instance_of(db, instance_id)


# --- N identical completions ---------------------------------------------------------------


async def send_copies(worker: RawWorker, report: Completed, copies: int, mode: str) -> None:
    """Publish `copies` equal reports at once, all asking for an answer."""
    if mode == "connections":
        body = body_of(report)
        await asyncio.gather(
            *(
                publish_raw(
                    worker.settings,
                    worker.topology.reports_exchange,
                    REPORT_ROUTING_KEY,
                    body,
                    reply_to=worker.reply_to,
                )
                for _ in range(copies)
            )
        )
    elif mode == "reordered":
        # The same content serialized differently (as another worker might): keys reversed
        # at every level in every other copy.
        data = report.model_dump(mode="json")
        bodies = [orjson.dumps(reversed_keys(data) if i % 2 else data) for i in range(copies)]
        assert len(set(bodies)) == 2
        await asyncio.gather(*(worker.publish(body) for body in bodies))
    else:
        await asyncio.gather(*(worker.report(report) for _ in range(copies)))


def reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


async def check_applied_once(
    worker: RawWorker, db: asyncpg.Pool, instance_id: str, first: TaskMessage, copies: int
) -> None:
    # A marker behind all copies in the reports queue: a claim of the (by then closed) task is
    # answered with task_revoked, so once that answer is here every copy has been processed
    # and every answer to the copies (published earlier on the same channel) has arrived.
    await worker.report(Claimed(task_id=first.task_id, attempt=1, worker_id="raw-1"))

    async def marker_answered() -> bool:
        return any(isinstance(n, TaskRevoked) for n in worker.notices)

    await wait_until(
        marker_answered, timeout=TIMEOUT, what="the answer to the marker claim sent after copies"
    )
    revoked = [n for n in worker.notices if isinstance(n, TaskRevoked)]
    assert revoked == [TaskRevoked(task_id=first.task_id, attempt=1, reason="closed")]

    expected_answer = ReportAnswer(
        task_id=first.task_id,
        attempt=1,
        status="duplicate",
        recorded_kind="completed",
        recorded_attempt=1,
    )
    assert worker.answers() == [expected_answer] * (copies - 1)

    ledger = await outcome_ledger(db, first.task_id)
    assert (ledger["kind"], ledger["attempt"], ledger["worker_id"]) == ("completed", 1, "raw-1")
    assert (ledger["duplicates"], ledger["conflicts"]) == (copies - 1, 0)
    assert await counter(db, "reports_duplicate") == copies - 1
    assert await counter(db, "reports_conflicting") == 0

    assert await history_count(db, first.task_id, "task_completed") == 1
    tasks = await tasks_of(db, instance_id)
    assert [(t["node_id"], t["status"]) for t in tasks] == [
        ("step1", "completed"),
        ("step2", "queued"),
    ]
    assert await history_count(db, tasks[1]["id"], "task_created") == 1

    second = await worker.take(SECOND)
    assert (second.task_id, second.attempt) == (tasks[1]["id"], 1)
    assert second.variables == {"order": 7, **RESULT}
    assert await worker.leftover(SECOND) is None, "step 2 was dispatched more than once"

    final = await finish_second_step(worker, db, instance_id, second)
    assert final["variables"] == {"order": 7, **RESULT, "shipped": True}
    assert await history_count(db, first.task_id, "task_completed") == 1


@pytest.mark.parametrize(
    ("copies", "mode"),
    [
        (2, "burst"),
        (5, "burst"),
        (10, "burst"),
        (5, "connections"),
        (4, "reordered"),
        (10, "engine_down"),
    ],
)
async def test_repeated_completion_is_applied_once(
    settings: Settings, db: asyncpg.Pool, topics: set[str], copies: int, mode: str
) -> None:
    """`burst`: one channel, all at once; `connections`: one connection per copy;
    `reordered`: equal content, JSON keys in another order; `engine_down`: the copies queue
    up while no engine runs, so a restarted engine sees them together (the in-batch path of
    the ledger)."""
    topics.update({FIRST, SECOND})
    async with Client(settings) as client, RawWorker(settings) as worker:
        async with running_engine(settings):
            instance_id = await start_two_step(client, f"dup-{mode}-{copies}", {"order": 7})
            first = await worker.take(FIRST)
            assert first.attempt == 1
            report = Completed(
                task_id=first.task_id, attempt=1, worker_id="raw-1", variables=RESULT
            )
            if mode != "engine_down":
                await send_copies(worker, report, copies, mode)
                await check_applied_once(worker, db, instance_id, first, copies)
        if mode == "engine_down":
            await send_copies(worker, report, copies, mode)
            async with running_engine(settings):
                await check_applied_once(worker, db, instance_id, first, copies)


# --- a different payload for the same task -------------------------------------------------


async def test_conflicting_completion_is_recorded_and_not_applied(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.update({FIRST, SECOND})
    async with (
        running_engine(settings),
        Client(settings) as client,
        RawWorker(settings) as worker,
    ):
        instance_id = await start_two_step(client, "conflict", {"order": 7})
        first = await worker.take(FIRST)
        await worker.report(
            Completed(task_id=first.task_id, attempt=1, worker_id="raw-1", variables={"x": 1})
        )
        second = await worker.take(SECOND)  # step 1 was applied
        assert second.variables == {"order": 7, "x": 1}

        await worker.report(
            Completed(task_id=first.task_id, attempt=1, worker_id="raw-1", variables={"x": 2})
        )
        notices = await worker.wait_for_notices(1, "the answer to the conflicting completion")
        # The first completion was applied, so it got no answer: the only one is the conflict's.
        assert notices == [
            ReportAnswer(
                task_id=first.task_id,
                attempt=1,
                status="conflict",
                recorded_kind="completed",
                recorded_attempt=1,
            )
        ]

        ledger = await outcome_ledger(db, first.task_id)
        assert (ledger["kind"], ledger["attempt"]) == ("completed", 1)
        assert (ledger["duplicates"], ledger["conflicts"]) == (0, 1)
        assert await counter(db, "reports_conflicting") == 1
        assert await counter(db, "reports_duplicate") == 0

        assert (await instance_of(db, instance_id))["variables"] == {"order": 7, "x": 1}
        assert await history_count(db, first.task_id, "task_completed") == 1
        tasks = await tasks_of(db, instance_id)
        assert [(t["node_id"], t["status"]) for t in tasks] == [
            ("step1", "completed"),
            ("step2", "queued"),
        ]
        assert await worker.leftover(SECOND) is None, "step 2 was dispatched more than once"

        final = await finish_second_step(worker, db, instance_id, second)
        assert final["variables"] == {"order": 7, "x": 1, "shipped": True}


# --- a late completion from an older attempt -----------------------------------------------


@pytest.mark.parametrize(
    ("late_variables", "status"),
    [({"x": 2}, "duplicate"), ({"x": 1}, "conflict")],
    ids=["same-payload", "different-payload"],
)
async def test_late_completion_of_older_attempt_is_not_applied(
    settings: Settings,
    db: asyncpg.Pool,
    topics: set[str],
    late_variables: dict[str, Any],
    status: str,
) -> None:
    topics.update({FIRST, SECOND})
    async with (
        running_engine(settings),
        Client(settings) as client,
        RawWorker(settings) as worker,
    ):
        instance_id = await start_two_step(client, "late", {"order": 7})
        old = await worker.take(FIRST)
        assert old.attempt == 1

        # Attempt 1 gives the task back: the engine dispatches attempt 2 at once.
        await worker.report(Released(task_id=old.task_id, attempt=1, worker_id="old"))
        current = await worker.take(FIRST)
        assert (current.task_id, current.attempt) == (old.task_id, 2)
        assert current.idempotency_key == old.idempotency_key

        await worker.report(
            Completed(task_id=old.task_id, attempt=2, worker_id="new", variables={"x": 2})
        )
        second = await worker.take(SECOND)  # attempt 2 was applied
        assert second.variables == {"order": 7, "x": 2}

        await worker.report(
            Completed(task_id=old.task_id, attempt=1, worker_id="old", variables=late_variables)
        )
        notices = await worker.wait_for_notices(1, "the answer to the late completion")
        assert notices == [
            ReportAnswer(
                task_id=old.task_id,
                attempt=1,
                status=status,
                recorded_kind="completed",
                recorded_attempt=2,
            )
        ]

        ledger = await outcome_ledger(db, old.task_id)
        assert (ledger["kind"], ledger["attempt"], ledger["worker_id"]) == ("completed", 2, "new")
        expected = (1, 0) if status == "duplicate" else (0, 1)
        assert (ledger["duplicates"], ledger["conflicts"]) == expected
        assert (
            await counter(db, "reports_duplicate"),
            await counter(db, "reports_conflicting"),
        ) == expected

        tasks = await tasks_of(db, instance_id)
        assert [(t["node_id"], t["status"], t["attempt"], t["worker_id"]) for t in tasks] == [
            ("step1", "completed", 2, "new"),
            ("step2", "queued", 1, None),
        ]
        assert await history_count(db, old.task_id, "task_released") == 1
        assert await history_count(db, old.task_id, "task_completed") == 1
        assert (await instance_of(db, instance_id))["variables"] == {"order": 7, "x": 2}
        assert await worker.leftover(FIRST) is None, "step 1 was dispatched a third time"
        assert await worker.leftover(SECOND) is None, "step 2 was dispatched more than once"

        final = await finish_second_step(worker, db, instance_id, second)
        assert final["variables"] == {"order": 7, "x": 2, "shipped": True}
