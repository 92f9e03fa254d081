"""A process runs end to end: deploy, start, workers, gateway, completion, queries."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.demo import example_definition, example_yaml
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

    @worker.task("check-fraud")
    async def check_fraud(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"fraud_score": task.variables.get("fraud_score", 10)}

    @worker.task("charge-payment")
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"payment_id": task.idempotency_key}

    @worker.task("ship-order")
    async def ship(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.topic, task.attempt))
        return {"tracking": f"T-{task.business_key}"}

    return worker


ORDER_TOPICS = {"reserve-stock", "check-fraud", "charge-payment", "ship-order"}


async def test_order_runs_through_both_gateway_branches(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update(ORDER_TOPICS)
    seen: list[tuple[str, int]] = []
    worker = order_worker(settings, seen)
    async with running_engine(settings), running_worker(worker), Client(settings) as client:
        deployed = await client.deploy(example_definition())
        small = await client.start("order", business_key="o-1", variables={"quantity": 2})
        large = await client.start("order", business_key="o-2", variables={"quantity": 50})
        risky = await client.start(
            "order", business_key="o-3", variables={"quantity": 1, "fraud_score": 80}
        )

        async def all_done() -> bool:
            return (await instance_states(db, "order")).get("completed") == 3

        await wait_until(all_done, timeout=15, what="the three orders to complete")
        shipped = await client.get_instance(small.instance_id)
        refused = await client.get_instance(large.instance_id)
        fraud = await client.get_instance(risky.instance_id)

    assert deployed["version"] == 1
    assert shipped["state"] == "completed"
    assert shipped["variables"]["tracking"] == "T-o-1"
    charge = next(t for t in shipped["tasks"] if t["node_id"] == "charge_payment")
    assert shipped["variables"]["payment_id"] == charge["id"]
    # The fork creates reserve_stock and check_fraud together, in either order.
    nodes = [t["node_id"] for t in shipped["tasks"]]
    assert set(nodes[:2]) == {"reserve_stock", "check_fraud"}
    assert nodes[2:] == ["charge_payment", "ship_order"]
    assert shipped["open_tasks"] == []
    for ended in (refused, fraud):
        assert ended["state"] == "completed"
        assert {t["node_id"] for t in ended["tasks"]} == {"reserve_stock", "check_fraud"}
        assert any(h["kind"] == "end_event" and h["node_id"] == "refused" for h in ended["history"])
    assert sorted(seen) == sorted(
        [("reserve-stock", 1), ("check-fraud", 1)] * 3 + [("charge-payment", 1), ("ship-order", 1)]
    )


@pytest.mark.parametrize(
    ("form", "comment", "lock", "to_ship", "flow"),
    [
        (
            "bpmn",
            "<!-- a comment changes nothing -->",
            'orch:lock="{}"',
            'targetRef="{}"',
            'id="to_ship"',
        ),
        ("yaml", "# a comment changes nothing", "lock: {}", "to: {}", "flow 'to_ship'"),
    ],
)
async def test_deploy_is_versioned_by_content(
    settings: Settings,
    topics: set[str],
    form: str,
    comment: str,
    lock: str,
    to_ship: str,
    flow: str,
) -> None:
    topics.update(ORDER_TOPICS)
    source = example_definition() if form == "bpmn" else example_yaml()
    async with running_engine(settings), Client(settings) as client:
        first = await client.deploy(source)
        again = await client.deploy(source + f"\n{comment}\n")
        changed = await client.deploy(source.replace(lock.format("1m"), lock.format("2m")))
        with pytest.raises(DefinitionError) as invalid:
            await client.deploy(
                source.replace(to_ship.format("ship_order"), to_ship.format("nowhere"))
            )
        with pytest.raises(NotFound):
            await client.start("no-such-process")
    assert (first["version"], first["created"]) == (1, True)
    assert (again["version"], again["created"]) == (1, False)
    assert (changed["version"], changed["created"]) == (2, True)
    assert flow in str(invalid.value)
    assert "nowhere" in str(invalid.value)
