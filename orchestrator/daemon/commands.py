"""Operator commands: deploy, retry, cancel, and the reads (an instance, stats, incidents).

Each is answered in a task of its own beside the rounds (a deploy, or a read over many rows,
must not hold up the starts and completions), by the handler its type names in a table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from orchestrator.broker.batches import ack_each
from orchestrator.broker.topology import Topology
from orchestrator.config import Settings
from orchestrator.daemon import admin, operations
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.messages import Incoming, Messages, new_message_id
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.sender import CommandResult, Message, Sender, replies
from orchestrator.errors import InvalidCommand, OrchestratorError, ServiceUnavailable
from orchestrator.model.wire import (
    DEFAULT_MESSAGE_TTL_MS,
    CancelCommand,
    Command,
    CorrelateCommand,
    DeliverBufferedCommand,
    DeployCommand,
    GetInstanceCommand,
    ListIncidentsCommand,
    RetryCommand,
    SetVariablesCommand,
    StatsCommand,
)
from orchestrator.store.errors import RETRYABLE, DataError, LockBusy
from orchestrator.store.store import Session, Store

log = logging.getLogger(__name__)

#: How long an operator action waits for an instance's lock (a round holds it for
#: milliseconds; a stalled engine for up to its idle-in-transaction timeout).
OPERATOR_LOCK_TIMEOUT_MS = 2_000
#: A read over many rows may take longer than a round's statement. It takes no row locks;
#: only DDL (a migration) makes it wait, and not for long.
READ_LOCK_TIMEOUT_MS = 30_000
READ_STATEMENT_TIMEOUT_MS = 60_000

#: A command's handler: its result, or an OrchestratorError raised for the client.
Handler = Callable[[Any], Awaitable[dict[str, Any]]]


class OperatorCommands:
    """Answers every command but a start (starts go in the rounds: see StartRounds)."""

    def __init__(
        self,
        store: Store,
        relay: Relay,
        sender: Sender,
        context: EngineContext,
        topology: Topology,
        settings: Settings,
        messages: Messages,
    ) -> None:
        self._store = store
        self._messages = messages
        self._relay = relay
        self._sender = sender
        self._context = context
        self._topology = topology
        self._settings = settings
        #: Commands being answered beside the rounds.
        self._background: set[asyncio.Task[None]] = set()
        self._handlers: dict[type[Command], Handler] = {
            DeployCommand: self._deploy,
            RetryCommand: self._retry,
            CancelCommand: self._cancel,
            SetVariablesCommand: self._set_variables,
            GetInstanceCommand: self._get_instance,
            StatsCommand: self._stats,
            ListIncidentsCommand: self._list_incidents,
            CorrelateCommand: self._correlate,
            DeliverBufferedCommand: self._deliver_buffered,
        }

    def answer_in_background(self, message: Message, command: Command) -> None:
        """Answer and ack `message` in a task of its own."""
        task = asyncio.create_task(self._answer_and_ack(message, command))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait(self, timeout: float) -> None:
        """For the commands still being answered (at shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=timeout)

    async def _answer_and_ack(self, message: Message, command: Command) -> None:
        try:
            answer = await self.answer(command)
        except Exception as exc:  # answered, not left unacked: the client would wait in vain
            log.exception("command %s failed", command.type)
            answer = OrchestratorError(f"engine error: {type(exc).__name__}: {exc}")
        await self._sender.send([], replies([(message, answer)]))
        await ack_each([message])

    async def answer(self, command: Command) -> CommandResult:
        """The command's result, or the error to answer it with."""
        handler = self._handlers.get(type(command))
        if handler is None:
            return InvalidCommand(f"unsupported command {command.type}")
        try:
            return await handler(command)
        except OrchestratorError as exc:
            return exc
        except (DataError, ValueError) as exc:
            return InvalidCommand(str(exc))
        except RETRYABLE as exc:  # the client resends; the engine keeps running
            return ServiceUnavailable(f"database unavailable: {exc}")
        except LockBusy:
            return ServiceUnavailable(
                "the instance is locked by another engine's session (a stalled engine?); "
                f"PostgreSQL ends a stalled session within "
                f"{self._settings.db_idle_in_transaction_timeout_ms / 1000:g} s: try again"
            )

    # --- the handlers ----------------------------------------------------------------------

    async def _deploy(self, command: DeployCommand) -> dict[str, Any]:
        results, processes = await admin.deploy(self._store, command.source)
        await self._relay.ensure_queues(frozenset().union(*(p.topics for p in processes)))
        # The first process's fields stay at the top for clients that deploy one process.
        return {**results[0], "deployed": results}

    async def _retry(self, command: RetryCommand) -> dict[str, Any]:
        async with self._operating() as db:
            done = await operations.retry(db, self._context, command)
        await self._sender.send(done.publish, done.notices)
        result = done.result
        if not result["already_retried"]:
            log.info(
                "operator retried incident %s: task %s attempt %s",
                result["incident_id"],
                result["task_id"],
                result["attempt"],
                extra=_ids(result),
            )
        return result

    async def _cancel(self, command: CancelCommand) -> dict[str, Any]:
        async with self._operating() as db:
            done = await operations.cancel(db, self._context, command, self._topology)
        await self._sender.send(done.publish, done.notices)
        if not done.result["already_cancelled"]:
            log.info(
                "operator cancelled instance %s (%s)",
                command.instance_id,
                command.reason or "no reason given",
                extra=_ids(done.result),
            )
        return done.result

    async def _set_variables(self, command: SetVariablesCommand) -> dict[str, Any]:
        async with self._operating() as db:
            result = await operations.set_instance_variables(db, command)
        log.info(
            "operator set variables %s of instance %s",
            ", ".join(result["names"]),
            command.instance_id,
            extra=_ids(result),
        )
        return result

    async def _get_instance(self, command: GetInstanceCommand) -> dict[str, Any]:
        async with self._reading() as db:
            return await admin.describe_instance(db, command.instance_id)

    async def _stats(self, command: StatsCommand) -> dict[str, Any]:
        async with self._reading() as db:
            return await admin.stats(db, command.process_key)

    async def _list_incidents(self, command: ListIncidentsCommand) -> dict[str, Any]:
        async with self._reading() as db:
            return await operations.list_incidents(db, command)

    async def _correlate(self, command: CorrelateCommand) -> dict[str, Any]:
        ttl_ms = DEFAULT_MESSAGE_TTL_MS if command.ttl_ms is None else command.ttl_ms
        message_id = command.message_id or new_message_id()
        incoming = Incoming(
            command.name, command.correlation_key, command.variables, message_id, ttl_ms
        )
        return (await self._messages.correlate(incoming)).result()

    async def _deliver_buffered(self, command: DeliverBufferedCommand) -> dict[str, Any]:
        """The engine's own command, sent when a subscription opened (not answered)."""
        outcome = await self._messages.deliver_buffered(command.name, command.correlation_key)
        return outcome.result() if outcome is not None else {"status": "nothing_buffered"}

    def _operating(self) -> AbstractAsyncContextManager[Session]:
        """An operator action's transaction: it waits for a round of a healthy engine, not
        for a stalled one (LockBusy)."""
        return self._store.transaction(
            lock_timeout_ms=OPERATOR_LOCK_TIMEOUT_MS, statement_timeout_ms=30_000
        )

    def _reading(self) -> AbstractAsyncContextManager[Session]:
        """A read-only transaction with the reads' time limits."""
        return self._store.transaction(
            readonly=True,
            lock_timeout_ms=READ_LOCK_TIMEOUT_MS,
            statement_timeout_ms=READ_STATEMENT_TIMEOUT_MS,
        )


def _ids(result: dict[str, Any]) -> dict[str, Any]:
    """The ids of an operator action's result, as a log record's fields (JSON logs)."""
    return {
        "instance_id": result.get("instance_id"),
        "task_id": result.get("task_id"),
        "attempt": result.get("attempt"),
    }
