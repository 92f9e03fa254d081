"""Running a unit of work in a transaction, waiting out a database that is away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

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

#: Another session holds a row this work needs, past the session's lock timeout: the work is
#: set aside and tried again shortly, never waited on in line (see SessionLimits).
LockBusy = asyncpg.LockNotAvailableError


async def in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    stop: asyncio.Event | None = None,
) -> T:
    """Run `work` in a transaction; on a lost connection or a deadlock, wait and run it again.

    While the database is away the caller holds its messages unacked, so nothing is lost and
    nothing spins: the broker stops delivering once the prefetch window is full.
    """
    delay = 0.05
    while True:
        try:
            return await _once(pool, work)
        except RETRYABLE as exc:
            if stop is not None and stop.is_set():
                raise
            log.warning(
                "database unavailable (%s: %s); retrying in %.2fs", type(exc).__name__, exc, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _once(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """One try. A connection whose answer did not come in time is closed at once: it may have
    gone silent (a partition), and a rollback on it would wait just as long again."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            result = await work(conn)
        except BaseException as exc:
            await _abandon(conn, transaction, exc)
            raise
        try:
            await transaction.commit()
        except BaseException as exc:
            await _abandon(conn, transaction, exc)
            raise
        return result


async def _abandon(conn: asyncpg.Connection, transaction: Any, exc: BaseException) -> None:
    if isinstance(exc, TimeoutError | OSError | asyncpg.InterfaceError) or conn.is_closed():
        conn.terminate()
        return
    try:
        await transaction.rollback()
    except Exception:  # the connection broke as well: the pool replaces it
        conn.terminate()
