"""/metrics of an engine and a worker (ORCH_METRICS_PORT), scraped over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import (
    instance_states,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    text = await asyncio.to_thread(get)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_engine_and_the_worker_serve_their_counts(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update({"metered-a", "metered-b"})
    engine_port, worker_port = _free_port(), _free_port()
    engine_settings = dataclasses.replace(settings, metrics_port=engine_port)
    worker = Worker("metered", settings=dataclasses.replace(settings, metrics_port=worker_port))

    @worker.task("metered-a", concurrency=8)
    async def step_a(task: TaskContext) -> dict[str, Any]:
        return {"a": True}

    @worker.task("metered-b", concurrency=8)
    async def step_b(task: TaskContext) -> dict[str, Any]:
        return {"b": True}

    instances = 10
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(engine_settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(sequential_process("metered", ["metered-a", "metered-b"]))
        await stack.enter_async_context(running_worker(worker))
        for number in range(instances):
            await client.start("metered", business_key=f"m-{number}")

        async def all_done() -> bool:
            return (await instance_states(db, "metered")).get("completed") == instances

        await wait_until(all_done, timeout=60, what="every metered instance to complete")
        finished_at = time.time()

        async def engine_counted() -> bool:
            samples = await _scrape(engine_port)
            done = ("orch_instances_total", (("process", "metered"), ("state", "completed")))
            # The gauges must come from a read after the last instance completed: one read
            # before it (say, between the deploy and the worker's subscription) shows an empty
            # outbox and queues without consumers that are long out of date.
            read_at = samples.get(("orch_metrics_db_read_timestamp_seconds", ()), 0)
            return samples.get(done, 0) >= instances and read_at > finished_at

        # The gauges are read from PostgreSQL every few seconds: wait for such a read.
        await wait_until(engine_counted, timeout=15, what="the engine's metrics", interval=0.2)
        engine = await _scrape(engine_port)
        worker_samples = await _scrape(worker_port)

    for topic in ("metered-a", "metered-b"):
        assert engine[("orch_tasks_created_total", (("topic", topic),))] >= instances
        assert engine[("orch_tasks_completed_total", (("topic", topic),))] >= instances
        completed = ("orch_worker_tasks_total", (("outcome", "completed"), ("topic", topic)))
        assert worker_samples[completed] >= instances
        assert worker_samples[("orch_worker_task_seconds_count", (("topic", topic),))] >= instances
        assert worker_samples[("orch_worker_tasks_in_flight", (("topic", topic),))] == 0
        assert engine[("orch_tasks_dispatched_total", (("topic", topic),))] >= instances
        assert engine[("orch_tasks_claimed_total", (("topic", topic),))] == instances
        assert engine[("orch_queue_consumers", (("topic", topic),))] == 1
        assert engine[("orch_queue_messages", (("topic", topic),))] == 0
    # Every first send was written by this engine, so every one is timed.
    assert engine[("orch_task_dispatch_seconds_count", ())] >= 2 * instances
    assert engine[("orch_reports_waiting", ())] == 0
    started = ("orch_instances_total", (("process", "metered"), ("state", "started")))
    assert engine[started] == instances
    assert engine[("orch_engine_events_total", (("event", "tasks_created"),))] >= 2 * instances
    assert engine[("orch_engine_events_total", (("event", "instances_completed"),))] == instances
    assert engine[("orch_round_reports_count", ())] >= 1
    assert engine[("orch_outbox_waiting", ())] == 0
    assert engine[("orch_outbox_oldest_seconds", ())] == 0
