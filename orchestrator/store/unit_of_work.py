"""Everything one engine transaction writes, collected in memory and written in one round trip.

The engine decides in Python (under row locks, or from the rows it last wrote) and this class
turns the decisions into one statement (see batch_statement.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import orjson

from orchestrator.definitions.timers import TimerSpec, first_due
from orchestrator.engine.state import CalledBy, InstanceState, Loop, Scope, Token, Wait
from orchestrator.engine.task import OPEN_STATUSES, TaskStatus
from orchestrator.engine.variables import visible
from orchestrator.store.batch_statement import batch_statement
from orchestrator.store.rows import Row

OPEN_TASK_STATES = OPEN_STATUSES


@dataclass
class TaskRow:
    """A task row, changed in memory during a batch and written once at its end."""

    id: str
    instance_id: str
    node_id: str
    topic: str
    status: TaskStatus
    attempt: int
    retries_left: int
    lock_ms: int
    worker_id: str | None
    lease_expires_at: datetime | None
    lease_expiries: int
    #: Pending: set the lease (or the retry due time) to now + this many ms on write.
    lease_ms: int | None = None
    due_ms: int | None = None
    #: The last attempt's error (what the next attempt's worker is told).
    error: str | None = None
    error_details: str | None = None
    #: The stored row's version this copy was read at (see InstanceState.version).
    version: int = 0

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> TaskRow:
        return cls(
            id=str(record["id"]),
            instance_id=str(record["instance_id"]),
            node_id=record["node_id"],
            topic=record["topic"],
            status=record["status"],
            attempt=record["attempt"],
            retries_left=record["retries_left"],
            lock_ms=record["lock_ms"],
            worker_id=record["worker_id"],
            lease_expires_at=record["lease_expires_at"],
            lease_expiries=record["lease_expiries"],
            error=record["last_error"],
            error_details=record["last_error_details"],
            version=record["version"],
        )

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_TASK_STATES


@dataclass(frozen=True)
class OutboxMessage:
    routing_key: str
    message_id: str
    body: bytes
    #: The `traceparent` header it is published with (its instance's trace).
    traceparent: str | None = None


@dataclass(frozen=True)
class NewTimer:
    """A timer to keep: its due time comes from `spec` and the engine's clock at write."""

    id: str
    instance_id: str
    node_id: str
    spec: TimerSpec


@dataclass(frozen=True)
class NewSubscription:
    """A message subscription: `name` and the correlation key (None: none to match)."""

    id: str
    instance_id: str
    node_id: str
    name: str
    correlation_key: str | None


@dataclass(frozen=True)
class PublishedRow:
    """An outbox row after insert: the relay publishes it, then deletes it by id."""

    id: int
    message: OutboxMessage
    #: time.monotonic() when its transaction wrote it (0: read back by the sweeper, untimed).
    written_at: float = 0.0


@dataclass(frozen=True)
class InstanceRow:
    """What an instance row holds besides its evolving state (an InstanceState)."""

    definition_id: int
    process_key: str
    business_key: str | None
    status: str
    #: The instance's W3C trace context (None: an instance started before traces existed).
    traceparent: str | None = None

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> InstanceRow:
        return cls(
            record["definition_id"],
            record["process_key"],
            record["business_key"],
            record["status"],
            record["traceparent"],
        )


def state_to_row(state: InstanceState) -> tuple[Any, ...]:
    """(id, status, variables, tokens, seq, scopes): a token is a list, its trailing unset
    fields left off; scopes is None for an instance with none (a flat process)."""
    tokens = [_token_to_list(t) for t in state.tokens]
    scopes = scopes_to_json(state)
    return (state.id, state.status, state.variables, tokens, state.seq, scopes)


def _token_to_list(token: Token) -> list[str | None]:
    if token.joined is not None:
        return [token.id, token.node_id, token.task_id, token.scope, token.joined]
    if token.scope is not None:
        return [token.id, token.node_id, token.task_id, token.scope]
    return [token.id, token.node_id, token.task_id]


def scopes_to_json(state: InstanceState) -> dict[str, Any] | None:
    if not state.scopes and state.called_by is None and not state.waits:
        return None
    data: dict[str, Any] = {"scopes": [_scope_to_json(scope) for scope in state.scopes]}
    if state.waits:
        data["waits"] = [[w.id, w.kind, w.node_id, w.owner] for w in state.waits]
    if state.called_by is not None:
        called = state.called_by
        data["called_by"] = [called.instance_id, called.task_id, list(called.catches)]
    return data


def _scope_to_json(scope: Scope) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": scope.id,
        "kind": scope.kind,
        "node": scope.node_id,
        "parent": scope.parent,
        "vars": scope.variables,
    }
    if scope.index is not None:
        data["index"] = scope.index
    if scope.loop is not None:
        loop = scope.loop
        data["loop"] = [loop.total, loop.started, loop.completed, loop.items, loop.outputs]
    return data


def _scope_from_json(data: dict[str, Any]) -> Scope:
    loop = data.get("loop")
    return Scope(
        data["id"],
        data["kind"],
        data["node"],
        data["parent"],
        data["vars"],
        data.get("index"),
        Loop(
            loop[0],
            loop[1],
            loop[2],
            tuple(loop[3]) if loop[3] is not None else None,
            tuple(loop[4]) if loop[4] is not None else None,
        )
        if loop is not None
        else None,
    )


def variables_for_task(
    record: Row, task_id: str, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """What an open task's worker sees, from an instance row's variables, tokens and scopes
    (for a message sent again: a retry, a re-send, an operator's retry); `only`: the task's
    fetch list."""
    if record["scopes"] is None:
        seen = cast(dict[str, Any], record["variables"])
    else:
        token = next((Token(*t) for t in record["tokens"] if t[2] == task_id), None)
        scopes = {s["id"]: _scope_from_json(s) for s in record["scopes"]["scopes"]}
        seen = visible(record["variables"], scopes, token.scope if token is not None else None)
    return seen if only is None else {name: seen[name] for name in only if name in seen}


def state_from_record(record: asyncpg.Record) -> InstanceState:
    tokens = tuple(Token(*t) for t in record["tokens"])
    extra = record["scopes"]
    scopes: tuple[Scope, ...] = ()
    called_by = None
    waits: tuple[Wait, ...] = ()
    if extra is not None:
        scopes = tuple(_scope_from_json(scope) for scope in extra["scopes"])
        waits = tuple(Wait(*w) for w in extra.get("waits", ()))
        if "called_by" in extra:
            instance_id, task_id, catches = extra["called_by"]
            called_by = CalledBy(instance_id, task_id, tuple(catches))
    return InstanceState(
        str(record["id"]),
        record["status"],
        record["variables"],
        tokens,
        record["seq"],
        record["version"],
        scopes,
        called_by,
        waits,
    )


@dataclass
class UnitOfWork:
    new_instances: list[tuple[InstanceRow, InstanceState]] = field(default_factory=list)
    changed_instances: dict[str, InstanceState] = field(default_factory=dict)
    new_tasks: list[TaskRow] = field(default_factory=list)
    #: Call activities' task rows: held by the engine, no lease, no message.
    new_waits: list[TaskRow] = field(default_factory=list)
    changed_tasks: dict[str, TaskRow] = field(default_factory=dict)
    #: (task id, attempt) of queued tasks whose message is published again, unchanged
    #: otherwise (a task here is never also in changed_tasks).
    redispatched: list[tuple[str, int]] = field(default_factory=list)
    #: Open tasks withdrawn because their scope ended (never also in changed_tasks).
    withdrawn_tasks: list[str] = field(default_factory=list)
    new_timers: list[NewTimer] = field(default_factory=list)
    #: (timer id, times fired, next due time) of cycles that fired and go on.
    fired_timers: list[tuple[str, int, datetime]] = field(default_factory=list)
    new_subscriptions: list[NewSubscription] = field(default_factory=list)
    #: (wait id, "timer" | "message") of timers and subscriptions no longer waited on.
    closed_waits: list[tuple[str, str]] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    #: (event, topic) for the metrics: "claimed", "expired" (not written to the database).
    task_events: list[tuple[str, str]] = field(default_factory=list)
    incidents: list[tuple[Any, ...]] = field(default_factory=list)
    #: (task_id, slot) -> [task_id, slot, kind, attempt, worker_id, hash, duplicates, conflicts]
    ledger_inserts: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    ledger_repeats: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    ended_instances: list[str] = field(default_factory=list)
    #: (process key, status) of each instance that ended: the metrics' label values.
    instance_ends: list[tuple[str, str]] = field(default_factory=list)
    #: (incident id, or None and a task id for all of that task's open incidents; resolution)
    resolved_incidents: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    #: Start ledger entries (key, payload hash, instance id) that must all be new.
    start_keys: list[tuple[str, bytes, str]] = field(default_factory=list)
    #: (process key, version) that must still be the latest deployed version.
    latest_definitions: list[tuple[str, int]] = field(default_factory=list)
    #: After write: (task id, attempt, worker id) of the withdrawn tasks a worker held (it is
    #: told to stop: see daemon/revocations.py).
    revoked: list[tuple[str, int, str]] = field(default_factory=list)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def record(
        self,
        instance_id: str,
        kind: str,
        node_id: str | None = None,
        task_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.history.append((instance_id, kind, node_id, task_id, detail))

    def incident(
        self,
        instance_id: str,
        node_id: str,
        kind: str,
        message: str,
        *,
        task_id: str | None = None,
        details: str | None = None,
        attempt: int | None = None,
    ) -> None:
        incident_id = str(uuid.uuid4())
        self.incidents.append(
            (incident_id, instance_id, task_id, node_id, kind, message, details, attempt)
        )
        self.record(
            instance_id,
            "incident_raised",
            node_id,
            task_id,
            {"incident_id": incident_id, "kind": kind, "message": message},
        )
        self.count("incidents_raised")

    def task_incident(
        self, task: TaskRow, kind: str, message: str, details: str | None = None
    ) -> None:
        """An incident that holds `task` (and its instance) until an operator acts."""
        self.incident(
            task.instance_id,
            task.node_id,
            kind,
            message,
            task_id=task.id,
            details=details,
            attempt=task.attempt,
        )

    def repeat(self, task_id: str, slot: str, *, conflict: bool) -> None:
        # A repeat of an entry this batch inserts is counted in the insert itself: the one
        # statement that writes everything cannot update a row it inserts.
        inserted = self.ledger_inserts.get((task_id, slot))
        if inserted is not None:
            inserted[7 if conflict else 6] += 1
        else:
            counts = self.ledger_repeats.setdefault((task_id, slot), [0, 0])
            counts[1 if conflict else 0] += 1
        self.count("reports_conflicting" if conflict else "reports_duplicate")

    async def write(
        self, conn: asyncpg.Connection, outbox_claim_ms: int, engine_id: str
    ) -> list[PublishedRow]:
        """Write everything in one statement; return the outbox rows to publish after commit.

        Raises asyncpg.SerializationError, writing nothing, if a changed instance or task is no
        longer at the version it was read at, a start key was already used, or a definition
        is no longer the latest: the decisions were made from a stale copy.
        """
        parts = self._parts(outbox_claim_ms, engine_id)
        if not parts:
            return []
        expected = (
            len(self.changed_instances)
            + len(self.changed_tasks)
            + len(self.redispatched)
            + len(self.start_keys)
        )
        statement, args = batch_statement(parts, expected)
        row = await conn.fetchrow(statement, *args)
        ids = row["outbox_ids"] if row is not None else []
        revoked = row["revoked"] if row is not None else []
        if isinstance(revoked, str):  # a connection without the store's jsonb codec
            revoked = orjson.loads(revoked)
        self.revoked = [(str(t), int(a), str(w)) for t, a, w in revoked]
        now = time.monotonic()
        return [PublishedRow(i, m, now) for i, m in zip(ids, self.outbox, strict=True)]

    def _parts(self, outbox_claim_ms: int, engine_id: str) -> dict[str, list[Any]]:
        """The parameters of each part of the batch statement that has rows to write."""
        return {
            **self._row_parts(),
            **self._timer_parts(datetime.now(UTC)),
            **self._record_parts(outbox_claim_ms, engine_id),
        }

    def _timer_parts(self, now: datetime) -> dict[str, list[Any]]:
        """New timers, due by the engine's clock (`now`, UTC); cycles that go on; timers no
        longer waited on. A timer opened and closed in the same batch is neither written nor
        deleted; one that never fires (a cycle of 0 repetitions) is not kept."""
        closed = {wait_id for wait_id, kind in self.closed_waits if kind == "timer"}
        parts: dict[str, list[Any]] = {}
        new = []
        for timer in self.new_timers:
            due = first_due(timer.spec, now)
            if timer.id in closed:
                closed.discard(timer.id)
            elif due is not None:
                spec = timer.spec
                new.append((timer.id, timer.instance_id, timer.node_id, spec.kind, spec.text, due))
        if new:
            parts["new_timers"] = _columns(new, 6)
        fired = [row for row in self.fired_timers if row[0] not in closed]
        if fired:
            parts["fired_timers"] = _columns(fired, 3)
        if closed:
            parts["closed_timers"] = [sorted(closed)]
        return parts

    def _row_parts(self) -> dict[str, list[Any]]:
        """Instances and tasks: new, and changed from the version they were read at."""
        parts: dict[str, list[Any]] = {}
        if self.new_instances:
            instances = [
                _with_json(_new_instance_args(r, s), 5, 6, 8) for r, s in self.new_instances
            ]
            parts["new_instances"] = _columns(instances, 11)
        if self.changed_instances:
            changed = [
                (*_with_json(state_to_row(s), 2, 3, 5), s.version)
                for s in self.changed_instances.values()
            ]
            parts["changed_instances"] = _columns(changed, 7)
        if self.ended_instances:
            parts["released_keys"] = [self.ended_instances]
        if self.new_tasks:
            parts["new_tasks"] = _columns([_new_task_args(t) for t in self.new_tasks], 6)
        if self.new_waits:
            parts["new_waits"] = _columns([_new_task_args(t) for t in self.new_waits], 6)
        if self.changed_tasks:
            tasks = [(*_task_args(t), t.version) for t in self.changed_tasks.values()]
            parts["changed_tasks"] = _columns(tasks, 11)
        if self.withdrawn_tasks:
            parts["withdrawn_tasks"] = [self.withdrawn_tasks]
        if self.redispatched:
            parts["redispatched"] = _columns(self.redispatched, 2)
        return parts

    def _record_parts(self, outbox_claim_ms: int, engine_id: str) -> dict[str, list[Any]]:
        """Everything else: ledger, incidents, history, counters, outbox, start keys."""
        parts: dict[str, list[Any]] = {}
        if self.ledger_inserts:
            parts["ledger"] = _columns([tuple(row) for row in self.ledger_inserts.values()], 8)
        if self.ledger_repeats:
            repeats = [(t, s, d, c) for (t, s), (d, c) in self.ledger_repeats.items()]
            parts["ledger_repeats"] = _columns(repeats, 4)
        if self.incidents:
            parts["new_incidents"] = _columns(self.incidents, 8)
        if self.history:
            parts["new_history"] = _columns([_with_json(row, 4) for row in self.history], 5)
        if self.counters:
            # In name order: two statements of one engine at once meet on these rows, and
            # locking them in one order makes the later wait instead of deadlocking.
            parts["counted"] = [engine_id, *_columns(sorted(self.counters.items()), 2)]
        if self.resolved_incidents:
            parts["resolved_incidents"] = _columns(self.resolved_incidents, 3)
        if self.outbox:
            messages = [(m.routing_key, m.message_id, m.body, m.traceparent) for m in self.outbox]
            parts["new_outbox"] = [outbox_claim_ms, *_columns(messages, 4)]
        if self.start_keys:
            parts["start_keys"] = _columns(self.start_keys, 3)
        if self.latest_definitions:
            parts["newer_definitions"] = _columns(self.latest_definitions, 2)
        parts.update(self._subscription_parts())
        return parts

    def _subscription_parts(self) -> dict[str, list[Any]]:
        """Message subscriptions opened and closed. One opened and closed by the same
        transition (an event-based gateway whose next event could not open) is neither: the
        statement's parts see the table as it was before it, not each other's rows."""
        closed = {wait_id for wait_id, kind in self.closed_waits if kind == "message"}
        opened = [s for s in self.new_subscriptions if s.id not in closed]
        closed -= {s.id for s in self.new_subscriptions}
        parts: dict[str, list[Any]] = {}
        if opened:
            rows = [(s.id, s.instance_id, s.node_id, s.name, s.correlation_key) for s in opened]
            parts["new_subscriptions"] = _columns(rows, 5)
        if closed:
            parts["closed_subscriptions"] = [sorted(closed)]
        return parts


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column, the shape unnest() takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _with_json(row: tuple[Any, ...], *json_columns: int) -> tuple[Any, ...]:
    """JSON columns travel as text (asyncpg cannot send a jsonb[] of mixed values)."""
    return tuple(
        orjson.dumps(value).decode() if i in json_columns and value is not None else value
        for i, value in enumerate(row)
    )


def _new_instance_args(row: InstanceRow, state: InstanceState) -> tuple[Any, ...]:
    _, status, variables, tokens, seq, scopes = state_to_row(state)
    parent = state.called_by.instance_id if state.called_by is not None else None
    return (
        state.id,
        row.definition_id,
        row.process_key,
        row.business_key,
        status,
        variables,
        tokens,
        seq,
        scopes,
        parent,
        row.traceparent,
    )


def _new_task_args(task: TaskRow) -> tuple[Any, ...]:
    return (task.id, task.instance_id, task.node_id, task.topic, task.retries_left, task.lock_ms)


def _task_args(task: TaskRow) -> tuple[Any, ...]:
    return (
        task.id,
        task.status,
        task.attempt,
        task.retries_left,
        task.worker_id,
        task.lease_ms,
        task.due_ms,
        task.lease_expiries,
        task.error,
        task.error_details,
    )
