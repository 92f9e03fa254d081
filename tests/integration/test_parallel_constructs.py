"""Parallel branches, loops and cancellation against the real services, with two engines."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import instance_states, running_engine, running_worker, wait_until
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration


def _flows(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in pairs]


def fork_join(key: str, topic: str) -> bytes:
    """start -> fork -> a, b, c -> join -> after -> end."""
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "fork", "type": "parallel_gateway"},
        *({"id": n, "type": "service_task", "topic": topic} for n in ("a", "b", "c")),
        {"id": "join", "type": "parallel_gateway"},
        {"id": "after", "type": "service_task", "topic": f"{topic}-after"},
        {"id": "e", "type": "end_event"},
    ]
    flows = _flows(
        ("s", "fork"), ("fork", "a"), ("fork", "b"), ("fork", "c"),
        ("a", "join"), ("b", "join"), ("c", "join"), ("join", "after"), ("after", "e"),
    )  # fmt: skip
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows})


async def test_a_join_fires_once_when_branches_finish_together_on_two_engines(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update({"branch", "branch-after"})
    worker = Worker("branches", settings=settings)

    @worker.task("branch", concurrency=64)
    async def branch(task: TaskContext) -> dict[str, Any]:
        return {f"done_{task.info.node_id}": True}

    @worker.task("branch-after")
    async def after(task: TaskContext) -> dict[str, Any]:
        return {"saw_all": all(task.variables.get(f"done_{n}") for n in "abc")}

    instances = 60
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_engine(settings))
        await stack.enter_async_context(running_engine(settings))
        client = await stack.enter_async_context(Client(settings))
        await client.deploy(fork_join("forks", "branch"))
        await stack.enter_async_context(running_worker(worker))
        for number in range(instances):
            await client.start("forks", business_key=f"f-{number}")

        async def all_done() -> bool:
            return (await instance_states(db, "forks")).get("completed") == instances

        await wait_until(all_done, timeout=60, what="every fork to join and complete")
    after_tasks = await db.fetch(
        "SELECT instance_id, count(*) AS n FROM tasks WHERE node_id = 'after' GROUP BY 1"
    )
    joins = await db.fetch(
        "SELECT instance_id, count(*) AS n FROM history WHERE kind = 'joined' GROUP BY 1"
    )
    assert len(after_tasks) == instances and {r["n"] for r in after_tasks} == {1}
    assert len(joins) == instances and {r["n"] for r in joins} == {1}
    saw = await db.fetch("SELECT variables->'saw_all' AS saw FROM process_instances")
    assert {r["saw"] for r in saw} == {True}


def loop_definition(key: str, topic: str) -> bytes:
    nodes = [
        {"id": "s", "type": "start_event"},
        {
            "id": "each",
            "type": "service_task",
            "topic": topic,
            "multi_instance": {
                "collection": "=items",
                "element_variable": "item",
                "output_collection": "results",
                "output_element": "=doubled",
            },
        },
        {"id": "e", "type": "end_event"},
    ]
    return orjson.dumps({"key": key, "nodes": nodes, "flows": _flows(("s", "each"), ("each", "e"))})


async def test_a_multi_instance_of_1000_elements_keeps_its_outputs_in_order(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.add("double")
    worker = Worker("loops", settings=settings)

    @worker.task("double", concurrency=64)
    async def double(task: TaskContext) -> dict[str, Any]:
        return {"doubled": task.variables["item"] * 2}

    items = list(range(1000))
    async with running_engine(settings), Client(settings) as client, running_worker(worker):
        await client.deploy(loop_definition("loop", "double"))
        started = await client.start("loop", variables={"items": items})

        async def done() -> bool:
            return (await instance_states(db, "loop")).get("completed") == 1

        await wait_until(done, timeout=90, what="the 1000-element loop to complete")
        instance = await client.get_instance(started.instance_id)
    assert instance["variables"]["results"] == [i * 2 for i in items]
    assert instance["variables"]["items"] == items
    count = await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'completed'")
    assert count == 1000


async def test_cancelling_withdraws_every_open_branch(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update({"never-done", "never-done-after"})
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(fork_join("stuck", "never-done"))
        started = await client.start("stuck")

        async def three_open() -> bool:
            return await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'queued'") == 3

        await wait_until(three_open, timeout=10, what="three open branches")
        seen = await client.get_instance(started.instance_id)
        result = await client.cancel(started.instance_id, reason="test")
    process_scope = seen["scopes"][0]
    assert process_scope["kind"] == "process"
    assert sorted(t["node_id"] for t in process_scope["tokens"]) == ["a", "b", "c"]
    statuses = await db.fetch(
        "SELECT status FROM tasks WHERE instance_id = $1", started.instance_id
    )
    assert [r["status"] for r in statuses] == ["cancelled"] * 3
    assert result["cancelled_tasks"] == 3
