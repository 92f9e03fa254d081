"""Helpers shared by the integration tests: databases, namespaces, engines and workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel

from orchestrator.broker.topology import Topology
from orchestrator.config import Settings
from orchestrator.daemon.app import Engine
from orchestrator.model.wire import TaskMessage
from orchestrator.store.migrate import apply_migrations, ensure_database
from orchestrator.store.pool import create_pool
from orchestrator.subprocesses import spawn, stop
from workers import TaskContext, Worker

ROOT = Path(__file__).resolve().parents[2]


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_template(base_url: str, name: str) -> str:
    url = with_database(base_url, name)
    await drop_database(base_url, name)
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return url


async def clone_database(base_url: str, template: str, name: str) -> str:
    conn = await asyncpg.connect(with_database(base_url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return with_database(base_url, name)


async def drop_database(base_url: str, name: str) -> None:
    conn = await asyncpg.connect(with_database(base_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll `check` until true; fail with `what` after `timeout` seconds. Returns the wait."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_engine(settings: Settings) -> AsyncIterator[Engine]:
    engine = Engine(settings)
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        engine.stop.set()
        await asyncio.wait_for(task, 30)


@dataclass
class Hanging:
    """A handler that runs until it is cancelled: `running` once it started, `stopped` once
    its cancellation (a task_revoked, say) reached it."""

    running: asyncio.Event
    stopped: asyncio.Event


def hang_until_cancelled(worker: Worker, topic: str) -> Hanging:
    hanging = Hanging(asyncio.Event(), asyncio.Event())

    @worker.task(topic)
    async def hang(task: TaskContext) -> dict[str, Any]:
        hanging.running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            hanging.stopped.set()
            raise
        return {}

    return hanging


@contextlib.asynccontextmanager
async def running_worker(worker: Worker) -> AsyncIterator[Worker]:
    async with worker:
        yield worker


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(url, size=4)
    try:
        yield pool
    finally:
        await pool.close()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    env.update(
        ORCH_DATABASE_URL=settings.database_url,
        ORCH_AMQP_URL=settings.amqp_url,
        ORCH_NAMESPACE=settings.namespace,
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Processes:
    """Engines and workers as real OS processes, so tests can kill -9 and SIGSTOP them."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, label: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = spawn(
            [sys.executable, "-m", "orchestrator", "--log-level", "INFO", *args],
            output=self.log_dir / f"{label}-{len(self.procs)}.log",
            env=process_env(self.settings, **env),
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def engine(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("engine", "engine", **env)

    def worker(self, spec: str, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("worker", "worker", spec, **env)

    def stop_all(self) -> None:
        stop(self.procs, timeout_s=20)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


async def publish_raw(
    settings: Settings, exchange: str, routing_key: str, body: bytes, **properties: Any
) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        await target.publish(aio_pika.Message(body, **properties), routing_key)
    finally:
        await connection.close()


async def take_task(
    channel: AbstractChannel, topology: Topology, topic: str, *, timeout: float = 15.0
) -> TaskMessage:
    """Act as a raw worker: take (and ack) the next task message of `topic`."""
    queue = await channel.get_queue(topology.task_queue(topic), ensure=False)
    taken: list[TaskMessage] = []

    async def arrived() -> bool:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return False
        taken.append(TaskMessage.model_validate_json(message.body))
        await message.ack()
        return True

    await wait_until(arrived, timeout=timeout, what=f"a task message on topic {topic}")
    return taken[0]


def json_body(value: Any) -> bytes:
    return orjson.dumps(value)


async def instance_states(pool: asyncpg.Pool, process_key: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM process_instances WHERE process_key = $1 "
        "GROUP BY status",
        process_key,
    )
    return {row["status"]: row["n"] for row in rows}


async def counter(pool: asyncpg.Pool, name: str) -> int:
    value = await pool.fetchval("SELECT sum(value) FROM engine_counters WHERE name = $1", name)
    return int(value or 0)


def sequential_process(
    key: str, topics: list[str], *, lock: str = "30s", **task_options: Any
) -> str:
    """A YAML definition: start -> one service task per topic -> end."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start_event"}]
    flows: list[dict[str, Any]] = []
    previous = "start"
    for index, topic in enumerate(topics):
        node_id = f"step{index + 1}"
        nodes.append(
            {"id": node_id, "type": "service_task", "topic": topic, "lock": lock, **task_options}
        )
        flows.append({"id": f"to_{node_id}", "from": previous, "to": node_id})
        previous = node_id
    nodes.append({"id": "end", "type": "end_event"})
    flows.append({"id": "to_end", "from": previous, "to": "end"})
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows}).decode()


async def queue_exists(amqp_url: str, name: str) -> bool:
    """Whether RabbitMQ has a queue of that name (a passive declare, on its own channel)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True
    finally:
        await connection.close()


async def table_exists(database_url: str, name: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT to_regclass($1)", name) is not None
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def durable_queue(settings: Settings, suffix: str) -> AsyncIterator[str]:
    """A durable queue of the test's namespace, deleted afterwards; yields its name."""
    name = f"{settings.namespace}.{suffix}"
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True)
    try:
        yield name
    finally:
        await channel.queue_delete(name)
        await connection.close()
