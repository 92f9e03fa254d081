"""Duplicated, reordered and malformed messages on the wire between the engine and its
workers (see wire.py): each task's effect happens once, and the engine accounts for exactly
what was injected."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from orchestrator.broker.topology import Topology, delete_namespace
from orchestrator.client import Client
from orchestrator.config import Settings
from tests.faults.wire import WireRelay
from tests.faults.workload import STEPS, Workload, exited
from tests.integration.test_leases import EXECUTIONS_DDL
from tests.integration.test_malformed import collect_dead, nothing_more_dead, reason_of
from tests.support.harness import (
    Processes,
    counter,
    new_namespace,
    publish_raw,
    sequential_process,
    take_task,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def worker_namespace(settings: Settings, topics: set[str]) -> AsyncIterator[str]:
    """A namespace of its own for the workers: only the relay connects it to the engine's."""
    namespace = new_namespace()
    yield namespace
    await delete_namespace(settings.amqp_url, namespace, topics)


async def dead_letters(
    amqp_url: str, topology: Topology, count: int
) -> dict[str, AbstractIncomingMessage]:
    """The `count` messages of a namespace's dead-letter queue, by message id; no more."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await collect_dead(channel, topology, count)
        await nothing_more_dead(channel, topology)
    return dead


@pytest.mark.timeout(150)
async def test_duplicated_reordered_and_malformed_messages(
    workload: Workload, worker_namespace: str
) -> None:
    workload.configure("wire: duplicated, reordered, malformed", count=250)
    settings = workload.settings
    workload.engine()
    await workload.deploy()
    relay = await WireRelay(
        settings.amqp_url, settings.namespace, worker_namespace, workload.step_topics
    ).start()
    try:
        for _ in range(2):
            workload.worker(ORCH_NAMESPACE=worker_namespace)
        workload.start(rate=50)
        counts = relay.counts

        def injected() -> dict[str, int]:
            return {
                "duplicated task": counts.tasks_duplicated,
                "duplicated report": counts.duplicated_completions,
                "altered report": counts.altered_completions,
                "malformed task": counts.malformed_tasks,
                "malformed report": counts.malformed_reports,
                "reversed window": counts.reordered_windows,
            }

        verdict = await workload.finish(more_faults=injected, settle=relay.wait_idle)
        engine_dead = await dead_letters(
            settings.amqp_url, Topology(settings.namespace), counts.malformed_reports
        )
        worker_dead = await dead_letters(
            settings.amqp_url, Topology(worker_namespace), counts.malformed_tasks
        )
    finally:
        await relay.close()

    assert all(n >= 1 for n in injected().values()), counts
    details = f"{counts}\n{verdict}"
    # The engine accounts for exactly what was injected: every bad report dead-lettered
    # (with a reason) and counted, every altered completion a conflict, and every
    # completion beyond a task's first (the workers' repeats and the relay's copies) a
    # duplicate.
    assert set(engine_dead) == relay.malformed_report_ids
    assert all(reason_of(message) for message in engine_dead.values())
    dead_lettered = await counter(workload.db, "reports_dead_lettered")
    assert dead_lettered == counts.malformed_reports, details
    assert verdict.ledger_conflicts == counts.altered_completions, details
    tasks = workload.count * STEPS
    assert verdict.ledger_duplicates == (
        counts.duplicated_completions + counts.worker_completions - tasks
    ), details
    assert verdict.counter("reports_completed") == (
        counts.worker_completions + counts.duplicated_completions + counts.altered_completions
    ), details
    # Workers turned every malformed task message away (to their dead-letter queue).
    assert set(worker_dead) == relay.malformed_task_ids


@pytest.mark.timeout(60)
async def test_duplicate_task_message_to_a_busy_worker_costs_no_capacity(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    topic = "dup-delivery"
    topics.add(topic)
    topology = Topology(settings.namespace)
    await db.execute(EXECUTIONS_DDL)
    processes.engine()
    async with Client(settings) as client:
        await client.deploy(sequential_process("dup_delivery", [topic], lock="30s"))
        await client.start("dup_delivery")
        # The engine may publish a task twice (it died between publishing and deleting its
        # outbox row): take the message off the queue and put it back twice.
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            task = await take_task(await connection.channel(), topology, topic)
        body = task.model_dump_json().encode()
        for _ in range(2):
            await publish_raw(
                settings,
                topology.tasks_exchange,
                topic,
                body,
                message_id=f"{task.task_id}:{task.attempt}",
            )
        env = {"LEASE_TOPIC": topic, "LEASE_DB_URL": settings.database_url}
        worker = processes.worker(
            "tests.support.lease_workers:worker", **env, LEASE_DELAY_S="1", LEASE_CONCURRENCY="2"
        )

        async def completed(n: int) -> bool:
            value = await db.fetchval(
                "SELECT count(*) FROM process_instances WHERE status = 'completed'"
            )
            return bool(value == n)

        await wait_until(lambda: completed(1), timeout=20, what="the first instance")
        # Two more tasks for a worker with two slots: they should run side by side.
        await asyncio.gather(client.start("dup_delivery"), client.start("dup_delivery"))
        await wait_until(lambda: completed(3), timeout=20, what="the next two instances")
    starts = await db.fetch(
        "SELECT started_at FROM lease_executions WHERE attempt = 1 ORDER BY started_at"
    )
    worker.send_signal(signal.SIGTERM)
    await exited(worker)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.task_queue(topic), passive=True)
        left = queue.declaration_result.message_count
    later = starts[-2:]
    assert (later[1]["started_at"] - later[0]["started_at"]).total_seconds() < 0.5, starts
    assert left == 0, f"{left} task message(s) the worker never settled went back to the queue"
