"""The dispatch deadline: a task whose broker message is lost does not wait forever.

A task's lease starts at its claim, so a message that never reaches a worker (a purged queue,
a queue policy that dropped it, a worker that acked it without claiming) left its task queued
for good. PostgreSQL knows every open task: one that no worker claimed within its dispatch
deadline is published again, as the same attempt, unless the topic's queue still holds
ready messages (then it is probably waiting behind them, and waits ten times longer) or
reports wait for the engine (its claim may be among them). After `max_redispatches` re-sends
it raises a `dispatch_lost` incident.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from orchestrator.broker.topology import Topology
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.model.wire import Claimed, Completed, TaskMessage
from tests.support.harness import (
    counter,
    instance_states,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from tests.support.raw_worker import RawWorker
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


def quick(settings: Settings, deadline_ms: int, max_redispatches: int = 5) -> Settings:
    return dataclasses.replace(
        settings, dispatch_timeout_ms=deadline_ms, max_redispatches=max_redispatches
    )


async def queue_counts(settings: Settings, topic: str) -> tuple[int, int]:
    """(ready messages, consumers) of a topic's queue, as the broker counts them."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(settings.namespace).task_queue(topic), passive=True
        )
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def purge(settings: Settings, topic: str) -> int:
    """What `rabbitmqctl purge_queue` does: drop every ready message of the topic's queue."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(settings.namespace).task_queue(topic))
        result = await queue.purge()
        return int(result.message_count or 0)


async def reports_ready(settings: Settings) -> int:
    """Report messages waiting in the reports queue for an engine to take them."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(settings.namespace).reports_queue, passive=True
        )
        return queue.declaration_result.message_count or 0


async def ready_in(settings: Settings, topic: str, count: int, db: asyncpg.Pool) -> None:
    """Wait until the outbox is published and `count` messages wait in the topic's queue."""

    async def there() -> bool:
        published = await db.fetchval("SELECT count(*) FROM outbox") == 0
        return published and (await queue_counts(settings, topic))[0] == count

    await wait_until(there, timeout=TIMEOUT, what=f"{count} ready messages on {topic}")


async def dispatched_before(db: asyncpg.Pool, *, ms: int) -> bool:
    """Every task's message went out at least `ms` ago (by PostgreSQL's clock)."""
    youngest = await db.fetchval(
        "SELECT extract(epoch FROM now() - max(dispatched_at)) * 1000 FROM tasks"
    )
    return youngest is not None and youngest >= ms


async def tasks_of(db: asyncpg.Pool, node_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT id, status, attempt, redispatches, dispatched_at FROM tasks WHERE node_id = $1",
        node_id,
    )
    return rows


def recording_worker(settings: Settings, runs: list[tuple[str, str, int]], **kw: Any) -> Worker:
    worker = Worker("dispatch", settings=settings, shutdown_grace_s=2.0)
    for topic in kw.pop("topics"):

        @worker.task(topic)
        async def handle(task: TaskContext) -> dict[str, Any]:
            runs.append((task.info.node_id, task.idempotency_key, task.attempt))
            return {task.info.node_id: "done"}

    return worker


async def test_purged_task_messages_are_sent_again_and_each_step_runs_once(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    steps = ["lost-1", "lost-2", "lost-3"]
    topics.update(steps)
    settings = quick(settings, deadline_ms=1000)
    runs: list[tuple[str, str, int]] = []
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("lost", steps))
        started = [(await client.start("lost")).instance_id for _ in range(3)]
        await ready_in(settings, steps[0], 3, db)
        assert await purge(settings, steps[0]) == 3
        # With no worker the tasks wait, however late: nobody could take a copy.
        await wait_until(
            lambda: dispatched_before(db, ms=3000), timeout=TIMEOUT, what="three deadlines"
        )
        assert await counter(db, "tasks_redispatched") == 0

        async with running_worker(recording_worker(settings, runs, topics=steps)):

            async def all_done() -> bool:
                return await instance_states(db, "lost") == {"completed": 3}

            await wait_until(all_done, timeout=TIMEOUT, what="every instance to complete")

        # Each step ran once, as one task, on its first attempt.
        assert len(runs) == 9, runs
        assert collections.Counter(key for _, key, _ in runs).most_common(1)[0][1] == 1, runs
        assert {attempt for _, _, attempt in runs} == {1}, runs
        assert await db.fetchval("SELECT count(*) FROM tasks") == 9
        assert await db.fetchval("SELECT count(*) FROM history WHERE kind = 'task_completed'") == 9
        # Counted, and visible per task and in its history.
        assert await counter(db, "tasks_redispatched") >= 3
        stats = await client.stats()
        assert stats["counters"]["tasks_redispatched"] >= 3
        for instance_id in started:
            seen = await client.get_instance(instance_id)
            first = next(t for t in seen["tasks"] if t["node_id"] == "step1")
            assert first["redispatches"] >= 1 and first["attempt"] == 1, first
            assert first["dispatched_at"] is not None
            resent = [h for h in seen["history"] if h["kind"] == "task_redispatched"]
            assert resent and resent[0]["detail"]["redispatch"] == 1, seen["history"]
            assert resent[0]["detail"]["waited_ms"] >= 1000, resent


async def test_a_message_acked_without_a_claim_is_sent_again(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """A worker in another language that acks the delivery and never claims the task."""
    topic = "acked-unclaimed"
    topics.add(topic)
    settings = quick(settings, deadline_ms=500)
    runs: list[tuple[str, str, int]] = []
    async with running_engine(settings), Client(settings) as client, RawWorker(settings) as raw:
        await client.deploy(sequential_process("unclaimed", [topic]))
        instance = (await client.start("unclaimed")).instance_id
        swallowed = await raw.take(topic)  # acked, never claimed: the message is gone
        assert swallowed.redispatch == 0
        async with running_worker(recording_worker(settings, runs, topics=[topic])):

            async def done() -> bool:
                return await instance_states(db, "unclaimed") == {"completed": 1}

            await wait_until(done, timeout=TIMEOUT, what="the instance to complete")
        assert runs == [("step1", swallowed.task_id, 1)]
        seen = await client.get_instance(instance)
        assert seen["tasks"][0]["redispatches"] >= 1
        assert await counter(db, "tasks_redispatched") >= 1


async def test_never_claimed_after_its_resends_the_task_raises_an_incident(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topic = "always-lost"
    topics.add(topic)
    settings = quick(settings, deadline_ms=300, max_redispatches=2)
    swallowed: list[TaskMessage] = []

    async def swallow(message: AbstractIncomingMessage) -> None:
        swallowed.append(TaskMessage.model_validate_json(message.body))

    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("always_lost", [topic]))
        # A consumer that takes every message and never claims one (auto-ack).
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(Topology(settings.namespace).task_queue(topic))
            tag = await queue.consume(swallow, no_ack=True)
            instance = (await client.start("always_lost")).instance_id

            async def lost() -> bool:
                return bool(await client.incidents(instance_id=instance))

            await wait_until(lost, timeout=TIMEOUT, what="a dispatch_lost incident")
            await queue.cancel(tag)
        [incident] = await client.incidents(instance_id=instance)
        assert incident["kind"] == "dispatch_lost", incident
        assert "keep disappearing" in incident["message"]
        assert "dispatched 3 times (2 re-sends)" in incident["message"], incident
        [task] = await tasks_of(db, "step1")
        assert (task["status"], task["attempt"], task["redispatches"]) == ("incident", 1, 2)
        # The original and its two re-sends: the same attempt each time, nothing more after.
        assert [(m.task_id, m.attempt, m.redispatch) for m in swallowed] == [
            (str(task["id"]), 1, 0),
            (str(task["id"]), 1, 1),
            (str(task["id"]), 1, 2),
        ]
        assert await counter(db, "tasks_redispatched") == 2

        # An operator's retry dispatches it again as a new attempt, with a fresh count.
        runs: list[tuple[str, str, int]] = []
        async with running_worker(recording_worker(settings, runs, topics=[topic])):
            await client.retry(incident_id=incident["id"])

            async def done() -> bool:
                return await instance_states(db, "always_lost") == {"completed": 1}

            await wait_until(done, timeout=TIMEOUT, what="the retried instance to complete")
        assert runs == [("step1", str(task["id"]), 2)]
        [task] = await tasks_of(db, "step1")
        assert (task["status"], task["attempt"], task["redispatches"]) == ("completed", 2, 0)


async def test_tasks_waiting_behind_a_backlog_are_not_sent_again(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """Ready messages in the queue: the tasks are waiting their turn, not lost. They are sent
    again only once they waited ten times their deadline, and time in which nobody read the
    queue does not count (the workers were away: everything waited for them, in line)."""
    topic = "backlogged"
    topics.add(topic)
    deadline_ms = 300
    settings = quick(settings, deadline_ms=deadline_ms)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("backlogged", [topic]))
        for _ in range(5):
            await client.start("backlogged")
        await ready_in(settings, topic, 5, db)
        # No worker for twelve deadlines.
        await wait_until(
            lambda: dispatched_before(db, ms=12 * deadline_ms),
            timeout=TIMEOUT,
            what="twelve deadlines",
        )
        assert await counter(db, "tasks_redispatched") == 0
        # Then a busy worker: it holds one task (unacked, unclaimed) and takes no other.
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            held: list[AbstractIncomingMessage] = []
            queue = await channel.get_queue(Topology(settings.namespace).task_queue(topic))
            reading_since = time.monotonic()
            await queue.consume(held.append, no_ack=False)

            async def busy() -> bool:
                return len(held) == 1 and await queue_counts(settings, topic) == (4, 1)

            await wait_until(busy, timeout=TIMEOUT, what="one task held, four waiting")

            # Six deadlines of being read (and still short of ten): nothing was sent again.
            async def six_deadlines() -> bool:
                return time.monotonic() - reading_since >= 6 * deadline_ms / 1000

            await wait_until(six_deadlines, timeout=TIMEOUT, what="six deadlines")
            assert await counter(db, "tasks_redispatched") == 0
            assert all(t["redispatches"] == 0 for t in await tasks_of(db, "step1"))
            assert (await queue_counts(settings, topic))[0] == 4

            # Ten deadlines past, a message lost behind a permanent backlog is recovered.
            async def resent() -> bool:
                return await counter(db, "tasks_redispatched") >= 5

            await wait_until(resent, timeout=TIMEOUT, what="the re-sends after ten deadlines")
            rows = await db.fetch(
                "SELECT detail FROM history WHERE kind = 'task_redispatched' ORDER BY id"
            )
            assert time.monotonic() - reading_since >= 10 * deadline_ms / 1000
            assert all(row["detail"]["waited_ms"] >= 16 * deadline_ms for row in rows), rows
            assert all(row["detail"]["queue_ready"] > 0 for row in rows), rows


async def test_two_copies_of_an_attempt_take_effect_once(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """The first message of an attempt and a re-send of it both reach a worker (the first
    was late, not lost): whichever is claimed second is refused, and its handler stops or
    never starts. Two copies at one worker: the second is settled and not run."""
    topic = "two-copies"
    topics.add(topic)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("copies", [topic]))
        await client.start("copies")
        await client.start("copies")
        await ready_in(settings, topic, 2, db)
        topology = Topology(settings.namespace)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.get_queue(topology.task_queue(topic))
            exchange = await channel.get_exchange(topology.tasks_exchange)
            bodies = []
            for _ in range(2):
                message = await queue.get(no_ack=True)
                assert message is not None
                bodies.append(TaskMessage.model_validate_json(message.body))

            async def publish(task: TaskMessage, **changes: Any) -> None:
                body = task.model_copy(update=changes).model_dump_json().encode()
                await exchange.publish(
                    aio_pika.Message(body, message_id=f"{task.task_id}:{task.attempt}"), topic
                )

            # Task A: its first message and a re-send, one to each of two workers.
            # Task B: the same message twice, both to one worker.
            first, second = bodies
            await publish(first)
            await publish(first, redispatch=1)

            started: list[tuple[str, str]] = []
            finished: list[tuple[str, str]] = []

            def slow_worker(name: str, concurrency: int) -> Worker:
                worker = Worker(name, settings=settings, shutdown_grace_s=1.0)

                @worker.task(topic, concurrency=concurrency)
                async def handle(task: TaskContext) -> dict[str, Any]:
                    started.append((name, task.idempotency_key))
                    await asyncio.sleep(2.0)  # long past its claim and any refusal
                    finished.append((name, task.idempotency_key))
                    return {"by": name}

                return worker

            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(running_worker(slow_worker("a", 1)))
                await stack.enter_async_context(running_worker(slow_worker("b", 1)))

                async def first_done() -> bool:
                    row = await db.fetchrow("SELECT status FROM tasks WHERE id = $1", first.task_id)
                    return row is not None and row["status"] == "completed"

                await wait_until(first_done, timeout=TIMEOUT, what="task A to complete")
            # Both copies were taken and settled: the queue holds nothing of task A.
            assert await queue_counts(settings, topic) == (0, 0)

            for _ in range(2):
                await publish(second)
            async with running_worker(slow_worker("c", 2)):

                async def all_done() -> bool:
                    return await instance_states(db, "copies") == {"completed": 2}

                await wait_until(all_done, timeout=TIMEOUT, what="both instances")

    # Task A: one handler ran to its end; the other copy's never started or was stopped.
    assert [key for _, key in finished].count(first.task_id) == 1, (started, finished)
    # Task B: worker c received it twice and ran it once.
    assert [entry for entry in started if entry[1] == second.task_id] == [("c", second.task_id)], (
        started
    )
    # One completion each, nothing recorded twice: the loser never reported.
    ledger = await db.fetch("SELECT task_id, duplicates, conflicts FROM report_ledger")
    assert len(ledger) == 2 and all(r["duplicates"] + r["conflicts"] == 0 for r in ledger)
    assert await db.fetchval("SELECT count(*) FROM history WHERE kind = 'task_completed'") == 2
    assert await counter(db, "claims_refused") >= 1


async def test_tasks_of_a_deleted_queue_are_sent_again_once_workers_read_it(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """A task queue deleted with its messages: the engine's look at the queue finds it
    missing and declares it again, and the tasks reach the workers that come for them."""
    topic = "deleted-queue"
    topics.add(topic)
    settings = quick(settings, deadline_ms=500)
    runs: list[tuple[str, str, int]] = []
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("deleted", [topic]))
        for _ in range(2):
            await client.start("deleted")
        await ready_in(settings, topic, 2, db)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(Topology(settings.namespace).task_queue(topic))

        async def declared_again() -> bool:
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                return await queue_counts(settings, topic) == (0, 0)
            return False

        await wait_until(declared_again, timeout=TIMEOUT, what="the queue declared again")
        async with running_worker(recording_worker(settings, runs, topics=[topic])):

            async def done() -> bool:
                return await instance_states(db, "deleted") == {"completed": 2}

            await wait_until(done, timeout=TIMEOUT, what="both instances to complete")
        assert sorted(attempt for _, _, attempt in runs) == [1, 1], runs
        assert await counter(db, "tasks_redispatched") >= 2


async def test_nothing_is_sent_again_while_reports_wait_for_the_engine(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """A task finished within its claim delay is claimed by its completion: until the engine
    reads that report the task is queued in PostgreSQL, though a worker took its message long
    ago and the topic's queue is empty. Reports waiting for the engine are its lag, not lost
    messages: while any wait nothing is sent again, and a task's clock counts only from when
    the engine caught up. A message really lost meanwhile is sent again after that."""
    topic = "reports-behind"
    topics.add(topic)
    deadline_ms = 1000
    # The engine takes two report messages at a time: two that wait for an instance another
    # session has locked fill its window, and the reports after them wait in the queue.
    settings = dataclasses.replace(quick(settings, deadline_ms), report_messages_per_batch=1)
    async with running_engine(settings), Client(settings) as client, RawWorker(settings) as raw:
        await client.deploy(sequential_process("behind", [topic]))
        ids = [(await client.start("behind")).instance_id for _ in range(3)]
        taken: dict[str, TaskMessage] = {}
        for _ in ids:
            message = await raw.take(topic)
            taken[message.instance_id] = message
        blocked, done, lost = (taken[instance] for instance in ids)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection, db.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "SELECT 1 FROM process_instances WHERE id = $1 FOR UPDATE", blocked.instance_id
            )
            for _ in range(3):
                await raw.report(Claimed(**ids_of(blocked)), reply=False)
            # The second task's handler ended at once: its completion is its claim.
            await raw.report(Completed(**ids_of(done), variables={}), reply=False)
            # The third task's message was taken and acked, never claimed: it is lost.

            async def behind() -> bool:
                return await reports_ready(settings) == 2

            await wait_until(behind, timeout=TIMEOUT, what="two reports waiting in the queue")
            # A worker reads the topic's queue, which is empty.
            channel = await connection.channel()
            queue = await channel.get_queue(Topology(settings.namespace).task_queue(topic))
            copies: list[TaskMessage] = []

            async def copy(message: AbstractIncomingMessage) -> None:
                copies.append(TaskMessage.model_validate_json(message.body))

            await queue.consume(copy, no_ack=True)
            assert await queue_counts(settings, topic) == (0, 1)
            # Four deadlines with the reports waiting: nothing is sent again.
            await wait_until(
                lambda: dispatched_before(db, ms=4 * deadline_ms),
                timeout=TIMEOUT,
                what="four deadlines",
            )
            assert await reports_ready(settings) == 2
            assert await counter(db, "tasks_redispatched") == 0
            assert copies == []
            await transaction.rollback()
            caught_up = time.monotonic()

            async def read() -> bool:
                rows = await db.fetch(
                    "SELECT instance_id::text, status FROM tasks ORDER BY instance_id"
                )
                states = {row["instance_id"]: row["status"] for row in rows}
                return (states[blocked.instance_id], states[done.instance_id]) == (
                    "claimed",
                    "completed",
                )

            await wait_until(read, timeout=TIMEOUT, what="the engine to read its reports")

            # The lost message is sent again, once, a deadline after the engine caught up.
            async def resent() -> bool:
                return bool(copies)

            await wait_until(resent, timeout=TIMEOUT, what="the lost task's message again")
            assert time.monotonic() - caught_up >= deadline_ms / 1000
            assert [(c.task_id, c.attempt, c.redispatch) for c in copies] == [
                (lost.task_id, lost.attempt, 1)
            ]
            assert await counter(db, "tasks_redispatched") == 1


def ids_of(message: TaskMessage) -> dict[str, Any]:
    return {"task_id": message.task_id, "attempt": message.attempt, "worker_id": "raw"}
