"""Instances started by timer and message start events, and event subprocesses, against
the real services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import running_engine, wait_until

pytestmark = pytest.mark.integration


def definition(key: str, nodes: list[dict[str, Any]], flows: list[tuple[str, str]]) -> bytes:
    return orjson.dumps(
        {
            "key": key,
            "nodes": nodes,
            "flows": [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in flows],
            "business_key": {"unique": True, "on_duplicate": "reject"},
        }
    )


async def started_instances(db: Any, key: str) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT id, business_key, variables, status FROM process_instances"
            " WHERE process_key = $1 ORDER BY started_at",
            key,
        )
    )


async def test_a_message_start_event_starts_once_per_message_and_per_unique_key(
    settings: Settings, db: Any
) -> None:
    started = definition(
        "on-order",
        [
            {"id": "s", "type": "start_event", "message": {"name": "order-placed"}},
            {"id": "shipped", "type": "message_catch_event", "message": {"name": "shipped"}},
            {"id": "e", "type": "end_event"},
        ],
        [("s", "shipped"), ("shipped", "e")],
    )
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(started.decode())
        first = await client.correlate("order-placed", "A-1", variables={"n": 1}, message_id="m1")
        again = await client.correlate("order-placed", "A-1", variables={"n": 1}, message_id="m1")

        async def one_started() -> bool:
            return len(await started_instances(db, "on-order")) == 1

        await wait_until(one_started, timeout=15, what="the message to start an instance")
        # A second message for the same key while A-1 is active starts nothing: kept.
        other = await client.correlate("order-placed", "A-1", variables={"n": 2}, message_id="m2")
        second_key = await client.correlate("order-placed", "B-2", message_id="m3")

        async def two_started() -> bool:
            return len(await started_instances(db, "on-order")) == 2

        await wait_until(two_started, timeout=15, what="the second key's instance")
        found = await started_instances(db, "on-order")
    assert first["status"] == "started" and again["status"] == "duplicate"
    assert again["instance_id"] == first["instance_id"]
    assert other["status"] == "buffered" and second_key["status"] == "started"
    assert [str(r["id"]) for r in found] == [first["instance_id"], second_key["instance_id"]]
    assert [r["business_key"] for r in found] == ["A-1", "B-2"]
    assert found[0]["variables"] == {"n": 1}


async def test_a_timer_start_event_starts_an_instance_when_due_and_on_each_turn(
    settings: Settings, db: Any
) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    by_date = definition(
        "at-date",
        [
            {"id": "s", "type": "start_event", "timer": {"kind": "date", "value": soon}},
            {"id": "e", "type": "end_event"},
        ],
        [("s", "e")],
    )
    by_cycle = definition(
        "each-second",
        [
            {"id": "s", "type": "start_event", "timer": {"kind": "cycle", "value": "R2/PT1S"}},
            {"id": "e", "type": "end_event"},
        ],
        [("s", "e")],
    )
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(by_date.decode())
        await client.deploy(by_cycle.decode())

        async def all_started() -> bool:
            dated = await started_instances(db, "at-date")
            cycled = await started_instances(db, "each-second")
            return len(dated) == 1 and len(cycled) == 2

        await wait_until(all_started, timeout=15, what="timer start events to fire")
        left = await db.fetchval("SELECT count(*) FROM start_timers")
    assert left == 0  # a date fires once, R2 twice: then their rows go


async def test_an_interrupting_timer_event_subprocess_ends_the_process_work(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.add("never-done")
    process = definition(
        "with-deadline",
        [
            {"id": "s", "type": "start_event"},
            {"id": "work", "type": "service_task", "topic": "never-done"},
            {"id": "e", "type": "end_event"},
            {"id": "deadline", "type": "subprocess", "triggered_by_event": True},
            {"id": "d_start", "type": "start_event", "parent": "deadline",
             "timer": {"kind": "duration", "value": "PT1S"}},
            {"id": "d_end", "type": "end_event", "parent": "deadline"},
        ],
        [("s", "work"), ("work", "e"), ("d_start", "d_end")],
    )  # fmt: skip
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(process.decode())
        instance = (await client.start("with-deadline", business_key="d-1")).instance_id

        async def completed() -> bool:
            return (await started_instances(db, "with-deadline"))[0]["status"] == "completed"

        await wait_until(completed, timeout=15, what="the deadline to end the instance")
        tasks = await db.fetch("SELECT status FROM tasks WHERE instance_id = $1", instance)
    assert [r["status"] for r in tasks] == ["cancelled"]
