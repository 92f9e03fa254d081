"""The two processes of the bare pipeline (see bare_pipeline.py): a coordinator that commits
each step and publishes the next task, and a worker that answers each task with a report.

    python -m bench.peers.bare_roles coordinator|worker

Both read their settings from the environment the runner gives them (BARE_* below). They use
the engine's own AMQP layer (confirmed publisher, micro-batch consumer) and the engine's
durability: durable queues, persistent messages, confirms both ways, a commit per step with
synchronous_commit on, acks only after the commit or the confirm. What they leave out is the
engine itself: no ledger, no leases, no process graph, no outbox table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bench.queries import query
from orchestrator import aio
from orchestrator.broker.batches import BatchConsumer, ack_all
from orchestrator.broker.connection import connect
from orchestrator.broker.publisher import Outgoing, Publisher

#: Header with the Unix ms at which the coordinator published a task (after its commit).
PUBLISHED_AT = "x-bare-published-at-ms"
MAX_BATCH = 200
Handler = Callable[[list[AbstractIncomingMessage]], Awaitable[None]]


@dataclass(frozen=True)
class Names:
    """Every queue and the table of one run, from its prefix."""

    prefix: str
    steps: int

    @property
    def starts(self) -> str:
        return f"{self.prefix}-starts"

    @property
    def reports(self) -> str:
        return f"{self.prefix}-reports"

    def step(self, number: int) -> str:
        return f"{self.prefix}-step-{number}"

    @property
    def queues(self) -> list[str]:
        return [self.starts, self.reports, *(self.step(n + 1) for n in range(self.steps))]

    @property
    def table(self) -> str:
        """The run's table: its name comes from the generated prefix, never from input."""
        return self.prefix.replace("-", "_")

    def sql(self, name: str) -> str:
        """The run's statement `bare_<name>` of bench/queries.sql, on the run's table."""
        return query(f"bare_{name}", table=self.table)


def names_from_env() -> Names:
    return Names(os.environ["BARE_PREFIX"], int(os.environ["BARE_STEPS"]))


async def _batches(connection: AbstractRobustConnection, queue_name: str) -> BatchConsumer:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=MAX_BATCH * 2)
    queue = await channel.declare_queue(queue_name, durable=True)
    consumer = BatchConsumer(queue, max_batch=MAX_BATCH)
    await consumer.start()
    return consumer


def task_message(names: Names, instance: str, step: int, published_ms: float) -> Outgoing:
    """A step's task: persistent, mandatory, confirmed (Outgoing's defaults)."""
    body = orjson.dumps({"instance": instance, "step": step})
    return Outgoing("", names.step(step), body, headers={PUBLISHED_AT: f"{published_ms:.3f}"})


class Coordinator:
    """Starts: insert one row each, commit, publish step 1, reply. Reports: move each row to
    the next step (or end it), commit, publish the next task. One statement per batch."""

    def __init__(self, names: Names, pool: asyncpg.Pool, publisher: Publisher) -> None:
        self.names = names
        self.pool = pool
        self.publisher = publisher

    async def starts(self, batch: list[AbstractIncomingMessage]) -> None:
        ids = [uuid.uuid4() for _ in batch]
        await self.pool.execute(self.names.sql("insert_starts"), ids)
        published = now_ms()
        outgoing = [self._task(str(instance), 1, published) for instance in ids]
        outgoing += [
            Outgoing(
                "",
                message.reply_to or "",
                str(instance).encode(),
                correlation_id=message.correlation_id,
                persistent=False,
                mandatory=False,
            )
            for message, instance in zip(batch, ids, strict=True)
        ]
        await self._publish(outgoing)
        await ack_all(batch)

    async def reports(self, batch: list[AbstractIncomingMessage]) -> None:
        reports = [orjson.loads(message.body) for message in batch]
        ids = [uuid.UUID(report["instance"]) for report in reports]
        done = [int(report["step"]) for report in reports]
        last = self.names.steps
        await self.pool.execute(self.names.sql("advance"), ids, done, last)
        published = now_ms()
        await self._publish(
            [
                self._task(report["instance"], step + 1, published)
                for report, step in zip(reports, done, strict=True)
                if step < last
            ]
        )
        await ack_all(batch)

    def _task(self, instance: str, step: int, published_ms: float) -> Outgoing:
        return task_message(self.names, instance, step, published_ms)

    async def _publish(self, outgoing: list[Outgoing]) -> None:
        errors = [e for e in await self.publisher.publish_many(outgoing) if e is not None]
        if errors:  # a reference run has no recovery path: fail loudly
            raise RuntimeError(f"{len(errors)} messages not confirmed: {errors[0]!r}")


async def run_coordinator(names: Names, database_url: str, amqp_url: str) -> None:
    pool = await asyncpg.create_pool(
        database_url, min_size=2, max_size=2, server_settings={"synchronous_commit": "on"}
    )
    connection = await connect(amqp_url, name=f"{names.prefix}-coordinator")
    coordinator = Coordinator(names, pool, await Publisher.open(connection))
    loops = [
        (await _batches(connection, names.starts), coordinator.starts),
        (await _batches(connection, names.reports), coordinator.reports),
    ]
    stop = _stop_event()

    async def loop(consumer: BatchConsumer, handle: Handler) -> None:
        while True:
            await handle(await consumer.next_batch())

    tasks = [asyncio.create_task(loop(consumer, handle)) for consumer, handle in loops]
    await _until_stopped(stop, tasks)
    await connection.close()
    await pool.close()


class Worker:
    """Each task: publish its report (confirmed), then ack the task. Notes dispatch times."""

    def __init__(self, names: Names, publisher: Publisher) -> None:
        self.names = names
        self.publisher = publisher
        self.entries: list[tuple[float, float]] = []

    async def on_task(self, message: AbstractIncomingMessage) -> None:
        entered = now_ms()
        published = (message.headers or {}).get(PUBLISHED_AT)
        if isinstance(published, str | bytes):
            self.entries.append((float(published), entered))
        await self.publisher.publish(Outgoing("", self.names.reports, message.body))
        await message.ack()


async def run_worker(names: Names, amqp_url: str) -> list[tuple[float, float]]:
    """Until SIGTERM; then the dispatch times it noted (published ms, entered ms)."""
    connection = await connect(amqp_url, name=f"{names.prefix}-worker-{os.getpid()}")
    worker = Worker(names, await Publisher.open(connection))
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=64)
    for step in range(1, names.steps + 1):
        queue = await channel.declare_queue(names.step(step), durable=True)
        await queue.consume(worker.on_task)
    await _stop_event().wait()
    await connection.close()
    return worker.entries


def now_ms() -> float:
    """Unix time in ms, the unit of the dispatch-latency files."""
    return time.time() * 1000


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Until SIGTERM, or until a loop dies (then its error ends the process)."""
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopper, *tasks]:
        task.cancel()
    for task in done:
        if task is not stopper:
            task.result()


def main(argv: list[str]) -> int:
    names = names_from_env()
    amqp_url = os.environ["BARE_AMQP_URL"]
    if argv == ["coordinator"]:
        aio.run(run_coordinator(names, os.environ["BARE_DATABASE_URL"], amqp_url))
    elif argv == ["worker"]:
        entries = aio.run(run_worker(names, amqp_url))
        with open(os.environ["BARE_LATENCY_FILE"], "w", encoding="ascii") as sink:
            sink.writelines(f"{sent:.3f} {entered:.3f}\n" for sent, entered in entries)
    else:
        sys.stderr.write(f"usage: python -m {__spec__.name} coordinator|worker\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
