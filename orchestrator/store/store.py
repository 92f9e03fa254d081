"""The one way to the database: `Store` over the engine's pool, `Session` on one connection.

Nothing outside this package sees a connection or a statement. A caller asks the Store for a
session (`session()`, autocommit), for work in a transaction that waits out a database that
is away (`in_transaction`), or for an operator's transaction with its own time limits
(`transaction`); a few statements that need no session of their own are Store methods. A
Session has a method per named query (or per step that takes several), returning typed rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from orchestrator.engine.state import InstanceState
from orchestrator.store.errors import RETRYABLE, UNREACHABLE, DatabaseAway
from orchestrator.store.listener import Listener
from orchestrator.store.migrate import apply_migrations, ensure_database
from orchestrator.store.pool import create_pool
from orchestrator.store.queries import Q
from orchestrator.store.rows import (
    DefinitionRef,
    LedgerEntry,
    MessageEntry,
    QueuedTopic,
    Row,
    SavedDefinition,
    StartKeyEntry,
    StoredDefinition,
    plain,
)
from orchestrator.store.session import SessionLimits
from orchestrator.store.unit_of_work import (
    InstanceRow,
    OutboxMessage,
    PublishedRow,
    TaskRow,
    UnitOfWork,
    state_from_record,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Store:
    """The engine's database. Writes are stamped with `engine_id` (its counters are rows of
    its own) and claim their outbox rows for `outbox_claim_ms` (before any sweeper may take
    them)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        engine_id: str,
        outbox_claim_ms: int,
        url: str | None = None,
        limits: SessionLimits | None = None,
        on_commit: Callable[[UnitOfWork], None] | None = None,
    ) -> None:
        self._pool = pool
        self._engine_id = engine_id
        self._outbox_claim_ms = outbox_claim_ms
        #: Told of each UnitOfWork once its transaction committed (the engine's metrics).
        self.on_commit = on_commit
        #: Where a listener connects (see `listen`), and with which session limits.
        self._url = url
        self._limits = limits

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        engine_id: str,
        outbox_claim_ms: int,
        size: int,
        limits: SessionLimits,
        application_name: str,
    ) -> Store:
        """Create the database if the server does not have it yet, and a pool of sessions."""
        await ensure_database(url)
        pool = await create_pool(url, size=size, application_name=application_name, limits=limits)
        return cls(
            pool, engine_id=engine_id, outbox_claim_ms=outbox_claim_ms, url=url, limits=limits
        )

    async def close(self) -> None:
        await self._pool.close()

    def _session(self, conn: asyncpg.Connection) -> Session:
        return Session(conn, self._engine_id, self._outbox_claim_ms, self.on_commit)

    # --- sessions and transactions ---------------------------------------------------------

    @asynccontextmanager
    async def session(self, *, timeout: float | None = None) -> AsyncIterator[Session]:
        """A pooled connection, autocommit. It is closed, not put back, when a call on it did
        not answer in time: it may have gone silent (a partition), and handing it back would
        wait on it again."""
        async with self._pool.acquire(timeout=timeout) as conn:
            try:
                session = self._session(conn)
                yield session
            except BaseException as exc:
                if _gone_silent(conn, exc):
                    conn.terminate()
                raise
            session.committed()

    async def in_transaction(
        self,
        work: Callable[[Session], Awaitable[T]],
        *,
        stop: asyncio.Event | None = None,
        give_up_after_s: float | None = None,
    ) -> T:
        """Run `work` in a transaction; on a lost connection or a deadlock, wait and run it
        again.

        While the database is away the caller holds its messages unacked, so nothing is lost
        and nothing spins: the broker stops delivering once the prefetch window is full. With
        `give_up_after_s`, a database unreachable for that long since the first try raises
        DatabaseAway instead: the caller then gives its messages back to the broker, for the
        engines that can reach the database, and stops taking new ones until it answers
        again.
        """
        began = asyncio.get_running_loop().time()
        delay = 0.05
        while True:
            try:
                return await self._once(work)
            except RETRYABLE as exc:
                if stop is not None and stop.is_set():
                    raise
                waited = asyncio.get_running_loop().time() - began
                gone = give_up_after_s is not None and isinstance(exc, UNREACHABLE)
                if gone and waited >= (give_up_after_s or 0):
                    raise DatabaseAway(
                        f"database unreachable for {waited:.1f} s ({type(exc).__name__}: {exc})"
                    ) from exc
                log.warning(
                    "database unavailable (%s: %s); retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _once(self, work: Callable[[Session], Awaitable[T]]) -> T:
        """One try, in a transaction; a rollback is only tried on a connection that answers."""
        async with self._pool.acquire() as conn:
            try:
                transaction = conn.transaction()
                await transaction.start()
                session = self._session(conn)
                try:
                    result = await work(session)
                except BaseException as exc:
                    if not _gone_silent(conn, exc):
                        await _roll_back(conn, transaction)
                    raise
                await transaction.commit()
                session.committed()
                return result
            except BaseException as exc:
                if _gone_silent(conn, exc):
                    conn.terminate()
                raise

    @asynccontextmanager
    async def transaction(
        self, *, lock_timeout_ms: int, statement_timeout_ms: int, readonly: bool = False
    ) -> AsyncIterator[Session]:
        """One transaction, tried once, with time limits of its own: an operator's action or
        read, or a deploy, waits longer than a round may (see SessionLimits)."""
        async with self._pool.acquire() as conn:
            async with conn.transaction(readonly=readonly):
                await conn.execute(Q.local_limits, str(lock_timeout_ms), str(statement_timeout_ms))
                session = self._session(conn)
                yield session
            session.committed()

    async def answers(self, *, timeout: float = 3.0) -> bool:
        """One quick question to PostgreSQL, on a connection of the pool, bounded in time."""
        try:
            async with self.session(timeout=timeout) as db:
                await db.ping(timeout)
        except RETRYABLE:
            return False
        return True

    async def listen(self, channel: str, on_payload: Callable[[str], None]) -> Listener:
        """A session of its own, listening on `channel`: each NOTIFY's payload goes to
        `on_payload` (in the event loop). The caller closes it."""
        if self._url is None:
            raise RuntimeError("this store was opened without a URL: it cannot listen")
        return await Listener.open(
            self._url,
            channel,
            on_payload,
            application_name=f"orchestrator {self._engine_id} listener",
            limits=self._limits,
        )

    async def next_timer_due(self) -> datetime | None:
        """When the earliest timer is due (None: no timer is kept)."""
        async with self._pool.acquire() as conn:
            due: datetime | None = await conn.fetchval(Q.next_timer_due)
        return due

    # --- statements that need no session of their own -------------------------------------

    async def bump_counter(self, name: str, by: int) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(Q.bump_counter, self._engine_id, name, by)

    async def prune_start_ledger(self, retention_days: int) -> None:
        """Forget idempotency keys older than the retention window."""
        async with self._pool.acquire() as conn:
            await conn.execute(Q.prune_start_ledger, retention_days)

    async def delete_outbox(self, ids: list[int]) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(Q.delete_outbox, ids)

    async def claim_lapsed_outbox(self, limit: int) -> list[PublishedRow]:
        """Outbox rows whose engine did not publish them in time, claimed for this one."""
        async with self._pool.acquire() as conn:
            records = await conn.fetch(Q.claim_lapsed_outbox, self._outbox_claim_ms, limit)
        return [
            PublishedRow(
                r["id"],
                OutboxMessage(r["routing_key"], r["message_id"], r["body"], r["traceparent"]),
            )
            for r in records
        ]


class Session:
    """One connection of the store's pool, in a transaction or not (the caller's choice, made
    through the Store). Methods read or write by the named queries."""

    __slots__ = ("_conn", "_engine_id", "_on_commit", "_outbox_claim_ms", "_written")

    def __init__(
        self,
        conn: asyncpg.Connection,
        engine_id: str,
        outbox_claim_ms: int,
        on_commit: Callable[[UnitOfWork], None] | None = None,
    ) -> None:
        self._conn = conn
        self._engine_id = engine_id
        self._outbox_claim_ms = outbox_claim_ms
        self._on_commit = on_commit
        #: What this session wrote inside a transaction not yet committed.
        self._written: list[UnitOfWork] = []

    async def write(self, uow: UnitOfWork) -> list[PublishedRow]:
        """Everything `uow` holds, in one statement (see UnitOfWork.write); the outbox rows
        to publish after commit."""
        published = await uow.write(self._conn, self._outbox_claim_ms, self._engine_id)
        if self._on_commit is not None:
            if self._conn.is_in_transaction():
                self._written.append(uow)
            else:  # autocommit: the statement committed
                self._on_commit(uow)
        return published

    def committed(self) -> None:
        """The transaction this session wrote in committed: pass its writes on."""
        if self._on_commit is not None:
            for uow in self._written:
                self._on_commit(uow)
        self._written.clear()

    async def metrics_gauges(self) -> tuple[dict[str, int], int, float]:
        """(open incidents per process key, outbox rows waiting, the oldest one's age in s)."""
        incidents = {
            r["process_key"]: r["n"] for r in await self._conn.fetch(Q.metrics_open_incidents)
        }
        row = await self._conn.fetchrow(Q.metrics_outbox)
        return incidents, int(row["n"]), float(row["age"])

    async def ping(self, timeout: float) -> None:
        await self._conn.fetchval(Q.ping, timeout=timeout)

    # --- schema ----------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Bring the schema up to date (see migrate.py); the versions applied now."""
        return await apply_migrations(self._conn)

    async def autovacuum_on(self) -> bool:
        return bool(await self._conn.fetchval(Q.autovacuum_setting) == "on")

    # --- definitions -----------------------------------------------------------------------

    async def save_definition(
        self, key: str, content_hash: str, graph: dict[str, Any], source: str
    ) -> SavedDefinition:
        """Inside the caller's transaction: the definition with this content, else a new
        version of the key. Concurrent deploys of one key take turns."""
        await self._conn.execute(Q.definition_lock, key)
        row = await self._conn.fetchrow(Q.definition_by_hash, key, content_hash)
        if row is not None:
            return SavedDefinition(row["id"], row["version"], created=False)
        row = await self._conn.fetchrow(Q.insert_definition, key, content_hash, graph, source)
        return SavedDefinition(row["id"], row["version"], created=True)

    async def definition_by_id(self, definition_id: int) -> StoredDefinition | None:
        row = await self._conn.fetchrow(Q.definition_by_id, definition_id)
        return None if row is None else StoredDefinition(row["id"], row["version"], row["graph"])

    async def find_definition(self, key: str, version: int | None) -> DefinitionRef | None:
        """The definition of `key` at `version`; with None, its latest version."""
        if version is None:
            row = await self._conn.fetchrow(Q.latest_definition, key)
        else:
            row = await self._conn.fetchrow(Q.definition_by_version, key, version)
        return None if row is None else DefinitionRef(row["id"], row["key"], row["version"])

    async def definitions_after(
        self, definition_id: int, limit: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """(id, graph) of up to `limit` definitions deployed after `definition_id`, by id."""
        rows = await self._conn.fetch(Q.definitions_after, definition_id, limit)
        return [(row["id"], row["graph"]) for row in rows]

    async def deployed_graphs(self) -> list[dict[str, Any]]:
        return [row["graph"] for row in await self._conn.fetch(Q.deployed_graphs)]

    # --- starts ----------------------------------------------------------------------------

    async def record_start_keys(
        self, keys: list[str], payload_hashes: list[bytes], instance_ids: list[str]
    ) -> set[tuple[str, str]]:
        """Insert each idempotency key not yet recorded; (key, instance id) of those that
        were new (of two starts with one key, the first)."""
        rows = await self._conn.fetch(Q.insert_start_ledger, keys, payload_hashes, instance_ids)
        return {(row["idempotency_key"], str(row["instance_id"])) for row in rows}

    async def start_key_entries(self, keys: list[str]) -> dict[str, StartKeyEntry]:
        rows = await self._conn.fetch(Q.start_ledger_entries, keys)
        return {
            row["idempotency_key"]: StartKeyEntry(row["payload_hash"], str(row["instance_id"]))
            for row in rows
        }

    async def count_start_duplicates(self, keys: list[str]) -> None:
        await self._conn.execute(Q.count_start_duplicates, keys)

    async def forget_starts(self, keys: list[str]) -> None:
        await self._conn.execute(Q.forget_starts, keys)

    async def starts_return_existing(self, keys: list[str], instance_ids: list[str]) -> None:
        """Each key now answers with the instance that already had its business key."""
        await self._conn.execute(Q.starts_return_existing, keys, instance_ids)

    async def claim_business_keys(
        self, process_keys: list[str], business_keys: list[str | None], instance_ids: list[str]
    ) -> set[str]:
        """The instances that got their business key (no active instance had it)."""
        rows = await self._conn.fetch(
            Q.claim_business_keys, process_keys, business_keys, instance_ids
        )
        return {str(row["instance_id"]) for row in rows}

    async def business_key_owners(
        self, process_keys: list[str], business_keys: list[str | None]
    ) -> dict[tuple[str, str | None], str]:
        """(process key, business key) -> the active instance that has it."""
        rows = await self._conn.fetch(Q.business_key_owners, process_keys, business_keys)
        return {(row["process_key"], row["business_key"]): str(row["instance_id"]) for row in rows}

    # --- reports ---------------------------------------------------------------------------

    async def lock_instances_of_tasks(
        self, task_ids: list[str]
    ) -> tuple[dict[str, InstanceRow], dict[str, InstanceState]]:
        """Lock the instances of these tasks, in id order, skipping those another session
        holds; their rows and states by instance id."""
        rows: dict[str, InstanceRow] = {}
        states: dict[str, InstanceState] = {}
        for record in await self._conn.fetch(Q.lock_instances_of_tasks, task_ids):
            rows[str(record["id"])] = InstanceRow.from_record(record)
            states[str(record["id"])] = state_from_record(record)
        return rows, states

    async def tasks_by_id(self, task_ids: list[str]) -> list[TaskRow]:
        return [TaskRow.from_record(row) for row in await self._conn.fetch(Q.tasks_by_id, task_ids)]

    async def ledger_entries(self, task_ids: list[str]) -> dict[tuple[str, str], LedgerEntry]:
        """The report ledger of these tasks, by (task id, slot)."""
        return {
            (str(row["task_id"]), row["slot"]): LedgerEntry(
                row["kind"], row["attempt"], row["payload_hash"]
            )
            for row in await self._conn.fetch(Q.ledger_for_tasks, task_ids)
        }

    # --- the reaper and the dispatch watch -------------------------------------------------

    async def lock_due_tasks(self, limit: int) -> Sequence[Row]:
        """Expired leases and due retries, each locked with its instance (SKIP LOCKED): task
        columns with the instance's process_key, business_key, variables, definition_id."""
        rows: Sequence[Row] = await self._conn.fetch(Q.lock_due_tasks, limit)
        return rows

    async def queued_topics(self) -> list[QueuedTopic]:
        return [
            QueuedTopic(row["topic"], row["oldest_ms"])
            for row in await self._conn.fetch(Q.queued_topics)
        ]

    async def outbox_lapsed(self) -> bool:
        """Whether any task message waits in the outbox past its engine's claim."""
        return bool(await self._conn.fetchval(Q.outbox_lapsed))

    async def lock_undispatched_tasks(self, topic: str, floor_ms: int, limit: int) -> Sequence[Row]:
        """Queued tasks of `topic` whose message went out long enough ago, each locked with
        its instance (SKIP LOCKED): as lock_due_tasks, with waited_ms and redispatches."""
        rows: Sequence[Row] = await self._conn.fetch(
            Q.lock_undispatched_tasks, topic, floor_ms, limit
        )
        return rows

    async def lock_due_start_timers(self, now: datetime, limit: int) -> Sequence[Row]:
        """Timer start events due by `now` (SKIP LOCKED)."""
        rows: Sequence[Row] = await self._conn.fetch(Q.lock_due_start_timers, now, limit)
        return rows

    async def reschedule_start_timer(self, timer_id: str, fired: int, due: datetime) -> None:
        await self._conn.execute(Q.reschedule_start_timer, timer_id, fired, due)

    async def delete_start_timer(self, timer_id: str) -> None:
        await self._conn.execute(Q.delete_start_timer, timer_id)

    async def replace_start_timers(self, process_key: str, rows: list[tuple[Any, ...]]) -> None:
        """The timer start events of a newly deployed version: (id, definition_id, key,
        version, node_id, kind, spec, due_at) each; the key's older rows go."""
        await self._conn.execute(Q.forget_start_timers, process_key)
        if rows:
            await self._conn.executemany(Q.add_start_timer, rows)

    async def lock_due_timers(self, now: datetime, limit: int) -> Sequence[Row]:
        """Timers due by `now`, earliest first, each locked with its instance (SKIP LOCKED):
        timer_id, timer_node, kind, spec, due_at, fired, and the instance's columns (as
        lock_instance: state_from_record reads them)."""
        rows: Sequence[Row] = await self._conn.fetch(Q.lock_due_timers, now, limit)
        return rows

    async def instances_with_busy_tasks(self, instance_ids: list[str]) -> set[str]:
        """Lock the open tasks of these (locked) instances, SKIP LOCKED; the instances one of
        whose open tasks another session holds."""
        rows = await self._conn.fetch(Q.lock_open_tasks_of_instances, instance_ids)
        return {str(row["instance_id"]) for row in rows}

    # --- operator actions ------------------------------------------------------------------

    async def lock_instance(self, instance_id: str) -> Row | None:
        row: Row | None = await self._conn.fetchrow(Q.lock_instance, instance_id)
        return row

    async def incident_by_id(self, incident_id: str) -> Row | None:
        row: Row | None = await self._conn.fetchrow(Q.incident_by_id, incident_id)
        return row

    async def open_incident_of_task(self, task_id: str | None) -> Row | None:
        row: Row | None = await self._conn.fetchrow(Q.open_incident_of_task, task_id)
        return row

    async def open_tasks_of_instance(self, instance_id: str) -> Sequence[Row]:
        rows: Sequence[Row] = await self._conn.fetch(Q.open_tasks_of_instance, instance_id)
        return rows

    async def open_incidents_of_instance(self, instance_id: str) -> Sequence[Row]:
        rows: Sequence[Row] = await self._conn.fetch(Q.open_incidents_of_instance, instance_id)
        return rows

    async def archive_outcome(self, task_id: str) -> None:
        """Move the task's recorded outcome to its attempt's slot (before a retry)."""
        await self._conn.execute(Q.archive_outcome, task_id)

    # --- messages --------------------------------------------------------------------------

    async def insert_message(
        self,
        message_id: str,
        name: str,
        correlation_key: str | None,
        variables: dict[str, Any],
        payload_hash: bytes,
        ttl_ms: int,
    ) -> bool:
        """Record a message as buffered for `ttl_ms`; False if its id was recorded before."""
        inserted = await self._conn.fetchval(
            Q.insert_message, message_id, name, correlation_key, variables, payload_hash, ttl_ms
        )
        return inserted is not None

    async def message_entry(self, message_id: str) -> MessageEntry | None:
        row = await self._conn.fetchrow(Q.message_entry, message_id)
        if row is None:
            return None
        instance_id = str(row["instance_id"]) if row["instance_id"] is not None else None
        return MessageEntry(row["payload_hash"], row["status"], instance_id)

    async def count_message_duplicate(self, message_id: str) -> None:
        await self._conn.execute(Q.count_message_duplicate, message_id)

    async def settle_message(self, message_id: str, status: str, instance_id: str | None) -> None:
        await self._conn.execute(Q.settle_message, message_id, status, instance_id)

    async def lock_subscriber(
        self, name: str, correlation_key: str | None
    ) -> tuple[str, InstanceRow, InstanceState] | None:
        """The oldest subscription to (name, key) whose instance no other session holds: its
        wait id, and its instance's row and state, locked."""
        record = await self._conn.fetchrow(Q.lock_subscriber, name, correlation_key)
        if record is None:
            return None
        return str(record["wait_id"]), InstanceRow.from_record(record), state_from_record(record)

    async def subscription_exists(self, name: str, correlation_key: str | None) -> bool:
        return bool(await self._conn.fetchval(Q.subscription_exists, name, correlation_key))

    async def lock_buffered_message(
        self, name: str, correlation_key: str | None
    ) -> tuple[str, dict[str, Any]] | None:
        """The oldest unexpired message buffered for (name, key), locked (SKIP LOCKED)."""
        row = await self._conn.fetchrow(Q.lock_buffered_message, name, correlation_key)
        return None if row is None else (row["message_id"], row["variables"])

    async def expire_messages(self, limit: int) -> int:
        return len(await self._conn.fetch(Q.expire_messages, limit))

    async def deliverable_messages(self, limit: int) -> list[tuple[str, str | None]]:
        rows = await self._conn.fetch(Q.deliverable_messages, limit)
        return [(row["name"], row["correlation_key"]) for row in rows]

    async def instance_subscriptions(self, instance_id: str) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(Q.instance_subscriptions, instance_id)
        return [plain(row) for row in rows]

    # --- operator reads (JSON-able) --------------------------------------------------------

    async def list_incidents(
        self, process_key: str | None, instance_id: str | None, include_resolved: bool, limit: int
    ) -> list[dict[str, Any]]:
        open_only = None if include_resolved else True
        return await self.web_incidents(process_key, instance_id, open_only, limit, 0)

    async def web_definitions(
        self, key: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.web_definitions, key, limit, offset)]

    async def web_definition(self, key: str, version: int) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(Q.web_definition, key, version)
        return None if row is None else plain(row)

    async def web_instances(
        self, filters: Sequence[Any], limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Instances newest first; `filters`: process key, version, state, business key,
        has an open incident, started at or after, started before (None: any)."""
        rows = await self._conn.fetch(Q.web_instances, *filters, limit, offset)
        return [plain(row) for row in rows]

    async def web_incidents(
        self,
        process_key: str | None,
        instance_id: str | None,
        open_: bool | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            Q.list_incidents, process_key, instance_id, open_, limit, offset
        )
        return [plain(row) for row in rows]

    async def instance_row(self, instance_id: str) -> Row | None:
        row: Row | None = await self._conn.fetchrow(Q.instance_row, instance_id)
        return row

    async def instance_tasks(self, instance_id: str) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.instance_tasks, instance_id)]

    async def instance_children(self, instance_id: str) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.instance_children, instance_id)]

    async def instance_timers(self, instance_id: str) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.instance_timers, instance_id)]

    async def instance_incidents(self, instance_id: str) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.instance_incidents, instance_id)]

    async def instance_history(self, instance_id: str) -> list[dict[str, Any]]:
        return [plain(row) for row in await self._conn.fetch(Q.instance_history, instance_id)]

    async def instance_counts(self, process_key: str | None) -> dict[str, int]:
        """Instances by status."""
        rows = await self._conn.fetch(Q.instance_counts, process_key)
        return {row["status"]: row["n"] for row in rows}

    async def open_incident_count(self, process_key: str | None) -> int:
        return int(await self._conn.fetchval(Q.open_incident_count, process_key))

    async def ledger_totals(self) -> tuple[Any, Any]:
        """Duplicate and conflicting reports, over the whole report ledger."""
        row = await self._conn.fetchrow(Q.ledger_totals)
        return row["duplicates"], row["conflicts"]

    async def counters(self) -> dict[str, int]:
        """Every engine counter, summed over the engines."""
        return {row["name"]: row["value"] for row in await self._conn.fetch(Q.counters)}


def _gone_silent(conn: asyncpg.Connection, exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | OSError | asyncpg.InterfaceError) or conn.is_closed()


async def _roll_back(conn: asyncpg.Connection, transaction: Any) -> None:
    try:
        await transaction.rollback()
    except Exception:  # the connection broke as well: the pool replaces it
        conn.terminate()
