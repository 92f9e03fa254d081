"""Task messages vanish from the broker (an operator purges a task queue, a policy drops
messages) while instances flow: PostgreSQL still knows every open task, and the engine
publishes again each one that no worker claimed within its dispatch deadline."""

from __future__ import annotations

import aio_pika
import pytest

from orchestrator.broker.topology import Topology
from tests.faults.workload import Workload
from tests.support.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

PURGES = 4
DISPATCH_TIMEOUT_MS = 1000


async def ready_messages(workload: Workload) -> dict[str, int]:
    """Ready messages of each step's queue, as the broker counts them."""
    topology = Topology(workload.settings.namespace)
    connection = await aio_pika.connect(workload.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        counts = {}
        for topic in workload.step_topics:
            queue = await channel.declare_queue(topology.task_queue(topic), passive=True)
            counts[topic] = queue.declaration_result.message_count or 0
        return counts


async def purge_fullest(workload: Workload, *, at_least: int = 2) -> int:
    """Wait until a step's queue holds `at_least` ready messages, then purge the fullest
    (what `rabbitmqctl purge_queue` does); how many messages it dropped."""
    fullest: list[str] = []

    async def backlog() -> bool:
        counts = await ready_messages(workload)
        topic = max(counts, key=lambda name: counts[name])
        fullest[:] = [topic] if counts[topic] >= at_least else []
        return bool(fullest)

    await wait_until(backlog, timeout=30, what=f"{at_least} ready messages in a step's queue")
    connection = await aio_pika.connect(workload.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(
            Topology(workload.settings.namespace).task_queue(fullest[0])
        )
        result = await queue.purge()
    return int(result.message_count or 0)


@pytest.mark.timeout(150)
async def test_task_queue_purged_under_load(workload: Workload) -> None:
    workload.configure("task queue purged under load", count=300)
    workload.engine(ORCH_DISPATCH_TIMEOUT_MS=str(DISPATCH_TIMEOUT_MS))
    await workload.deploy()
    # Fewer handler slots than instances arrive for: messages wait in the queues, so a purge
    # has something to drop.
    for _ in range(2):
        workload.worker(FAULT_CONCURRENCY="2")
    workload.start(rate=60)
    purged = 0
    for _ in range(PURGES):
        await workload.progressed(by=40)
        dropped = await purge_fullest(workload)
        purged += dropped
        workload.fault("queue purge")
        workload.fault("purged message", dropped)

    verdict = await workload.finish()
    # Every dropped message's task was published again (some more than once: a purge can
    # also drop a re-sent copy), and none of them ran twice or was lost (finish() checked).
    assert purged >= PURGES, purged
    assert verdict.counter("tasks_redispatched") >= purged, verdict
    assert verdict.counter("incidents_raised") == 0, verdict
