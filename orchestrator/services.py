"""Finding PostgreSQL and RabbitMQ: the configured ones, else containers when Docker answers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from orchestrator.store.commands import database_problem

HOW_TO_START = (
    "Start them, or point ORCH_DATABASE_URL / ORCH_AMQP_URL at running ones:\n"
    "  PostgreSQL: pg_ctlcluster <version> main start   (or: docker run -p 5432:5432 "
    "-e POSTGRES_HOST_AUTH_METHOD=trust postgres:16)\n"
    "  RabbitMQ:   rabbitmq-server -detached            (or: docker run -p 5672:5672 "
    "rabbitmq:3.13)"
)


@dataclass
class Services:
    database_url: str
    amqp_url: str
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


async def postgres_problem(url: str, timeout: float = 3.0) -> str | None:
    return await database_problem(url, timeout)


async def rabbitmq_problem(url: str, timeout: float = 3.0) -> str | None:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url, timeout=timeout), timeout + 1)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return f"RabbitMQ unreachable: {type(exc).__name__}: {exc}"
    await connection.close()
    return None


def docker_answers(timeout: int = 3) -> bool:
    """A short probe: a socket that accepts but never answers would stall testcontainers."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker
    except ImportError:
        return False
    # docker-py leaks its socket when the connection fails; keep that warning here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = None
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except Exception:
            return False
        finally:
            if client is not None:
                client.close()
            gc.collect()
    return True


def start_containers() -> Services:
    """PostgreSQL and RabbitMQ in containers (needs the `containers` extra and Docker)."""
    try:  # testcontainers 4.15 moved its modules; the old paths import but warn
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.rabbitmq import RabbitMqContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

    postgres = PostgresContainer("postgres:16", driver=None).start()
    rabbit = RabbitMqContainer("rabbitmq:3.13").start()
    params = rabbit.get_connection_params()
    amqp_url = f"amqp://guest:guest@{params.host}:{params.port}/"
    database_url = postgres.get_connection_url()
    return Services(database_url, amqp_url, [postgres.stop, rabbit.stop])


async def resolve(database_url: str, amqp_url: str) -> Services:
    """The configured services if they answer; else containers; else a short clear error."""
    problems = [
        p
        for p in await asyncio.gather(postgres_problem(database_url), rabbitmq_problem(amqp_url))
        if p
    ]
    if not problems:
        return Services(database_url, amqp_url)
    if docker_answers():
        return await asyncio.to_thread(start_containers)
    raise SystemExit("\n".join([*problems, "No Docker engine answers either.", HOW_TO_START]))
