"""A worker for the lease tests, run as a subprocess:
`python -m orchestrator worker tests.support.lease_workers:worker`.

Configured through the environment:

- LEASE_TOPIC: the topic to handle (default "lease").
- LEASE_DB_URL: where to record executions; one row per handler entry goes into
  LEASE_TABLE (default "lease_executions"), which the test creates with the columns
  (idempotency_key text, attempt integer, worker_pid integer, started_at timestamptz).
- LEASE_DELAY_S: how long each handler sleeps before completing (default 0).
- LEASE_CONCURRENCY: handlers running at once (default 10).
- LEASE_GRACE_S: how long a shutdown waits for running handlers (default 5).

A row is written when the handler starts (before it sleeps), with the database's clock, so a
test can compare it with the lease times in `tasks`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from workers import TaskContext, Worker

TOPIC = os.environ.get("LEASE_TOPIC", "lease")
DB_URL = os.environ.get("LEASE_DB_URL", "")
TABLE = os.environ.get("LEASE_TABLE", "lease_executions")
DELAY_S = float(os.environ.get("LEASE_DELAY_S", "0"))
CONCURRENCY = int(os.environ.get("LEASE_CONCURRENCY", "10"))
GRACE_S = float(os.environ.get("LEASE_GRACE_S", "5"))

if not TABLE.isidentifier():
    raise SystemExit(f"LEASE_TABLE must be a plain identifier, got {TABLE!r}")

_INSERT = (
    f"INSERT INTO {TABLE} (idempotency_key, attempt, worker_pid, started_at) "  # noqa: S608
    "VALUES ($1, $2, $3, clock_timestamp())"
)

worker = Worker("lease", claim_after_ms=20.0, shutdown_grace_s=GRACE_S)
_pool: asyncpg.Pool | None = None
_pool_lock: asyncio.Lock | None = None


async def _recorder() -> asyncpg.Pool:
    global _pool, _pool_lock
    if _pool_lock is None:
        _pool_lock = asyncio.Lock()
    async with _pool_lock:
        if _pool is None:
            if not DB_URL:
                raise RuntimeError("LEASE_DB_URL is not set")
            _pool = await asyncpg.create_pool(DB_URL, min_size=1, max_size=CONCURRENCY)
    return _pool


@worker.task(TOPIC, concurrency=CONCURRENCY)
async def handle(task: TaskContext) -> dict[str, Any]:
    pool = await _recorder()
    await pool.execute(_INSERT, task.idempotency_key, task.attempt, os.getpid())
    if DELAY_S > 0:
        await asyncio.sleep(DELAY_S)
    return {"done_by": os.getpid(), "attempt": task.attempt}
