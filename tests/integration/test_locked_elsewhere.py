"""Rows another session holds (a stalled engine, here a test's open transaction) hold up only
the work that needs them: a round takes what it can lock, goes on with the rest, and tries
the held reports and starts again, unacked, until the lock is gone. Nothing is lost or
applied twice, and operator commands answer meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError
from tests.support.harness import (
    counter,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

#: How long the test's session holds its lock: long beside a round, short for a test.
HOLD_S = 4.0


async def status_of(db: asyncpg.Pool, instance_id: str) -> str:
    return str(await db.fetchval("SELECT status FROM process_instances WHERE id = $1", instance_id))


def counting_worker(settings: Settings, topic: str, runs: list[str]) -> Worker:
    worker = Worker(f"{topic}-worker", settings=settings)

    @worker.task(topic)
    async def work(task: TaskContext) -> dict[str, Any]:
        runs.append(task.info.instance_id)
        return {"done": True}

    return worker


@pytest.mark.timeout(60)
async def test_reports_of_a_locked_instance_wait_while_the_others_complete(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("locked-work")
    runs: list[str] = []
    worker = counting_worker(settings, "locked-work", runs)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("locked", ["locked-work"] * 2))
        blocked = (await client.start("locked", idempotency_key="blocked")).instance_id
        others = [(await client.start("locked")).instance_id for _ in range(10)]
        async with db.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT 1 FROM process_instances WHERE id = $1 FOR UPDATE", blocked
            )
            began = time.monotonic()
            async with running_worker(worker):

                async def others_done() -> bool:
                    states = [await status_of(db, i) for i in others]
                    return states == ["completed"] * len(others)

                await wait_until(others_done, timeout=HOLD_S, what="the unlocked instances")
                # A command answers while the lock is held; the blocked instance stays put.
                assert (await client.stats())["instances"]["completed"] == len(others)
                assert await status_of(db, blocked) == "active"
                assert await counter(db, "reports_deferred") > 0
                await asyncio.sleep(max(0.0, HOLD_S - (time.monotonic() - began)))
                assert await status_of(db, blocked) == "active"
                await transaction.rollback()

                async def blocked_done() -> bool:
                    return await status_of(db, blocked) == "completed"

                await wait_until(blocked_done, timeout=10, what="the instance once unlocked")

    # Each step of each instance ran once and was applied once: nothing was redelivered.
    assert sorted(runs) == sorted([blocked, *others] * 2)
    assert await counter(db, "reports_dead_lettered") == 0
    assert await counter(db, "reports_duplicate") == 0
    assert await db.fetchval("SELECT count(*) FROM incidents") == 0


@pytest.mark.timeout(60)
async def test_a_start_whose_key_is_locked_waits_while_other_starts_go_through(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("keyed", ["keyed-work"]))
        topics.add("keyed-work")
        async with db.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            # Another session is inserting the same key right now and has not committed.
            await holder.execute(
                "INSERT INTO start_ledger (idempotency_key, payload_hash, instance_id, created)"
                " VALUES ('contended', '\\x00', gen_random_uuid(), true)"
            )
            waiting = asyncio.create_task(
                client.start("keyed", idempotency_key="contended", timeout=30)
            )
            others = [await client.start("keyed", timeout=5) for _ in range(5)]
            assert all(started.created for started in others)
            assert not waiting.done()
            await transaction.rollback()  # the other session gave up: the key is free
        started = await asyncio.wait_for(waiting, 15)
    assert started.created
    assert await status_of(db, started.instance_id) == "active"
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 6


@pytest.mark.timeout(60)
async def test_an_operator_action_on_a_locked_instance_answers_instead_of_waiting(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("cancel-work")
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("cancelled", ["cancel-work"]))
        instance = (await client.start("cancelled")).instance_id
        async with db.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM process_instances WHERE id = $1 FOR UPDATE", instance
            )
            began = time.monotonic()
            with pytest.raises(OrchestratorError, match="locked by another engine"):
                await client.cancel(instance)
            assert time.monotonic() - began < 8
        # Once the lock is gone the same action goes through.
        await client.cancel(instance)
    assert await status_of(db, instance) == "cancelled"
