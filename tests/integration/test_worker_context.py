"""A worker run with `async with`: entering starts it, leaving shuts it down gracefully."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import asyncpg
import pytest

from orchestrator.broker.topology import Topology
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.logs import TaskFields
from tests.support.harness import instance_states, running_engine, sequential_process, wait_until
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration


async def consumers(settings: Settings, topic: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(settings.namespace).task_queue(topic), passive=True
        )
        return queue.declaration_result.consumer_count or 0
    finally:
        await connection.close()


async def test_leaving_the_block_lets_the_running_task_finish(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topic = "context-worker"
    topics.add(topic)
    worker = Worker("context", settings=settings, shutdown_grace_s=10)
    started = asyncio.Event()

    @worker.task(topic)
    async def slow(task: TaskContext) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(0.5)
        return {"done": True}

    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("context", [topic]))
        async with worker as entered:
            assert entered is worker
            assert await consumers(settings, topic) == 1
            await client.start("context")
            await asyncio.wait_for(started.wait(), 15)
        # Left while the handler slept: it finished and its outcome was sent before exit.
        assert await consumers(settings, topic) == 0

        async def completed() -> bool:
            return (await instance_states(db, "context")).get("completed") == 1

        await wait_until(completed, timeout=15, what="the instance to complete")
    attempts = await db.fetch("SELECT attempt FROM tasks")
    assert [row["attempt"] for row in attempts] == [1]


async def test_a_handlers_own_log_lines_carry_its_task_ids(
    settings: Settings, db: asyncpg.Pool, topics: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    topic = "logged-worker"
    topics.add(topic)
    caplog.set_level(logging.INFO, logger="tests.handler")
    caplog.handler.addFilter(TaskFields())  # as orchestrator.logs.configure adds it
    worker = Worker("logged", settings=settings)
    seen: list[TaskContext] = []

    @worker.task(topic)
    async def handler(task: TaskContext) -> dict[str, Any]:
        seen.append(task)
        logging.getLogger("tests.handler").info("charging")
        return {}

    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("logged", [topic]))
        async with worker:
            await client.start("logged", business_key="log-1")

            async def done() -> bool:
                return (await instance_states(db, "logged")).get("completed") == 1

            await wait_until(done, timeout=15, what="the logged instance to complete")
    (record,) = [r for r in caplog.records if r.name == "tests.handler"]
    (task,) = seen
    assert (record.task_id, record.instance_id, record.attempt) == (
        task.info.task_id,
        task.info.instance_id,
        1,
    )
    assert record.worker_id == worker.worker_id and record.topic == topic
    assert record.traceparent == task.traceparent is not None
