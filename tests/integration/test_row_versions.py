"""Every write names the versions of the rows it changes: a write decided from a stale copy
(the engine's recent copies, after another engine, the reaper or an operator changed a row)
writes nothing at all, and the engine decides again from locked rows."""

from __future__ import annotations

from dataclasses import replace

import asyncpg
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.definitions import DefinitionCache
from orchestrator.daemon.starts import StartBatch
from orchestrator.model.wire import StartCommand
from orchestrator.store.queries import Q
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import (
    OutboxMessage,
    TaskRow,
    UnitOfWork,
    state_from_record,
)
from tests.support.harness import running_engine, sequential_process

pytestmark = pytest.mark.integration


async def _start_one(settings: Settings, db: asyncpg.Pool) -> str:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("versions", ["versions-work"]))
    async with db.acquire() as conn, conn.transaction():
        context = EngineContext(DefinitionCache())
        command = StartCommand(process_key="versions", idempotency_key="v", variables={})
        (result,), _, _ = await StartBatch(Session(conn, "test", 1000), context).run([command])
    return str(result["instance_id"])


async def _written_rows(db: asyncpg.Pool) -> tuple[int, int]:
    history = await db.fetchval("SELECT count(*) FROM history")
    outbox = await db.fetchval("SELECT count(*) FROM outbox")
    return history, outbox


def _noisy_unit_of_work() -> UnitOfWork:
    """A unit of work that also writes rows with no version: none may survive a failure."""
    uow = UnitOfWork()
    uow.outbox.append(OutboxMessage("versions-work", "m-1", b"{}"))
    uow.count("test_writes")
    return uow


async def test_a_stale_instance_version_writes_nothing(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("versions-work")
    instance_id = await _start_one(settings, db)
    read = state_from_record(await db.fetchrow(Q.lock_instance, instance_id))
    assert read.version == 0

    first = _noisy_unit_of_work()
    first.changed_instances[read.id] = replace(read, variables={"by": "first"})
    async with db.acquire() as conn:
        await first.write(conn, 1000, "test")
    before = await _written_rows(db)

    stale = _noisy_unit_of_work()
    stale.changed_instances[read.id] = replace(read, variables={"by": "stale"})
    stale.record(read.id, "should_not_exist")
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.SerializationError, match="stale write: 0 of 1"):
            await stale.write(conn, 1000, "test")

    row = await db.fetchrow(Q.lock_instance, instance_id)
    assert (row["variables"], row["version"]) == ({"by": "first"}, 1)
    assert await _written_rows(db) == before
    counted = await db.fetchval("SELECT value FROM engine_counters WHERE name = 'test_writes'")
    assert counted == 1


async def test_a_stale_task_version_writes_nothing(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("versions-work")
    instance_id = await _start_one(settings, db)
    (record,) = await db.fetch(Q.open_tasks_of_instance, instance_id)
    task = TaskRow.from_record(record)

    claimed = _noisy_unit_of_work()
    claimed.changed_tasks[task.id] = replace(task, status="claimed", worker_id="w1", lease_ms=1)
    async with db.acquire() as conn:
        await claimed.write(conn, 1000, "test")
    before = await _written_rows(db)

    stale = _noisy_unit_of_work()
    stale.changed_tasks[task.id] = replace(task, status="completed", worker_id="w2")
    async with db.acquire() as conn, conn.transaction():
        with pytest.raises(asyncpg.SerializationError):
            await stale.write(conn, 1000, "test")

    after = await db.fetchrow("SELECT status, worker_id, version FROM tasks WHERE id = $1", task.id)
    assert tuple(after) == ("claimed", "w1", 1)
    assert await _written_rows(db) == before


async def test_a_known_start_checks_its_key_and_definition_as_it_writes(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """Starts decided from what this engine resolved before: a used key or a definition
    deployed since (by any engine) makes the one statement write nothing."""
    topics.update({"versions-work", "versions-work-2"})
    context = EngineContext(DefinitionCache())

    def command(key: str) -> StartCommand:
        return StartCommand(process_key="versions", idempotency_key=key, variables={})

    def batch(conn: asyncpg.Connection) -> StartBatch:
        return StartBatch(Session(conn, "test", 1000), context)

    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("versions", ["versions-work"]))
        async with db.acquire() as conn, conn.transaction():
            (first,), _, _ = await batch(conn).run([command("k1")])
        async with db.acquire() as conn:
            (known,), _, _ = await batch(conn).run_in_one_statement([command("k2")])
            with pytest.raises(asyncpg.SerializationError):
                await batch(conn).run_in_one_statement([command("k1")])
        await client.deploy(sequential_process("versions", ["versions-work-2"]))
        async with db.acquire() as conn:
            with pytest.raises(asyncpg.SerializationError):
                await batch(conn).run_in_one_statement([command("k3")])
        async with db.acquire() as conn, conn.transaction():
            (third,), _, _ = await batch(conn).run([command("k3")])

    assert (first["version"], known["version"], third["version"]) == (1, 1, 2)
    keys = await db.fetch("SELECT idempotency_key FROM start_ledger ORDER BY 1")
    assert [r["idempotency_key"] for r in keys] == ["k1", "k2", "k3"]
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 3
