"""The async client applications use: start, deploy, query. It talks AMQP only, so an
application needs no database credentials."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from orchestrator.broker.connection import connect
from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.broker.topology import COMMAND_ROUTING_KEY, Topology, declare_core
from orchestrator.config import Settings
from orchestrator.errors import ERRORS_BY_CODE, CommandTimeout, OrchestratorError
from orchestrator.model.wire import (
    CancelCommand,
    Command,
    CommandReply,
    DeployCommand,
    GetInstanceCommand,
    ListIncidentsCommand,
    RetryCommand,
    StartCommand,
    StatsCommand,
)

#: Between resends while the broker is unreachable.
RECONNECT_WAIT_S = 0.5


@dataclass(frozen=True)
class Started:
    instance_id: str
    created: bool


class Client:
    """Use as `async with Client(settings) as client: ...`."""

    def __init__(self, settings: Settings | None = None, *, name: str = "client") -> None:
        self.settings = settings or Settings.from_env()
        self._topology = Topology(self.settings.namespace)
        self._name = name
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._replies: AbstractQueue | None = None
        self._waiting: dict[str, asyncio.Future[CommandReply]] = {}

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._connection = await connect(self.settings.amqp_url, name=self._name)
        channel = await self._connection.channel()
        await declare_core(channel, self._topology)
        # A name of our own, not a server-named one: after a reconnect the robust channel
        # declares the same queue again, and replies to resent commands still find it.
        self._replies = await channel.declare_queue(
            f"{self._topology.namespace}.client.{self._name}.{uuid.uuid4().hex[:12]}",
            exclusive=True,
            auto_delete=True,
        )
        await self._replies.consume(self._on_reply, no_ack=True)
        self._publisher = await Publisher.open(self._connection)

    async def close(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(CommandReply.model_validate(orjson.loads(message.body)))

    async def _call(
        self,
        command: Command,
        *,
        timeout: float,
        attempts: int,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply; resend the same command if none comes.

        Every command is safe to resend: starts carry their idempotency key, deploys are
        content-addressed, a second retry of one incident or cancel of one instance answers
        as the first did, queries read.
        """
        if self._publisher is None or self._replies is None:
            raise RuntimeError("client is not connected")
        body = orjson.dumps(command.model_dump(mode="json"))
        deadline = asyncio.get_running_loop().time() + attempts * timeout
        tries = 0
        while tries < attempts or asyncio.get_running_loop().time() < deadline:
            tries += 1
            correlation_id = str(uuid.uuid4())
            future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = future
            try:
                await self._publisher.publish(
                    Outgoing(
                        self._topology.commands_exchange,
                        COMMAND_ROUTING_KEY,
                        body,
                        correlation_id=correlation_id,
                        reply_to=self._replies.name,
                    )
                )
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                continue
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                # The broker is away; the robust connection comes back by itself.
                await asyncio.sleep(RECONNECT_WAIT_S)
                continue
            finally:
                self._waiting.pop(correlation_id, None)
            return _unwrap(reply)
        raise CommandTimeout(f"no reply to {command.type} after {tries} tries of {timeout}s")

    async def start(
        self,
        process_key: str,
        *,
        variables: dict[str, Any] | None = None,
        business_key: str | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
    ) -> Started:
        """Start an instance once. Without a key, one is made here and reused on every retry."""
        command = StartCommand(
            process_key=process_key,
            version=version,
            business_key=business_key,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            variables=variables or {},
        )
        result = await self._call(command, timeout=timeout, attempts=attempts)
        return Started(result["instance_id"], result["created"])

    async def deploy(self, source: str, *, filename: str | None = None) -> dict[str, Any]:
        return await self._call(
            DeployCommand(source=source, filename=filename), timeout=10.0, attempts=3
        )

    async def deploy_file(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        return await self.deploy(path.read_text("utf-8"), filename=path.name)

    async def get_instance(self, instance_id: str) -> dict[str, Any]:
        return await self._call(
            GetInstanceCommand(instance_id=instance_id), timeout=10.0, attempts=3
        )

    async def stats(self, process_key: str | None = None) -> dict[str, Any]:
        return await self._call(StatsCommand(process_key=process_key), timeout=10.0, attempts=3)

    async def incidents(
        self,
        *,
        process_key: str | None = None,
        instance_id: str | None = None,
        include_resolved: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Open incidents (with `include_resolved`, all), newest first."""
        command = ListIncidentsCommand(
            process_key=process_key,
            instance_id=instance_id,
            include_resolved=include_resolved,
            limit=limit,
        )
        result = await self._call(command, timeout=10.0, attempts=3)
        incidents: list[dict[str, Any]] = result["incidents"]
        return incidents

    async def retry(
        self, *, incident_id: str | None = None, task_id: str | None = None, retries: int = 1
    ) -> dict[str, Any]:
        """Resolve an incident (or the open one of a task) and run its task again, with
        `retries` attempts before the next incident."""
        command = RetryCommand(incident_id=incident_id, task_id=task_id, retries=retries)
        return await self._call(command, timeout=10.0, attempts=3)

    async def cancel(self, instance_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """End an active instance; its open tasks are withdrawn."""
        command = CancelCommand(instance_id=instance_id, reason=reason)
        return await self._call(command, timeout=10.0, attempts=3)


def _unwrap(reply: CommandReply) -> dict[str, Any]:
    if reply.ok:
        return reply.result or {}
    error = reply.error
    code = error.code if error else "error"
    message = error.message if error else "unknown error"
    raise ERRORS_BY_CODE.get(code, OrchestratorError)(message)
