"""Starts and completions that arrive in the same round are written in one statement. A round
that cannot be (a start repeating an earlier key, for one) goes each batch's own way, and
nothing is lost or applied twice either way."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import (
    counter,
    instance_states,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

INSTANCES = 120
STEPS = 3


@pytest.mark.timeout(120)
async def test_starts_and_completions_share_rounds_and_lose_nothing(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("rounds-work")
    entered: list[tuple[str, int]] = []
    worker = Worker("rounds", settings=settings)

    @worker.task("rounds-work")
    async def work(task: TaskContext) -> dict[str, Any]:
        entered.append((task.info.task_id, task.attempt))
        return {f"{task.info.node_id}_done": True}

    async with running_engine(settings), running_worker(worker), Client(settings) as client:
        await client.deploy(sequential_process("rounds", ["rounds-work"] * STEPS))
        first: dict[str, str] = {}
        repeats: list[tuple[str, str, bool]] = []
        # Starts one at a time while earlier instances' completions stream in, so that rounds
        # hold both. Every fourth start repeats an earlier key, which the one-statement way
        # cannot write (the key exists): that round must fall back and still answer right.
        for index in range(INSTANCES + INSTANCES // 3):
            repeat = index % 4 == 3
            key = f"key-{index - 2}" if repeat else f"key-{index}"
            started = await client.start(
                "rounds", idempotency_key=key, variables={"key": key}, timeout=20
            )
            if repeat:
                repeats.append((first[key], started.instance_id, started.created))
            else:
                first[key] = started.instance_id
            await asyncio.sleep(0.002)

        async def all_done() -> bool:
            return (await instance_states(db, "rounds")).get("completed") == len(first)

        await wait_until(all_done, timeout=60, what="every instance to complete")

    assert len(first) == INSTANCES
    assert repeats and all(
        original == again and not created for original, again, created in repeats
    )
    assert len(entered) == INSTANCES * STEPS == len(set(entered))
    assert all(attempt == 1 for _, attempt in entered)
    assert await counter(db, "rounds_in_one_statement") > 0
    assert await counter(db, "reports_duplicate") == 0
    finished = await db.fetch(
        "SELECT variables FROM process_instances WHERE process_key = 'rounds'"
    )
    assert len(finished) == INSTANCES


@pytest.mark.timeout(60)
async def test_an_operator_command_that_waits_does_not_hold_up_starts(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("aside-work")
    worker = Worker("aside", settings=settings)

    @worker.task("aside-work")
    async def work(task: TaskContext) -> dict[str, Any]:
        return {}

    async with running_engine(settings), running_worker(worker), Client(settings) as client:
        await client.deploy(sequential_process("aside", ["aside-work"]))
        async with db.acquire() as blocker, blocker.transaction():
            # The incidents query now waits for this lock, as a query over many rows would
            # take its time; the starts and completions behind it must not wait with it.
            await blocker.execute("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.create_task(client.incidents())
            await asyncio.sleep(0.2)
            started = [await client.start("aside", timeout=5) for _ in range(10)]

            async def all_done() -> bool:
                return (await instance_states(db, "aside")).get("completed") == len(started)

            await wait_until(all_done, timeout=5, what="the instances, while a query waits")
            assert not listing.done()
        assert await asyncio.wait_for(listing, 10) == []
