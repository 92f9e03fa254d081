"""Workers for the fault suite, run as subprocesses:
`python -m orchestrator worker tests.support.fault_workers:worker`.

Every handler run is recorded in the test's database (tables in SCHEMA, created by the test):

- `fault_runs`: one row per handler entry (the raw runs), finished when the handler is done.
- `fault_effects`: the task's effect, keyed by its idempotency key and applied with
  `INSERT ... ON CONFLICT DO NOTHING`, as a real service called with the key would; the
  run that applied it is marked `applied`, a later one finds it there.

So a test sees how many runs a task had (repeats are the price of at-least-once delivery)
and that its effect still happened once, and once per (instance, step): a completion the
engine applied twice would dispatch the next step twice, under another idempotency key.

Configured through the environment:

- FAULT_TOPICS: the topics to handle, comma-separated.
- FAULT_DB_URL: the test database.
- FAULT_CONCURRENCY: handlers running at once per topic (default 20).
- FAULT_MAX_DELAY_MS: a handler takes 0 to this long (default 150), the same for every run
  of a task (derived from its idempotency key), so a task is either always or never done
  before the worker's claim (after FAULT_CLAIM_AFTER_MS, default 20).
- FAULT_MIN_DELAY_MS: and at least this long (default 0).
- FAULT_GRACE_S: how long SIGTERM waits for running handlers (default 2).

A handler waits out a database that is away (up to DB_PATIENCE_S) instead of failing the task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from workers import TaskContext, Worker

T = TypeVar("T")
log = logging.getLogger(__name__)

TOPICS = [topic for topic in os.environ.get("FAULT_TOPICS", "").split(",") if topic]
DB_URL = os.environ.get("FAULT_DB_URL", "")
CONCURRENCY = int(os.environ.get("FAULT_CONCURRENCY", "20"))
MAX_DELAY_MS = int(os.environ.get("FAULT_MAX_DELAY_MS", "150"))
MIN_DELAY_MS = int(os.environ.get("FAULT_MIN_DELAY_MS", "0"))
CLAIM_AFTER_MS = float(os.environ.get("FAULT_CLAIM_AFTER_MS", "20"))
GRACE_S = float(os.environ.get("FAULT_GRACE_S", "2"))
DB_PATIENCE_S = 60.0
POOL_SIZE = 4

SCHEMA = """
CREATE TABLE fault_runs (
    run_id          uuid PRIMARY KEY,
    idempotency_key text        NOT NULL,
    instance_id     uuid        NOT NULL,
    node_id         text        NOT NULL,
    attempt         integer     NOT NULL,
    worker_pid      integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    applied         boolean
);
CREATE TABLE fault_effects (
    idempotency_key text PRIMARY KEY,
    instance_id     uuid        NOT NULL,
    node_id         text        NOT NULL,
    run_id          uuid        NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# Both statements are safe to repeat after a connection lost mid-statement.
_START_RUN = (
    "INSERT INTO fault_runs (run_id, idempotency_key, instance_id, node_id, attempt, worker_pid) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING"
)
_APPLY_EFFECT = """
WITH effect AS (
    INSERT INTO fault_effects (idempotency_key, instance_id, node_id, run_id)
    VALUES ($2, $3, $4, $1)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING run_id
)
UPDATE fault_runs SET finished_at = clock_timestamp(),
    applied = EXISTS (SELECT 1 FROM effect)
        OR EXISTS (SELECT 1 FROM fault_effects WHERE idempotency_key = $2 AND run_id = $1)
WHERE run_id = $1
"""

worker = Worker("fault", claim_after_ms=CLAIM_AFTER_MS, shutdown_grace_s=GRACE_S)
_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


def recorder_name(pid: int) -> str:
    """The application_name of a worker's recording connections: the harness waits for a
    killed worker's connections to be gone before it reads what that worker finished."""
    return f"fault-worker-{pid}"


async def _recorder() -> asyncpg.Pool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            if not DB_URL:
                raise RuntimeError("FAULT_DB_URL is not set")
            # Two short statements per run: a few connections serve many handlers, and the
            # suite's processes together stay well under PostgreSQL's max_connections.
            _pool = await asyncpg.create_pool(
                DB_URL,
                min_size=1,
                max_size=POOL_SIZE,
                server_settings={"application_name": recorder_name(os.getpid())},
            )
    return _pool


#: What a database that is restarting or unreachable raises; the same work is simply retried.
_AWAY = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
)


async def _patiently(operation: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run `operation`, retrying while the database is away (restarted, say)."""
    deadline = time.monotonic() + DB_PATIENCE_S
    delay = 0.05
    while True:
        try:
            return await operation(await _recorder())
        except _AWAY as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("recording database away (%s); retrying", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def delay_of(
    idempotency_key: str, max_delay_ms: int = MAX_DELAY_MS, min_delay_ms: int = MIN_DELAY_MS
) -> float:
    """Seconds the handler takes for this task: fixed per task, spread over
    min_delay_ms..max_delay_ms."""
    digest = int(uuid.UUID(idempotency_key).hex[:8], 16)
    spread = max(max_delay_ms - min_delay_ms, 0)
    return (min_delay_ms + digest % (spread + 1)) / 1000


async def handle(task: TaskContext) -> dict[str, Any]:
    info = task.info
    run_id = uuid.uuid4()
    key = task.idempotency_key
    await _patiently(
        lambda pool: pool.execute(
            _START_RUN, run_id, key, info.instance_id, info.node_id, info.attempt, os.getpid()
        )
    )
    await asyncio.sleep(delay_of(key))
    await _patiently(
        lambda pool: pool.execute(_APPLY_EFFECT, run_id, key, info.instance_id, info.node_id)
    )
    # The same for every run of the task, so a repeat is a duplicate and never a conflict.
    return {info.node_id: "done"}


for _topic in TOPICS:
    worker.task(_topic, concurrency=CONCURRENCY)(handle)
