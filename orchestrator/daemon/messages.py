"""Messages for waiting instances, correlated exactly once, or buffered until one waits.

Three ways in (a correlate command, the engine's own deliver_buffered command, a message on
the exchange <ns>.messages from any producer) end in the same transaction: the message id
goes into the message ledger first (a repeat is answered with what the first one did), then
the oldest subscription to the message's (name, correlation key) is taken with its
instance's row locked, and the pure core decides (step.message_correlated); its effects,
the subscription's deletion among them, are written by the same unit of work as any batch.
With no subscription the message stays buffered until its time to live runs out.

A subscription that opens sends the engine a deliver_buffered command through the outbox
(see effects.py), so a message that was buffered before is taken right after that commit. A
message buffered while that command was on its way is caught by its own buffering
transaction looking once more after its commit, and anything else by the sweeper.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from orchestrator.broker.topology import Topology
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_transition
from orchestrator.daemon.event_starts import message_start_instance, start_at_event
from orchestrator.daemon.reports import Notice
from orchestrator.daemon.revocations import notices_for
from orchestrator.daemon.sender import Sender
from orchestrator.daemon.supervisor import sleep_or_stop
from orchestrator.definitions.graph import process_starts
from orchestrator.engine import step
from orchestrator.engine.state import InstanceState
from orchestrator.errors import IdempotencyConflict, NotFound, ServiceUnavailable
from orchestrator.faults import crash_point
from orchestrator.model.wire import DEFAULT_MESSAGE_TTL_MS
from orchestrator.store.errors import RETRYABLE, LockBusy
from orchestrator.store.rows import MessageEntry
from orchestrator.store.store import Session, Store
from orchestrator.store.unit_of_work import InstanceRow, PublishedRow, UnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A correlation whose subscribers' instances are all locked by other sessions is tried
#: again after a pause that doubles, for at most this long in all.
BUSY_FIRST_PAUSE_S = 0.02
BUSY_LONGEST_PAUSE_S = 0.5
BUSY_GIVE_UP_S = 10.0
#: An instance's lock is waited for this long (a round holds it for milliseconds).
LOCK_TIMEOUT_MS = 2_000
#: Per sweep: buffered messages expired, and (name, key) pairs looked at again.
SWEEP_LIMIT = 500
SWEEP_DELIVER_LIMIT = 50


class UnknownMessageName(NotFound):
    """No deployed definition waits for a message of this name."""


class SubscribersBusy(Exception):
    """Every subscriber's instance is locked by another session (or its wait just closed):
    the transaction is rolled back and tried again shortly."""


@dataclass(frozen=True)
class Incoming:
    """A message to correlate, however it came in."""

    name: str
    correlation_key: str | None
    variables: dict[str, Any]
    message_id: str
    ttl_ms: int = DEFAULT_MESSAGE_TTL_MS
    #: Its producer's W3C trace (the AMQP header): an instance it starts joins it.
    traceparent: str | None = None

    @property
    def payload_hash(self) -> bytes:
        payload = [self.name, self.correlation_key, self.variables]
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).digest()


@dataclass
class Outcome:
    """What became of a message: correlated, started, buffered, duplicate or
    not_correlated."""

    status: str
    message_id: str
    instance_id: str | None = None
    #: A duplicate's: what the ledger recorded for the first (correlated, buffered, expired).
    recorded_status: str | None = None
    publish: list[PublishedRow] = field(default_factory=list)
    #: Tasks an interrupting boundary event withdrew while a worker held them.
    #: (task id, attempt, worker id) of withdrawn tasks a worker held (UnitOfWork.revoked).
    revoked: list[tuple[str, int, str]] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": self.status,
            "instance_id": self.instance_id,
            "message_id": self.message_id,
        }
        if self.recorded_status is not None:
            answer["recorded_status"] = self.recorded_status
        return answer


def message_names_in(graph: dict[str, Any]) -> set[str]:
    """The message names a deployed graph's nodes wait for."""
    names: set[str] = set()
    for node in graph.get("nodes", ()):
        message = node.get("message") if isinstance(node, dict) else None
        if isinstance(message, dict) and isinstance(message.get("name"), str):
            names.add(message["name"])
    return names


def message_starts_in(graph: dict[str, Any]) -> set[str]:
    """The message names of a deployed graph's message start events (of the process)."""
    names: set[str] = set()
    for node in graph.get("nodes", ()):
        if not isinstance(node, dict) or node.get("type") != "start_event" or node.get("parent"):
            continue
        message = node.get("message")
        if isinstance(message, dict) and isinstance(message.get("name"), str):
            names.add(message["name"])
    return names


#: (process key, version, start event id) of a message start event.
MessageStart = tuple[str, int, str]


class MessageNames:
    """The message names of every deployed definition, and the process keys that some
    version of which starts on a message (definitions never change once deployed, so only
    the ones deployed since the last look are read)."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._starting: dict[str, set[str]] = {}
        self._after = 0

    async def known(self, db: Session, name: str) -> bool:
        if name not in self._names:
            await self._read_new(db)
        return name in self._names

    async def _read_new(self, db: Session) -> None:
        while True:
            deployed = await db.definitions_after(self._after, 500)
            for definition_id, graph in deployed:
                self._names |= message_names_in(graph)
                for name in message_starts_in(graph):
                    self._starting.setdefault(name, set()).add(str(graph.get("key")))
                self._after = max(self._after, definition_id)
            if len(deployed) < 500:
                return

    async def starts(
        self, db: Session, context: EngineContext, name: str, business_key: str | None
    ) -> list[MessageStart]:
        """The message start events named `name` in the latest version of each process;
        not those of a process with unique business keys whose active instances already
        have `business_key` (one instance per key: the message is buffered instead)."""
        await self._read_new(db)
        found: list[MessageStart] = []
        for key in sorted(self._starting.get(name, ())):
            ref = await db.find_definition(key, None)
            if ref is None:
                continue
            process = await context.processes.get(db, ref.id)
            unique = process.definition.business_key.unique and business_key is not None
            if unique and await db.business_key_owners([key], [business_key]):
                continue
            found += [
                (key, ref.version, start.id)
                for start in process_starts(process)
                if start.message is not None and start.message.name == name
            ]
        return found


def _start_by_message(uow: UnitOfWork, starts: list[MessageStart], message: Incoming) -> str:
    """Start an instance at each message start event (its business key: the message's
    correlation key; a process whose business keys are unique starts once per key). The
    id of the first instance."""
    first = ""
    for key, version, start_id in starts:
        instance_id = message_start_instance(message.message_id, key)
        first = first or instance_id
        uow.outbox.append(
            start_at_event(
                key,
                version,
                start_id,
                f"message-start:{message.message_id}:{key}",
                variables=message.variables,
                business_key=message.correlation_key,
                instance_id=instance_id,
                traceparent=message.traceparent,
            )
        )
    uow.count("messages_started")
    return first


# --- in one transaction ------------------------------------------------------------------


async def correlate(
    db: Session, context: EngineContext, names: MessageNames, message: Incoming
) -> Outcome:
    """Record the message and correlate it to the oldest subscription for it, or buffer it
    (ttl 0: neither). A message id recorded before is answered duplicate."""
    if not await names.known(db, message.name):
        raise UnknownMessageName(
            f"unknown message name {message.name!r}: no deployed definition waits for it"
        )
    inserted = await db.insert_message(
        message.message_id,
        message.name,
        message.correlation_key,
        message.variables,
        message.payload_hash,
        message.ttl_ms,
    )
    if not inserted:
        return await _repeat(db, message)
    uow = UnitOfWork()
    found = await _lock_subscriber(db, message.name, message.correlation_key)
    starts = []
    if found is None:
        starts = await names.starts(db, context, message.name, message.correlation_key)
    if found is not None:
        instance_id = await _correlate_to(db, context, uow, found, message)
        outcome = Outcome("correlated", message.message_id, instance_id)
    elif starts:
        started = _start_by_message(uow, starts, message)
        await db.settle_message(message.message_id, "started", started)
        outcome = Outcome("started", message.message_id, started)
    elif message.ttl_ms == 0:
        await db.settle_message(message.message_id, "expired", None)
        outcome = Outcome("not_correlated", message.message_id)
    else:
        uow.count("messages_buffered")
        outcome = Outcome("buffered", message.message_id)
    outcome.publish = await db.write(uow)
    outcome.revoked = uow.revoked
    return outcome


async def deliver_buffered(
    db: Session, context: EngineContext, name: str, correlation_key: str | None
) -> Outcome | None:
    """Correlate the oldest unexpired message buffered for (name, key) to the oldest
    subscription for it; None when either is missing. The buffer is looked at first: most
    subscriptions find nothing there, and then no instance is locked."""
    buffered = await db.lock_buffered_message(name, correlation_key)
    if buffered is None:
        return None
    found = await _lock_subscriber(db, name, correlation_key)
    if found is None:
        return None
    message_id, variables = buffered
    uow = UnitOfWork()
    message = Incoming(name, correlation_key, variables, message_id)
    instance_id = await _correlate_to(db, context, uow, found, message)
    outcome = Outcome("correlated", message_id, instance_id)
    outcome.publish = await db.write(uow)
    outcome.revoked = uow.revoked
    return outcome


async def _repeat(db: Session, message: Incoming) -> Outcome:
    entry: MessageEntry | None = await db.message_entry(message.message_id)
    if entry is None:  # recorded a moment ago, so never: the retry will know
        raise SubscribersBusy(f"message {message.message_id} vanished from the ledger")
    if entry.payload_hash != message.payload_hash:
        raise IdempotencyConflict(
            f"message id {message.message_id!r} was already used with another name, "
            "correlation key or variables"
        )
    await db.count_message_duplicate(message.message_id)
    uow = UnitOfWork()
    uow.count("messages_duplicate")
    await db.write(uow)
    return Outcome("duplicate", message.message_id, entry.instance_id, entry.status)


#: A subscription's wait id, with its instance's row and state, locked.
Subscriber = tuple[str, InstanceRow, InstanceState]


async def _lock_subscriber(db: Session, name: str, key: str | None) -> Subscriber | None:
    """The oldest subscription whose instance this session could lock; None if there is
    none. SubscribersBusy if there are some, but their instances are locked elsewhere."""
    found = await db.lock_subscriber(name, key)
    if found is None:
        if await db.subscription_exists(name, key):
            raise SubscribersBusy(f"every instance waiting for {name!r} is locked")
        return None
    wait_id, _, state = found
    if not any(wait.id == wait_id for wait in state.waits):
        # A transaction that committed while this one took the lock closed it.
        raise SubscribersBusy(f"the wait {wait_id} closed meanwhile")
    return found


async def _correlate_to(
    db: Session,
    context: EngineContext,
    uow: UnitOfWork,
    subscriber: Subscriber,
    message: Incoming,
) -> str:
    wait_id, row, state = subscriber
    process = await context.processes.get(db, row.definition_id)
    transition = step.message_correlated(process, state, wait_id, message.variables)
    uow.changed_instances[state.id] = transition.state
    info = InstanceInfo(state.id, row.process_key, row.business_key, row.traceparent)
    wait = next(w for w in state.waits if w.id == wait_id)
    detail = {"message_id": message.message_id, "name": message.name}
    uow.record(state.id, "message_correlated", wait.node_id, None, detail)
    apply_transition(uow, info, transition)
    await db.settle_message(message.message_id, "correlated", state.id)
    uow.count("messages_correlated")
    return state.id


# --- the shell around them -----------------------------------------------------------------


class Messages:
    """Runs the transactions above with their retries, and publishes what they wrote."""

    def __init__(
        self, store: Store, context: EngineContext, sender: Sender, topology: Topology
    ) -> None:
        self._store = store
        self._context = context
        self._sender = sender
        self._topology = topology
        self.names = MessageNames()

    async def correlate(self, message: Incoming) -> Outcome:
        outcome = await self._run(lambda db: correlate(db, self._context, self.names, message))
        crash_point("after_message_commit")
        await self._sender.send(outcome.publish, self._notices(outcome))
        if outcome.status == "buffered":
            # An instance may have started waiting while this transaction buffered it, and
            # its deliver_buffered looked before this commit: look once more.
            try:
                await self.deliver_buffered(message.name, message.correlation_key)
            except ServiceUnavailable as exc:  # it is buffered: the sweeper looks again
                log.warning("message %s buffered; delivery deferred: %s", message.message_id, exc)
        return outcome

    async def deliver_buffered(self, name: str, correlation_key: str | None) -> Outcome | None:
        outcome = await self._run(
            lambda db: deliver_buffered(db, self._context, name, correlation_key)
        )
        if outcome is not None:
            await self._sender.send(outcome.publish, self._notices(outcome))
        return outcome

    def _notices(self, outcome: Outcome) -> list[Notice]:
        """Best effort: a worker holding a withdrawn task stops now, not at its next report."""
        return notices_for(outcome.revoked, self._topology)

    async def _run(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """`work` in a transaction, tried again while the instances it needs are locked
        elsewhere or the database hiccups; ServiceUnavailable when that lasts."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BUSY_GIVE_UP_S
        pause = BUSY_FIRST_PAUSE_S
        while True:
            try:
                async with self._store.transaction(
                    lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=30_000
                ) as db:
                    return await work(db)
            except (SubscribersBusy, LockBusy, *RETRYABLE) as exc:
                if loop.time() + pause > give_up:
                    raise ServiceUnavailable(f"could not correlate the message: {exc}") from exc
                log.debug("message correlation tried again: %r", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BUSY_LONGEST_PAUSE_S)

    async def sweep_forever(self, interval: float, stop: asyncio.Event) -> None:
        """Expire buffered messages past their time to live; deliver buffered messages a
        subscription waits for (a deliver_buffered that never came)."""
        while not stop.is_set():
            try:
                await self.sweep_once()
            except (ServiceUnavailable, *RETRYABLE) as exc:
                log.warning("message sweep: %s", exc)
            except Exception:
                log.exception("message sweep failed")
            await sleep_or_stop(stop, interval)

    async def sweep_once(self) -> int:
        """One sweep; how many messages expired."""
        async with self._store.session() as db:
            expired = await db.expire_messages(SWEEP_LIMIT)
            deliverable = await db.deliverable_messages(SWEEP_DELIVER_LIMIT)
        if expired:
            log.info("%d buffered messages expired", expired)
            await self._store.bump_counter("messages_expired", expired)
        for name, key in deliverable:
            await self.deliver_buffered(name, key)
        return expired


def new_message_id() -> str:
    return str(uuid.uuid4())
