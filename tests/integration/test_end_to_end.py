"""A process runs end to end: deploy, start, workers, gateway, completion, queries."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.demo import example_definition
from orchestrator.errors import DefinitionError, NotFound
from tests.support.harness import instance_states, running_engine, running_worker, wait_until
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration


def order_worker(settings: Settings, seen: list[tuple[str, int]]) -> Worker:
    worker = Worker("e2e", settings=settings)

    @worker.task("reserve-stock")
    async def reserve(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"reserved": task.variables["quantity"] <= 10}

    @worker.task("charge-payment")
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"payment_id": task.idempotency_key}

    @worker.task("ship-order")
    async def ship(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"tracking": f"T-{task.business_key}"}

    return worker


async def test_order_runs_through_both_gateway_branches(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update({"reserve-stock", "charge-payment", "ship-order"})
    seen: list[tuple[str, int]] = []
    worker = order_worker(settings, seen)
    async with running_engine(settings), running_worker(worker), Client(settings) as client:
        deployed = await client.deploy(example_definition())
        small = await client.start("order", business_key="o-1", variables={"quantity": 2})
        large = await client.start("order", business_key="o-2", variables={"quantity": 50})

        async def both_done() -> bool:
            return (await instance_states(db, "order")).get("completed") == 2

        await wait_until(both_done, timeout=15, what="both orders to complete")
        shipped = await client.get_instance(small.instance_id)
        refused = await client.get_instance(large.instance_id)

    assert deployed["version"] == 1
    assert shipped["state"] == "completed"
    assert shipped["variables"]["tracking"] == "T-o-1"
    assert shipped["variables"]["payment_id"] == shipped["tasks"][1]["id"]
    assert [t["node_id"] for t in shipped["tasks"]] == [
        "reserve_stock",
        "charge_payment",
        "ship_order",
    ]
    assert shipped["open_tasks"] == []
    assert refused["state"] == "completed"
    assert [t["node_id"] for t in refused["tasks"]] == ["reserve_stock"]
    assert any(
        h["kind"] == "end_event" and h["node_id"] == "out_of_stock" for h in refused["history"]
    )
    assert sorted(seen) == sorted(
        [("reserve-stock", 1)] * 2 + [("charge-payment", 1), ("ship-order", 1)]
    )


async def test_deploy_is_versioned_by_content(settings: Settings, topics: set[str]) -> None:
    topics.update({"reserve-stock", "charge-payment", "ship-order"})
    source = example_definition()
    async with running_engine(settings), Client(settings) as client:
        first = await client.deploy(source)
        again = await client.deploy(source + "\n# a comment changes nothing\n")
        changed = await client.deploy(source.replace("lock: 1m", "lock: 2m"))
        with pytest.raises(DefinitionError) as invalid:
            await client.deploy(source.replace("to: ship_order", "to: nowhere"))
        with pytest.raises(NotFound):
            await client.start("no-such-process")
    assert (first["version"], first["created"]) == (1, True)
    assert (again["version"], again["created"]) == (1, False)
    assert (changed["version"], changed["created"]) == (2, True)
    assert "flow 'to_ship'" in str(invalid.value)
    assert "nowhere" in str(invalid.value)
