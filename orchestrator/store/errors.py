"""What can go wrong at the database, by the names the rest of the engine catches.

PostgreSQL's own errors keep their driver's classes (the names below are those classes, not
wrappers): nothing is converted on the hot path, and whoever catches one here catches it
everywhere.
"""

from __future__ import annotations

import asyncpg


class NeedsLocks(Exception):
    """Work tried in one autocommit statement needs the locked way after all: something in
    it is not known to this engine. Raised before anything is written."""


class DatabaseAway(ConnectionError):
    """PostgreSQL has not answered for a while (see `Store.in_transaction`). A
    ConnectionError, so every handler of RETRYABLE lets it pass instead of treating the work
    as faulty."""


#: A write found a row no longer at the version it was read at (or a concurrent
#: transaction's write): it wrote nothing.
SerializationError = asyncpg.SerializationError
#: A row with that key exists already (a task id a newer state of its instance used).
UniqueViolation = asyncpg.UniqueViolationError
#: PostgreSQL refused a value (a malformed id, say).
DataError = asyncpg.DataError
#: Any error PostgreSQL answered with.
DatabaseError = asyncpg.PostgresError

#: Another session holds a row this work needs, past the session's lock timeout: the work is
#: set aside and tried again shortly, never waited on in line (see SessionLimits).
LockBusy = asyncpg.LockNotAvailableError

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
