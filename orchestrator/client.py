"""The async client applications use: start, deploy, query. It talks AMQP only, so an
application needs no database credentials.

Every call has one deadline: `timeout=` seconds, or the client's default
(`Settings.client_timeout_s`: `ORCH_CLIENT_TIMEOUT_S`, or its older name `ORCH_CLIENT_TIMEOUT`;
30 s). Within it the command is resent while no reply comes, and it is stamped so that it
never takes effect after it (see `orchestrator.broker.deadline`): when a call raises
`CommandTimeout`, its command may have taken effect before the deadline, never after.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from orchestrator import tracing
from orchestrator.broker.connection import connect
from orchestrator.broker.deadline import stamp
from orchestrator.broker.probe import QueueProbe
from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.broker.topology import COMMAND_ROUTING_KEY, Topology, declare_core
from orchestrator.config import Settings
from orchestrator.errors import (
    ERRORS_BY_CODE,
    BusinessKeyConflict,
    CommandTimeout,
    DefinitionError,
    IdempotencyConflict,
    InvalidCommand,
    InvalidState,
    NoEngine,
    NotFound,
    OrchestratorError,
    ServiceUnavailable,
)
from orchestrator.model.wire import (
    CancelCommand,
    Command,
    CommandReply,
    CorrelateCommand,
    DeployCommand,
    GetInstanceCommand,
    ListIncidentsCommand,
    RetryCommand,
    SetVariablesCommand,
    StartCommand,
    StatsCommand,
)

__all__ = [
    "BusinessKeyConflict",
    "Client",
    "CommandTimeout",
    "DefinitionError",
    "IdempotencyConflict",
    "InvalidCommand",
    "InvalidState",
    "NoEngine",
    "NotFound",
    "OrchestratorError",
    "ServiceUnavailable",
    "Started",
]

#: Between sends while the broker is unreachable.
RECONNECT_WAIT_S = 0.5
#: A command with no reply is sent again after this long, then after twice as long, and so
#: on: in case its reply was lost (replies are not persistent, and a reconnect recreates the
#: reply queue). A reply to any of the sends answers the call.
FIRST_RESEND_S = 2.0
#: Sending stops this long before the deadline (at most this share of the timeout), and the
#: command's own deadline is that moment: a command an engine takes at the last moment still
#: has the rest to be committed and answered before the call gives up.
REPLY_ALLOWANCE_S = 1.0
REPLY_ALLOWANCE_SHARE = 0.1
#: While no engine consumes the commands queue, how often to look again.
ENGINE_POLL_S = 0.2
#: An engine that answered (or was seen consuming) this recently is taken to be there.
ENGINE_SEEN_S = 5.0


@dataclass(frozen=True)
class Started:
    instance_id: str
    created: bool


class Client:
    """Use as `async with Client(settings) as client: ...`.

    `no_engine_after`: raise `NoEngine` once no engine has consumed the commands queue for
    this many seconds, instead of waiting for the call's deadline (the CLI uses 2 s). Either
    way nothing is sent while no engine consumes the queue.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str = "client",
        no_engine_after: float | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._topology = Topology(self.settings.namespace)
        self._name = name
        self._no_engine_after = no_engine_after
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._replies: AbstractQueue | None = None
        self._probe: QueueProbe | None = None
        self._counting: asyncio.Future[int | None] | None = None
        self._engine_seen_at = float("-inf")
        self._waiting: dict[str, asyncio.Future[CommandReply]] = {}

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        # A broker that does not answer gets as long as a call would (ORCH_CLIENT_TIMEOUT_S).
        self._connection = await connect(
            self.settings.amqp_url, name=self._name, deadline_s=self.settings.client_timeout_s
        )
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
        self._engine_seen_at = asyncio.get_running_loop().time()
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(CommandReply.model_validate(orjson.loads(message.body)))

    async def _call(self, command: Command, timeout: float | None) -> dict[str, Any]:
        """Send a command and wait for its reply, all within `timeout` seconds (None: the
        client's default); resend it while no reply comes.

        Resending is safe for every command: starts carry their idempotency key, deploys are
        content-addressed, a second retry or cancel changes nothing (docs/wire-protocol.md,
        "Command deadlines", has what each answers), queries only read. One correlation id
        serves all the sends, so a late reply to an earlier send answers the call too.
        """
        if self._publisher is None or self._replies is None:
            raise RuntimeError("client is not connected")
        total = self.settings.client_timeout_s if timeout is None else timeout
        if not total > 0:
            raise ValueError(f"timeout must be positive, not {total}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        cutoff = deadline - min(REPLY_ALLOWANCE_S, total * REPLY_ALLOWANCE_SHARE)
        await self._wait_for_engine(cutoff, deadline)
        body = orjson.dumps(command.model_dump(mode="json"))
        # A start's trace travels as the header too, for any consumer that reads only those.
        trace = tracing.trace_headers(
            command.traceparent if isinstance(command, StartCommand) else None
        )
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[CommandReply] = loop.create_future()
        self._waiting[correlation_id] = future
        sends = 0
        next_send = loop.time()
        gap = FIRST_RESEND_S
        try:
            while True:
                now = loop.time()
                if next_send <= now < cutoff:
                    if await self._send(body, correlation_id, cutoff - now, deadline - now, trace):
                        sends += 1
                        next_send = loop.time() + gap
                        gap *= 2
                    else:  # the broker is away; the robust connection comes back by itself
                        next_send = loop.time() + RECONNECT_WAIT_S
                wake = next_send if next_send < cutoff else deadline
                left = min(wake, deadline) - loop.time()
                if left > 0:
                    await asyncio.wait([future], timeout=left)
                if future.done():
                    break
                if loop.time() >= deadline:
                    raise self._timed_out(command, total, sends)
        finally:
            self._waiting.pop(correlation_id, None)
        if future.cancelled():
            raise OrchestratorError(f"the client was closed before {command.type} was answered")
        return _unwrap(future.result())

    async def _send(
        self,
        body: bytes,
        correlation_id: str,
        ttl_s: float,
        wait_s: float,
        trace: dict[str, str] | None = None,
    ) -> bool:
        """Publish once, to take effect within `ttl_s` or never; whether the broker took it
        (its confirm came within `wait_s`). `trace`: more headers (a start's traceparent)."""
        if self._publisher is None or self._replies is None:
            return False
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms < 1:
            return False
        headers, expiration = stamp(ttl_ms)
        if trace:
            headers = {**headers, **trace}
        message = Outgoing(
            self._topology.commands_exchange,
            COMMAND_ROUTING_KEY,
            body,
            correlation_id=correlation_id,
            reply_to=self._replies.name,
            headers=headers,
            expiration=expiration,
        )
        try:
            await asyncio.wait_for(self._publisher.publish(message), wait_s)
        except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            return False
        return True

    async def _wait_for_engine(self, cutoff: float, deadline: float) -> None:
        """Return once an engine consumes the commands queue (at once when one answered
        lately), in time to send before `cutoff`; else raise NoEngine at the deadline, or
        after `no_engine_after`. Nothing is sent meanwhile: a command no engine takes would
        only wait in the queue until it expires."""
        loop = asyncio.get_running_loop()
        give_up = deadline
        if self._no_engine_after is not None:
            give_up = min(deadline, loop.time() + self._no_engine_after)
        while True:
            present = loop.time() - self._engine_seen_at < ENGINE_SEEN_S
            if not present:
                consumers = await self._consumer_count(give_up - loop.time())
                # Unknown (the broker is away): go on, sending tells.
                present = consumers is None or consumers > 0
            now = loop.time()
            if present and now < cutoff:
                return
            if now >= give_up:
                raise NoEngine(
                    f"no engine answered on {self._topology.namespace}: "
                    "is `orchestrator engine` running?"
                )
            await asyncio.sleep(min(ENGINE_POLL_S, give_up - now))

    async def _consumer_count(self, wait_s: float) -> int | None:
        """Consumers of the commands queue (None: unknown, the broker is away). Calls at the
        same moment share one look (a passive declare). A look not answered within `wait_s`
        found none."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self._count_consumers())
        try:
            return await asyncio.wait_for(asyncio.shield(self._counting), max(wait_s, 0.001))
        except TimeoutError:
            return 0

    async def _count_consumers(self) -> int | None:
        if self._connection is None:
            return None
        if self._probe is None:
            self._probe = QueueProbe(self._connection)
        try:
            _, consumers = await self._probe.look(self._topology.commands_queue, ENGINE_SEEN_S)
        except Exception:  # the broker is away, or the queue is gone: sending will tell
            return None
        if consumers:
            self._engine_seen_at = asyncio.get_running_loop().time()
        return consumers

    def _timed_out(self, command: Command, total: float, sends: int) -> CommandTimeout:
        if sends == 0:
            return CommandTimeout(
                f"could not send {command.type} within {total:g} s: is RabbitMQ reachable?"
            )
        hint = ""
        if isinstance(command, StartCommand):
            hint = (
                f"; start it again with idempotency key {command.idempotency_key!r} to learn "
                "whether it did"
            )
        return CommandTimeout(
            f"no reply to {command.type} within {total:g} s (sent {sends} times): it may have "
            f"taken effect before that, never after{hint}"
        )

    async def start(
        self,
        process_key: str,
        *,
        variables: dict[str, Any] | None = None,
        business_key: str | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
        timeout: float | None = None,
        traceparent: str | None = None,
    ) -> Started:
        """Start an instance once. Without a key, one is made here and reused on every
        resend of this call (not by a later call: pass your own key to retry a call).

        The instance joins the W3C trace `traceparent`; without one, with OpenTelemetry, a
        producer span of this call, a child of the current span (with no tracer provider
        set, the current span's context as it is, e.g. one a propagator extracted), else
        the engine starts a new trace."""
        if traceparent is not None and tracing.valid_traceparent(traceparent) is None:
            raise ValueError(f"not a W3C traceparent: {traceparent!r}")
        if traceparent is None and not tracing.enabled():
            traceparent = tracing.current_traceparent()
        command = StartCommand(
            process_key=process_key,
            version=version,
            business_key=business_key,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            variables=variables or {},
            traceparent=traceparent,
        )
        if command.traceparent is not None or not tracing.enabled():
            result = await self._call(command, timeout)
            return Started(result["instance_id"], result["created"])
        return await self._start_in_span(command, timeout)

    async def _start_in_span(self, command: StartCommand, timeout: float | None) -> Started:
        with tracing.span(
            f"orchestrator start {command.process_key}",
            kind="producer",
            attributes={"orchestrator.process_key": command.process_key},
        ) as span:
            if span is not None:
                traced = tracing.traceparent_of(span)
                command = command.model_copy(update={"traceparent": traced})
            result = await self._call(command, timeout)
            if span is not None:
                span.set_attribute("orchestrator.instance_id", str(result["instance_id"]))
                span.set_attribute("orchestrator.created", bool(result["created"]))
        return Started(result["instance_id"], result["created"])

    async def deploy(
        self, source: str, *, filename: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        return await self._call(DeployCommand(source=source, filename=filename), timeout)

    async def deploy_file(
        self, path: str | Path, *, timeout: float | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        return await self.deploy(path.read_text("utf-8"), filename=path.name, timeout=timeout)

    async def get_instance(
        self, instance_id: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        return await self._call(GetInstanceCommand(instance_id=instance_id), timeout)

    async def stats(
        self, process_key: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        return await self._call(StatsCommand(process_key=process_key), timeout)

    async def incidents(
        self,
        *,
        process_key: str | None = None,
        instance_id: str | None = None,
        include_resolved: bool = False,
        limit: int = 100,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Open incidents (with `include_resolved`, all), newest first."""
        command = ListIncidentsCommand(
            process_key=process_key,
            instance_id=instance_id,
            include_resolved=include_resolved,
            limit=limit,
        )
        result = await self._call(command, timeout)
        incidents: list[dict[str, Any]] = result["incidents"]
        return incidents

    async def retry(
        self,
        *,
        incident_id: str | None = None,
        task_id: str | None = None,
        retries: int = 1,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Resolve an incident (or the open one of a task) and run its task again, with
        `retries` attempts before the next incident."""
        command = RetryCommand(incident_id=incident_id, task_id=task_id, retries=retries)
        return await self._call(command, timeout)

    async def cancel(
        self, instance_id: str, *, reason: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """End an active instance; its open tasks are withdrawn."""
        command = CancelCommand(instance_id=instance_id, reason=reason)
        return await self._call(command, timeout)

    async def set_variables(
        self,
        instance_id: str,
        variables: dict[str, Any],
        *,
        scope: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Set variables of an active instance: in the process scope, or locally in `scope`
        (a scope id from get_instance). Answers {instance_id, scope, names}."""
        command = SetVariablesCommand(instance_id=instance_id, variables=variables, scope=scope)
        return await self._call(command, timeout)

    async def correlate(
        self,
        name: str,
        correlation_key: str | None = None,
        *,
        variables: dict[str, Any] | None = None,
        message_id: str | None = None,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Correlate the message `name` to the instance waiting for it with this correlation
        key, or buffer it for `ttl` seconds (None: the engine's default, an hour; 0: not
        buffered). Answers {status, instance_id, message_id}, status one of correlated,
        started, buffered, duplicate, not_correlated. Without a `message_id` one is made here and
        reused on every resend of this call: pass your own to make a later call count once
        too. A name no deployed definition waits for raises NotFound."""
        command = CorrelateCommand(
            name=name,
            correlation_key=correlation_key,
            variables=variables or {},
            message_id=message_id or str(uuid.uuid4()),
            ttl_ms=None if ttl is None else int(ttl * 1000),
        )
        return await self._call(command, timeout)


def _unwrap(reply: CommandReply) -> dict[str, Any]:
    if reply.ok:
        return reply.result or {}
    error = reply.error
    code = error.code if error else "error"
    message = error.message if error else "unknown error"
    raise ERRORS_BY_CODE.get(code, OrchestratorError)(message)
