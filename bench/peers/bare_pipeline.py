"""Reference run: the engine's hops and commits, with no engine in between.

    python -m bench.peers.bare_pipeline --amqp-url URL --database-url URL \
        --instances N --steps S --workers W [--rate R --rate-instances M]

An instance here makes exactly the messages and commits an engine instance makes: a confirmed
start command and its reply, then per step a confirmed task and a confirmed report, and a
commit (synchronous_commit on) for the start and for each step, all on durable queues with
persistent messages. A coordinator process (bare_roles.py) does the commits and publishes
the next task; W worker processes answer each task. Nothing else happens: no ledger, no
leases, no graph, no outbox. So under the same load this is what any engine of this design
pays at the least on this machine, and our latency minus this one is the engine's own share.

Phases as for the engine: warm-up, throughput (N starts as fast as the client sends, first
start to last completion), then latency (M starts open loop at R/s). Latency runs from the
start call to the commit that ends the instance; dispatch from the commit's publish to the
worker's callback. Progress goes to stderr; the last stdout line is one JSON object. The
run's queues and table are named after a per-run prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from bench import child_env
from bench.peers.bare_roles import Names, now_ms, task_message
from bench.procstats import CpuMeter, pids_named
from bench.stats import dispatch_samples, summary
from orchestrator import aio
from orchestrator.broker.connection import connect
from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.store.migrate import ensure_database
from orchestrator.subprocesses import spawn, stop

POLL_S = 0.02


@dataclass(frozen=True)
class Options:
    amqp_url: str
    database_url: str
    instances: int
    steps: int
    workers: int
    rate: float | None
    rate_instances: int
    warmup: int
    timeout_s: float
    #: The client commits each start and publishes its first task itself (no start command,
    #: no reply): what starting in the database instead of through the engine would save.
    start_in_database: bool = False


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.bare_pipeline",
        description="The engine's broker hops and commits with no engine: the design's floor.",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--payload-bytes", type=int, default=0, help="accepted; not used")
    parser.add_argument("--rate", type=float, default=None, help="instances/s of latency phase")
    parser.add_argument("--rate-instances", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument(
        "--start-in-database",
        action="store_true",
        help="the client commits each start and publishes its first task (5 hops, not 7)",
    )
    args = parser.parse_args(argv)
    for name in ("instances", "steps", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be > 0")
    rate_instances = args.rate_instances or max(1, int((args.rate or 0) * 5))
    return Options(
        amqp_url=args.amqp_url,
        database_url=args.database_url,
        instances=args.instances,
        steps=args.steps,
        workers=args.workers,
        rate=args.rate,
        rate_instances=rate_instances,
        warmup=args.warmup,
        timeout_s=args.timeout,
        start_in_database=args.start_in_database,
    )


def _status(line: str) -> None:
    sys.stderr.write(f"[bare] {line}\n")
    sys.stderr.flush()


class Processes:
    """The coordinator and the workers, each its own Python process like the engine's."""

    def __init__(self, names: Names, options: Options, logdir: Path) -> None:
        self.logdir = logdir
        self.env = child_env(
            BARE_PREFIX=names.prefix,
            BARE_STEPS=str(names.steps),
            BARE_AMQP_URL=options.amqp_url,
            BARE_DATABASE_URL=options.database_url,
        )
        self.coordinator = self._spawn("coordinator", "coordinator")
        self.workers = [self._spawn(f"worker-{i}", "worker") for i in range(options.workers)]
        self.labels = {self.coordinator.pid: "coordinator"}
        self.labels.update({proc.pid: f"worker-{i}" for i, proc in enumerate(self.workers)})

    def _spawn(self, label: str, role: str) -> subprocess.Popen[bytes]:
        return spawn(
            [sys.executable, "-m", "bench.peers.bare_roles", role],
            output=self.logdir / f"{label}.log",
            env={**self.env, "BARE_LATENCY_FILE": str(self.logdir / f"{label}.latency")},
        )

    @property
    def all(self) -> list[subprocess.Popen[bytes]]:
        return [self.coordinator, *self.workers]

    def check_alive(self) -> None:
        for proc in self.all:
            if proc.poll() is not None:
                label = self.labels[proc.pid]
                log = (self.logdir / f"{label}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"the bare pipeline's {label} exited ({proc.returncode}): {log}")

    def stop(self) -> None:
        stop(self.all, timeout_s=20)

    def dispatch_latencies(self, since_ms: float, until_ms: float) -> list[float]:
        return dispatch_samples(self.logdir.glob("worker-*.latency"), since_ms, until_ms)


class Starter:
    """Sends start commands (persistent, confirmed) and waits for each reply, as the engine's
    client does; or, with `in_database`, commits the start and publishes step 1 itself."""

    def __init__(
        self,
        names: Names,
        connection: AbstractRobustConnection,
        pool: asyncpg.Pool,
        *,
        in_database: bool,
    ) -> None:
        self.names = names
        self.connection = connection
        self.pool = pool
        self.in_database = in_database
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.reply_queue = ""
        self.publisher: Publisher | None = None

    async def open(self) -> None:
        channel = await self.connection.channel()
        replies = await channel.declare_queue(
            f"{self.names.prefix}-replies", exclusive=True, auto_delete=True
        )
        await replies.consume(self._on_reply, no_ack=True)
        self.reply_queue = replies.name
        self.publisher = await Publisher.open(self.connection)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body.decode())

    async def start(self, sent: dict[str, float]) -> str:
        at = time.time()
        if self.in_database:
            instance = await self._start_in_database()
        else:
            instance = await self._start_by_command()
        sent[instance] = at
        return instance

    async def _start_by_command(self) -> str:
        assert self.publisher is not None
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting[correlation_id] = future
        try:
            await self.publisher.publish(
                Outgoing(
                    "",
                    self.names.starts,
                    b"{}",
                    correlation_id=correlation_id,
                    reply_to=self.reply_queue,
                )
            )
            return await asyncio.wait_for(future, 60)
        finally:
            self.waiting.pop(correlation_id, None)

    async def _start_in_database(self) -> str:
        assert self.publisher is not None
        instance = uuid.uuid4()
        await self.pool.execute(self.names.sql("insert_starts"), [instance])
        await self.publisher.publish(task_message(self.names, str(instance), 1, now_ms()))
        return str(instance)


@dataclass
class Bench:
    options: Options
    names: Names
    pool: asyncpg.Pool
    starter: Starter
    processes: Processes

    async def _wait_ended(self, ids: list[str]) -> dict[str, float]:
        """When each instance ended (epoch seconds), once all have."""
        deadline = time.monotonic() + self.options.timeout_s
        while await self.pool.fetchval(self.names.sql("unfinished")) > 0:
            self.processes.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("bare pipeline: instances did not complete in time")
            await asyncio.sleep(POLL_S)
        rows = await self.pool.fetch(self.names.sql("ended_at"), ids)
        return {row["id"]: float(row["ended"]) for row in rows}

    async def _start_many(self, count: int, sent: dict[str, float]) -> list[str]:
        ids: list[str] = []
        for chunk in range(0, count, 1000):
            size = min(1000, count - chunk)
            ids += await asyncio.gather(*(self.starter.start(sent) for _ in range(size)))
        return ids

    def _meter(self) -> CpuMeter:
        return CpuMeter(
            {
                "coordinator": [self.processes.coordinator.pid],
                "workers": [proc.pid for proc in self.processes.workers],
                "postgres": pids_named("postgres"),
                "rabbitmq": pids_named("beam.smp"),
                "bench client": [os.getpid()],
            }
        )

    async def warmup(self) -> None:
        ids = await self._start_many(self.options.warmup, {})
        await self._wait_ended(ids)

    async def throughput(self) -> dict[str, Any]:
        n, s = self.options.instances, self.options.steps
        meter = self._meter()
        meter.start()
        began = time.time()
        ids = await self._start_many(n, {})
        ended = await self._wait_ended(ids)
        cpu = meter.stop()
        elapsed = max(ended.values()) - began
        _status(f"throughput: {n * s / elapsed:.1f} tasks/s")
        return {
            "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(n * s / elapsed, 1),
            "instances_per_s": round(n / elapsed, 1),
            "cpu_s_per_1000_tasks": {k: round(v * 1000 / (n * s), 3) for k, v in cpu.items()},
        }

    async def latency(self, rate: float) -> dict[str, Any]:
        count = self.options.rate_instances
        sent: dict[str, float] = {}
        meter = self._meter()
        meter.start()
        window_ms = time.time() * 1000
        began = time.monotonic()
        pending = []
        for index in range(count):
            delay = began + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(self.starter.start(sent)))
        await asyncio.gather(*pending)
        ended = await self._wait_ended(list(sent))
        elapsed = time.monotonic() - began
        cpu = meter.stop()
        tasks = count * self.options.steps
        return {
            "instance_latency_ms": summary([(ended[i] - at) * 1000 for i, at in sent.items()]),
            "window_ms": (window_ms, time.time() * 1000),
            "latency_phase": {
                "rate": rate,
                "instances": count,
                "achieved_rate": round(count / elapsed, 1),
                "cpu_s_per_1000_tasks": {k: round(v * 1000 / tasks, 3) for k, v in cpu.items()},
                "machine_busy_pct": round(
                    sum(cpu.values()) / (elapsed * (os.cpu_count() or 1)) * 100
                ),
            },
        }


async def _declare(names: Names, connection: AbstractRobustConnection, pool: asyncpg.Pool) -> None:
    channel = await connection.channel()
    for queue in names.queues:
        await channel.declare_queue(queue, durable=True)
    await channel.close()
    await pool.execute(names.sql("create_table"))


async def _clean_up(names: Names, connection: AbstractRobustConnection, pool: asyncpg.Pool) -> None:
    with contextlib.suppress(Exception):
        await pool.execute(names.sql("drop_table"))
    with contextlib.suppress(Exception):
        channel = await connection.channel()
        for queue in names.queues:
            await channel.queue_delete(queue)
        await channel.close()


async def run(options: Options) -> dict[str, Any]:
    names = Names(f"bare-{uuid.uuid4().hex[:12]}", options.steps)
    await ensure_database(options.database_url)  # the engine's database, as it would create it
    pool = await asyncpg.create_pool(options.database_url, min_size=1, max_size=8)
    connection = await connect(options.amqp_url, name=f"{names.prefix}-client")
    try:
        await _declare(names, connection, pool)
        with tempfile.TemporaryDirectory(prefix="bare-bench-") as logdir:
            processes = Processes(names, options, Path(logdir))
            try:
                starter = Starter(names, connection, pool, in_database=options.start_in_database)
                await starter.open()
                bench = Bench(options, names, pool, starter, processes)
                await bench.warmup()
                _status(f"warm-up done ({options.warmup} instances)")
                full = await bench.throughput()
                latency: dict[str, Any] = {"instance_latency_ms": None}
                if options.rate is not None:
                    latency = await bench.latency(options.rate)
            finally:
                processes.stop()
            dispatch = None
            if "window_ms" in latency:
                window = latency.pop("window_ms")
                dispatch = summary(processes.dispatch_latencies(*window), (50, 99))
    finally:
        await _clean_up(names, connection, pool)
        await connection.close()
        await pool.close()
    return {
        "name": "bare",
        "run": names.prefix,
        "variant": (
            f"the engine's hops and commits, no engine; {options.workers} workers"
            + ("; starts committed by the client" if options.start_in_database else "")
        ),
        "instances": options.instances,
        "steps": options.steps,
        **full,
        **latency,
        "dispatch_latency_ms": dispatch,
        "rate": options.rate,
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        result = aio.run(run(options))
    except Exception as exc:  # one clear line for the table, no traceback
        _status(f"failed: {type(exc).__name__}: {exc}")
        return 1
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
