"""Durable timers against the real services: they fire once, promptly, on any engine."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.model.wire import Completed
from tests.support.harness import (
    hang_until_cancelled,
    instance_states,
    running_engine,
    running_worker,
    wait_until,
)
from tests.support.raw_worker import RawWorker
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration
TIMEOUT = 15.0


def _flows(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in pairs]


def _definition(key: str, nodes: list[dict[str, Any]], *pairs: tuple[str, str]) -> bytes:
    return orjson.dumps({"key": key, "nodes": nodes, "flows": _flows(*pairs)})


def _timer(kind: str, value: str) -> dict[str, str]:
    return {"kind": kind, "value": value}


def catch_process(key: str, timer: dict[str, str]) -> bytes:
    """start -> wait (a timer catch event) -> end."""
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "wait", "type": "timer_catch_event", "timer": timer},
        {"id": "e", "type": "end_event"},
    ]
    return _definition(key, nodes, ("s", "wait"), ("wait", "e"))


def boundary_process(
    key: str, topic: str, timer: dict[str, str], *, interrupting: bool, remind: str | None = None
) -> bytes:
    """start -> work (a task) -> done; a timer boundary event on work -> late (-> remind)."""
    nodes: list[dict[str, Any]] = [
        {"id": "s", "type": "start_event"},
        {"id": "work", "type": "service_task", "topic": topic},
        {"id": "done", "type": "end_event"},
        {
            "id": "late",
            "type": "timer_boundary_event",
            "attached_to": "work",
            "timer": timer,
            "interrupting": interrupting,
        },
    ]
    pairs = [("s", "work"), ("work", "done")]
    if remind is None:
        nodes.append({"id": "timed_out", "type": "end_event"})
        pairs.append(("late", "timed_out"))
    else:
        nodes += [
            {"id": "remind", "type": "service_task", "topic": remind},
            {"id": "reminded", "type": "end_event"},
        ]
        pairs += [("late", "remind"), ("remind", "reminded")]
    return _definition(key, nodes, *pairs)


async def _history(db: asyncpg.Pool, instance_id: str, kind: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT at, node_id, detail FROM history WHERE instance_id = $1 AND kind = $2 "
            "ORDER BY id",
            instance_id,
            kind,
        )
    )


async def _completed(db: asyncpg.Pool, key: str, count: int) -> None:
    async def done() -> bool:
        return (await instance_states(db, key)).get("completed") == count

    await wait_until(done, timeout=TIMEOUT, what=f"{count} instances of {key} to complete")


async def test_a_timer_catch_event_fires_once_and_promptly(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(catch_process("wait", _timer("duration", "PT0.2S")))
        started = await client.start("wait")
        pending = await client.get_instance(started.instance_id)
        await _completed(db, "wait", 1)
        instance = await client.get_instance(started.instance_id)
        stats = await client.stats()
    (timer,) = pending["timers"] or [None]
    assert timer is not None and timer["node_id"] == "wait" and timer["fired"] == 0
    kinds = [h["kind"] for h in instance["history"]]
    assert kinds.count("timer_fired") == 1 and kinds.count("end_event") == 1
    (fired,) = await _history(db, started.instance_id, "timer_fired")
    due = datetime.fromisoformat(timer["due_at"])
    assert fired["detail"]["due_at"] == due.isoformat()
    # The history's clock is the database's (the firing transaction's start).
    lag = (fired["at"] - due).total_seconds()
    print(f"\ntimer fired {lag * 1000:.1f} ms after it was due")
    assert 0 <= lag < 1.0
    assert instance["timers"] == []
    assert await db.fetchval("SELECT count(*) FROM timers") == 0
    assert stats["counters"].get("timers_fired") == 1


async def test_an_interrupting_boundary_timer_withdraws_the_task_and_revokes_its_holder(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("slow-work")
    worker = Worker("slow", settings=settings, claim_after_ms=0)
    hanging = hang_until_cancelled(worker, "slow-work")
    running, stopped = hanging.running, hanging.stopped

    definition = boundary_process(
        "deadline", "slow-work", _timer("duration", "PT1S"), interrupting=True
    )
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(definition)
        async with running_worker(worker):
            started = await client.start("deadline")
            await asyncio.wait_for(running.wait(), TIMEOUT)
            await asyncio.wait_for(stopped.wait(), TIMEOUT)
        await _completed(db, "deadline", 1)
        instance = await client.get_instance(started.instance_id)
        (task,) = instance["tasks"]
        async with RawWorker(settings) as raw:
            await raw.report(Completed(task_id=task["id"], attempt=1, worker_id="late"))
            (answer,) = await raw.wait_for_notices(1, "the answer to a late completion")
        after = await client.get_instance(started.instance_id)
    assert task["status"] == "cancelled"
    ends = [h["node_id"] for h in instance["history"] if h["kind"] == "end_event"]
    fired = [h["node_id"] for h in instance["history"] if h["kind"] == "boundary_fired"]
    assert fired == ["late"] and ends == ["timed_out"]
    assert after["history"] == instance["history"]
    # Applied nowhere: the task was withdrawn, its instance went the boundary's way.
    assert answer.type == "report_answer" and answer.status in ("cancelled", "closed")
    assert await db.fetchval("SELECT tokens FROM process_instances") == []
    assert await db.fetchval("SELECT count(*) FROM timers") == 0


async def test_a_non_interrupting_cycle_reminds_three_times_and_the_task_completes(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.update({"long-work", "remind"})
    worker = Worker("cycle", settings=settings)
    reminders: list[str] = []

    @worker.task("long-work")
    async def long_work(task: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(3.6)  # the cycle's three turns come at 1, 2 and 3 s
        return {"worked": True}

    @worker.task("remind")
    async def remind(task: TaskContext) -> dict[str, Any]:
        reminders.append(task.info.task_id)
        return {}

    definition = boundary_process(
        "remind", "long-work", _timer("cycle", "R3/PT1S"), interrupting=False, remind="remind"
    )
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(definition)
        async with running_worker(worker):
            started = await client.start("remind")
            await _completed(db, "remind", 1)
            instance = await client.get_instance(started.instance_id)
    fired = [h for h in instance["history"] if h["kind"] == "boundary_fired"]
    assert len(fired) == 3 and len(reminders) == 3
    work = [t for t in instance["tasks"] if t["node_id"] == "work"]
    assert [t["status"] for t in work] == ["completed"]
    assert instance["variables"].get("worked") is True
    assert await db.fetchval("SELECT count(*) FROM timers") == 0


async def test_an_event_based_gateway_takes_the_first_timer_and_drops_the_other(
    settings: Settings, db: asyncpg.Pool
) -> None:
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "gw", "type": "event_based_gateway"},
        {"id": "soon", "type": "timer_catch_event", "timer": _timer("duration", "PT0.2S")},
        {"id": "later", "type": "timer_catch_event", "timer": _timer("duration", "PT10S")},
        {"id": "e1", "type": "end_event"},
        {"id": "e2", "type": "end_event"},
    ]
    pairs = [("s", "gw"), ("gw", "soon"), ("gw", "later"), ("soon", "e1"), ("later", "e2")]
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(_definition("race", nodes, *pairs))
        started = await client.start("race")
        pending = await client.get_instance(started.instance_id)
        await _completed(db, "race", 1)
        instance = await client.get_instance(started.instance_id)
    assert sorted(t["node_id"] for t in pending["timers"]) == ["later", "soon"]
    chosen = [h["detail"] for h in instance["history"] if h["kind"] == "event_chosen"]
    assert chosen == [{"event": "soon"}]
    assert instance["timers"] == []
    assert await db.fetchval("SELECT count(*) FROM timers") == 0


async def test_two_engines_fire_2000_timers_due_in_the_same_second_once_each(
    settings: Settings, db: asyncpg.Pool
) -> None:
    count = 2000
    # Room for the 2,000 starts first (about 3 s here alone, more with the suite around it).
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    definition = catch_process("burst", _timer("date", due.isoformat()))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(definition)
        await asyncio.gather(*(client.start("burst") for _ in range(count)))
        waiting = await db.fetchval("SELECT count(*) FROM timers")
        assert waiting == count, f"only {waiting} timers wait: the starts ran past {due}"

        async def all_done() -> bool:
            return (await instance_states(db, "burst")).get("completed") == count

        await wait_until(all_done, timeout=30, what="every timer to fire")
    rows = await db.fetch(
        "SELECT instance_id, count(*) AS n, max(at) AS at FROM history "
        "WHERE kind = 'timer_fired' GROUP BY 1"
    )
    assert len(rows) == count and {r["n"] for r in rows} == {1}
    last = max(r["at"] for r in rows)
    spread = (last - due).total_seconds()
    print(f"{count} timers due at once: the last fired {spread * 1000:.0f} ms after due")
    assert spread < 5.0
    fired = await db.fetchval("SELECT sum(value) FROM engine_counters WHERE name = 'timers_fired'")
    assert fired == count
    per_engine = await db.fetch(
        "SELECT engine_id, value FROM engine_counters WHERE name = 'timers_fired'"
    )
    print("fired per engine:", sorted(r["value"] for r in per_engine))


async def test_a_timer_racing_the_completion_takes_exactly_one_path(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add("racing")
    worker = Worker("racer", settings=settings)

    @worker.task("racing", concurrency=32)
    async def racing(task: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(task.variables["sleep"])
        return {"finished": True}

    count = 20
    definition = boundary_process("racy", "racing", _timer("duration", "PT1S"), interrupting=True)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(definition)
        await stack.enter_async_context(running_worker(worker))
        started = await asyncio.gather(
            *(client.start("racy", variables={"sleep": 0.9 + 0.01 * n}) for n in range(count))
        )
        await wait_until(
            lambda: _all_ended(db, "racy", count), timeout=30, what="every race to end"
        )
    paths = {"done": 0, "timed_out": 0}
    for one in started:
        ended = await db.fetch(
            "SELECT node_id FROM history WHERE instance_id = $1 AND kind = 'end_event'",
            one.instance_id,
        )
        reached = await db.fetch(
            "SELECT kind, node_id FROM history WHERE instance_id = $1 "
            "AND (kind = 'boundary_fired' OR kind = 'task_completed')",
            one.instance_id,
        )
        assert len(ended) == 1, ended
        assert len(reached) == 1, reached
        path = "timed_out" if reached[0]["kind"] == "boundary_fired" else "done"
        assert ended[0]["node_id"] == path
        paths[path] += 1
    print("race outcomes:", paths)
    assert await db.fetchval("SELECT count(*) FROM timers") == 0
    tokens = await db.fetch("SELECT tokens FROM process_instances WHERE tokens <> '[]'")
    assert tokens == []


async def _all_ended(db: asyncpg.Pool, key: str, count: int) -> bool:
    states = await instance_states(db, key)
    return states.get("completed", 0) == count


async def test_a_timer_due_while_no_engine_runs_fires_once_on_the_next(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(catch_process("later", _timer("duration", "PT1S")))
        started = await client.start("later")
    assert await db.fetchval("SELECT count(*) FROM timers") == 1
    await asyncio.sleep(1.5)  # due while no engine runs
    assert (await instance_states(db, "later")) == {"active": 1}
    async with running_engine(settings), Client(settings) as client:
        await _completed(db, "later", 1)
        instance = await client.get_instance(started.instance_id)
    kinds = [h["kind"] for h in instance["history"]]
    assert kinds.count("timer_fired") == 1 and kinds.count("end_event") == 1
    assert await db.fetchval("SELECT count(*) FROM timers") == 0
