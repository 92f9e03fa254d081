"""The engine dies (kill -9) or runs twice: no task is lost and nothing is applied twice."""

from __future__ import annotations

import asyncio
import signal
import uuid

import asyncpg
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.harness import Processes, instance_states, sequential_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def start_many(settings: Settings, key: str, count: int) -> list[str]:
    async with Client(settings, name="fault-test-starter") as client:
        started = []
        for chunk in range(0, count, 100):
            started += await asyncio.gather(
                *(
                    client.start(key, idempotency_key=f"{key}-{i}", variables={"i": i})
                    for i in range(chunk, min(chunk + 100, count))
                )
            )
    return [s.instance_id for s in started]


async def deploy(settings: Settings, key: str, topics: list[str]) -> None:
    async with Client(settings, name="fault-test-deployer") as client:
        await client.deploy(sequential_process(key, topics, lock="5s"))


STEPS = 3


async def three_step_workload(
    settings: Settings,
    topics: set[str],
    processes: Processes,
    prefix: str,
    *,
    engines: int,
    **engine_env: str,
) -> str:
    """Engines, a deployed 3-step process and two no-op worker processes; returns its key."""
    key = f"{prefix}-{uuid.uuid4().hex[:6]}"
    step_topics = [f"{key}-a", f"{key}-b", f"{key}-c"]
    topics.update(step_topics)
    for _ in range(engines):
        processes.engine(**engine_env)
    await deploy(settings, key, step_topics)
    for _ in range(2):
        processes.worker("tests.noop_workers:worker", TEST_TOPICS=",".join(step_topics))
    return key


async def completed(db: asyncpg.Pool, key: str) -> int:
    return (await instance_states(db, key)).get("completed", 0)


async def assert_each_applied_once(db: asyncpg.Pool, key: str, count: int, steps: int) -> None:
    states = await instance_states(db, key)
    assert states == {"completed": count}
    per_task = await db.fetch(
        "SELECT t.id, count(h.id) AS n FROM tasks t LEFT JOIN history h "
        "ON h.task_id = t.id AND h.kind = 'task_completed' GROUP BY t.id"
    )
    assert len(per_task) == count * steps
    assert {row["n"] for row in per_task} == {1}, "a completion was applied twice or lost"
    ends = await db.fetch(
        "SELECT instance_id, count(*) AS n FROM history WHERE kind = 'end_event' "
        "GROUP BY instance_id"
    )
    assert len(ends) == count and {row["n"] for row in ends} == {1}
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE status <> 'completed'") == 0


@pytest.mark.timeout(240)
async def test_engine_killed_repeatedly_loses_nothing(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    count = 300
    # First engine: dies right after committing a report batch, before publishing its outbox.
    key = await three_step_workload(
        settings,
        topics,
        processes,
        "kill",
        engines=1,
        ORCH_CRASH_AT="after_commit",
        ORCH_CRASH_AFTER="5",
    )
    crashing = processes.procs[0]
    # Starts keep coming while engines die: the client resends with the same idempotency key.
    starting = asyncio.create_task(start_many(settings, key, count))

    async def crashed() -> bool:
        return crashing.poll() is not None

    await wait_until(crashed, timeout=60, what=f"the crash point\n{processes.logs()}")
    assert crashing.returncode == 137
    # Second engine: killed with -9 half way through.
    victim = processes.engine()
    assert len(set(await starting)) == count

    async def some_progress() -> bool:
        return await completed(db, key) >= count // 2

    await wait_until(some_progress, timeout=60, what=f"progress\n{processes.logs()}")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    processes.engine()

    async def all_done() -> bool:
        return await completed(db, key) == count

    await wait_until(all_done, timeout=90, what=f"all instances\n{processes.logs()}")
    await assert_each_applied_once(db, key, count, STEPS)

    async def outbox_drained() -> bool:
        return await db.fetchval("SELECT count(*) FROM outbox") == 0

    await wait_until(outbox_drained, timeout=15, what="the outbox to drain")


@pytest.mark.timeout(240)
async def test_two_engines_complete_each_instance_once(
    settings: Settings, db: asyncpg.Pool, topics: set[str], processes: Processes
) -> None:
    count = 1000
    key = await three_step_workload(settings, topics, processes, "twin", engines=2)
    await start_many(settings, key, count)

    async def all_done() -> bool:
        return await completed(db, key) == count

    await wait_until(all_done, timeout=120, what=f"all instances\n{processes.logs()}")
    await assert_each_applied_once(db, key, count, STEPS)
    engines = [p for p in processes.procs[:2]]
    assert all(p.poll() is None for p in engines), "an engine died"
