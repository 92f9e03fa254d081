"""SIGTERM to a worker: it stops taking tasks, finishes what it can within its grace period,
gives back the rest (dispatched again at once), and exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import asyncpg
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.integration.test_leases import EXECUTIONS_DDL
from tests.support.harness import (
    Processes,
    counter,
    instance_states,
    sequential_process,
    wait_until,
)

pytestmark = pytest.mark.integration
LEASE_WORKER = "tests.support.lease_workers:worker"


async def claimed(db: asyncpg.Pool, n: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'claimed'") >= n


async def exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


async def test_running_tasks_finish_within_the_grace_period(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    topic = "shutdown-finish"
    topics.add(topic)
    await db.execute(EXECUTIONS_DDL)
    processes.engine()
    async with Client(settings) as client:
        await client.deploy(sequential_process("shutdown_finish", [topic], lock="30s"))
        await asyncio.gather(*(client.start("shutdown_finish") for _ in range(3)))
    env = {"LEASE_TOPIC": topic, "LEASE_DB_URL": settings.database_url}
    worker = processes.worker(
        LEASE_WORKER, **env, LEASE_DELAY_S="1.5", LEASE_CONCURRENCY="3", LEASE_GRACE_S="10"
    )
    await wait_until(lambda: claimed(db, 3), timeout=20, what=f"claims\n{processes.logs()}")
    worker.send_signal(signal.SIGTERM)
    await wait_until(lambda: exited(worker), timeout=15, what="the worker to exit")
    assert worker.returncode == 0, processes.logs()
    assert await instance_states(db, "shutdown_finish") == {"completed": 3}
    attempts = await db.fetch("SELECT attempt FROM tasks")
    assert [row["attempt"] for row in attempts] == [1, 1, 1]
    assert await counter(db, "leases_expired") == 0


async def test_unfinished_tasks_are_given_back_and_run_again_at_once(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    topic = "shutdown-release"
    topics.add(topic)
    await db.execute(EXECUTIONS_DDL)
    processes.engine()
    async with Client(settings) as client:
        await client.deploy(sequential_process("shutdown_release", [topic], lock="60s"))
        await client.start("shutdown_release")
    env = {"LEASE_TOPIC": topic, "LEASE_DB_URL": settings.database_url}
    slow = processes.worker(LEASE_WORKER, **env, LEASE_DELAY_S="120", LEASE_GRACE_S="0.5")
    await wait_until(lambda: claimed(db, 1), timeout=20, what=f"a claim\n{processes.logs()}")
    slow.send_signal(signal.SIGTERM)
    await wait_until(lambda: exited(slow), timeout=15, what="the worker to exit")
    assert slow.returncode == 0, processes.logs()
    processes.worker(LEASE_WORKER, **env, LEASE_DELAY_S="0")

    async def done() -> bool:
        return (await instance_states(db, "shutdown_release")).get("completed") == 1

    # Far sooner than the 60 s lease: the release made the engine dispatch attempt 2 at once.
    await wait_until(done, timeout=15, what=f"attempt 2 to complete\n{processes.logs()}")
    task = await db.fetchrow("SELECT attempt, lease_expiries FROM tasks")
    assert (task["attempt"], task["lease_expiries"]) == (2, 0)
    kinds = await db.fetch("SELECT kind FROM history WHERE kind = 'task_released'")
    assert len(kinds) == 1
