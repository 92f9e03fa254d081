"""RabbitMQ and PostgreSQL restart while instances are in flight: nothing is lost, nothing is
applied twice. Needs control of the local services (rabbitmqctl, pg_ctlcluster)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from orchestrator.config import Settings
from tests.harness import Processes, wait_until
from tests.integration.test_engine_faults import (
    STEPS,
    assert_each_applied_once,
    completed,
    start_many,
    three_step_workload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=60)


def restart_postgres() -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            versions[-1],
            "main",
            "restart",
            "-m",
            "fast",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def can_restart(tool: str) -> bool:
    if tool == "pg_ctlcluster" and not Path("/etc/postgresql").exists():
        return False
    return shutil.which(tool) is not None


async def tolerant(check: Callable[[], Awaitable[bool]]) -> bool:
    """A poll that treats the database being away as 'not yet'."""
    try:
        return await check()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


async def run_through_restart(
    settings: Settings,
    db: asyncpg.Pool,
    topics: set[str],
    processes: Processes,
    restart: Callable[[], None],
) -> None:
    count = 400
    key = await three_step_workload(settings, topics, processes, "restart", engines=2)
    starting = asyncio.create_task(start_many(settings, key, count))

    async def some_done() -> bool:
        return await completed(db, key) >= 20

    await wait_until(lambda: tolerant(some_done), timeout=60, what="first completions")
    await asyncio.to_thread(restart)
    assert len(set(await starting)) == count

    async def all_done() -> bool:
        return await completed(db, key) == count

    await wait_until(
        lambda: tolerant(all_done),
        timeout=120,
        what=f"all instances after the restart\n{processes.logs()}",
    )
    await assert_each_applied_once(db, key, count, STEPS)
    assert all(p.poll() is None for p in processes.procs), processes.logs()


@pytest.mark.timeout(300)
@pytest.mark.skipif(not can_restart("rabbitmqctl"), reason="needs a local RabbitMQ to restart")
async def test_rabbitmq_restart_under_load(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    await run_through_restart(settings, db, topics, processes, restart_rabbitmq)


@pytest.mark.timeout(300)
@pytest.mark.skipif(not can_restart("pg_ctlcluster"), reason="needs a local PostgreSQL to restart")
async def test_postgres_restart_under_load(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    await run_through_restart(settings, db, topics, processes, restart_postgres)
