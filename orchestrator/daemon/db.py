"""Running a unit of work in a transaction, waiting out a database that is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from orchestrator.store.queries import Q

log = logging.getLogger(__name__)
T = TypeVar("T")


class NeedsLocks(Exception):
    """Work tried in one autocommit statement needs the locked way after all: something in
    it is not known to this engine. Raised before anything is written."""


#: Errors after which the same transaction can simply be tried again.
RETRYABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # asyncpg's word for a connection the server dropped mid-operation.
    asyncpg.InternalClientError,
    # A statement over its time limit (an overloaded server): tried again, not dead-lettered.
    asyncpg.QueryCanceledError,
    # This engine sat idle inside a transaction (it was frozen) and the server ended it.
    asyncpg.IdleInTransactionSessionTimeoutError,
)

#: Errors that say the database cannot be reached, as against a conflict with another session.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,
    asyncpg.IdleInTransactionSessionTimeoutError,
)


class DatabaseAway(ConnectionError):
    """PostgreSQL has not answered for a while (see `in_transaction`). A ConnectionError, so
    every handler of RETRYABLE lets it pass instead of treating the work as faulty."""


#: Another session holds a row this work needs, past the session's lock timeout: the work is
#: set aside and tried again shortly, never waited on in line (see SessionLimits).
LockBusy = asyncpg.LockNotAvailableError


async def in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    stop: asyncio.Event | None = None,
    give_up_after_s: float | None = None,
) -> T:
    """Run `work` in a transaction; on a lost connection or a deadlock, wait and run it again.

    While the database is away the caller holds its messages unacked, so nothing is lost and
    nothing spins: the broker stops delivering once the prefetch window is full. With
    `give_up_after_s`, a database unreachable for that long since the first try raises
    DatabaseAway instead: the caller then gives its messages back to the broker, for the
    engines that can reach the database, and stops taking new ones until it answers again.
    """
    began = asyncio.get_running_loop().time()
    delay = 0.05
    while True:
        try:
            return await _once(pool, work)
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
                "database unavailable (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@asynccontextmanager
async def connection(
    pool: asyncpg.Pool, *, timeout: float | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection that is closed, not put back, when a call on it did not answer in
    time: it may have gone silent (a partition), and handing it back would wait on it again."""
    async with pool.acquire(timeout=timeout) as conn:
        try:
            yield conn
        except BaseException as exc:
            if _gone_silent(conn, exc):
                conn.terminate()
            raise


async def _once(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """One try, in a transaction; a rollback is only tried on a connection that answers."""
    async with connection(pool) as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            result = await work(conn)
        except BaseException as exc:
            if not _gone_silent(conn, exc):
                await _roll_back(conn, transaction)
            raise
        await transaction.commit()
        return result


def _gone_silent(conn: asyncpg.Connection, exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | OSError | asyncpg.InterfaceError) or conn.is_closed()


async def _roll_back(conn: asyncpg.Connection, transaction: Any) -> None:
    try:
        await transaction.rollback()
    except Exception:  # the connection broke as well: the pool replaces it
        conn.terminate()


async def database_answers(pool: asyncpg.Pool, *, timeout: float = 3.0) -> bool:
    """One quick question to PostgreSQL, on a connection of the pool, bounded in time."""
    try:
        async with connection(pool, timeout=timeout) as conn:
            await conn.fetchval(Q.ping, timeout=timeout)
    except RETRYABLE:
        return False
    return True
