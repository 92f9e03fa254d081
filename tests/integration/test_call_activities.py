"""Call activities against the real services: mappings both ways, errors thrown to the
caller, a child that cannot start, and cancellation of the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.errors import InvalidState
from tests.support.harness import running_engine, running_worker, wait_until
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "bpmn"


def child_worker(settings: Settings) -> Worker:
    worker = Worker("children", settings=settings)

    @worker.task("child-work", concurrency=8)
    async def work(task: TaskContext) -> dict[str, Any]:
        return {"result": f"done-{task.variables.get('id')}"}

    return worker


async def status_of(db: Any, instance_id: str) -> str:
    return str(await db.fetchval("SELECT status FROM process_instances WHERE id = $1", instance_id))


async def test_a_called_process_runs_and_maps_variables_in_and_out(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.add("child-work")
    async with (
        running_engine(settings),
        Client(settings) as client,
        running_worker(child_worker(settings)),
    ):
        deployed = await client.deploy_file(DATA / "call_activity_c8.bpmn")
        assert sorted(d["process_key"] for d in deployed["deployed"]) == ["child-c8", "parent-c8"]
        parent = (await client.start("parent-c8", variables={"orderId": "o-1"})).instance_id

        async def completed() -> bool:
            return await status_of(db, parent) == "completed"

        await wait_until(completed, timeout=30, what="the parent to complete")
        seen = await client.get_instance(parent)
    variables = seen["variables"]
    assert variables["childResult"] == "done-o-1"  # the mapped call: only its output came back
    assert variables["result"] == "done-None"  # the propagate-all call: the child saw no id
    assert [c["process_key"] for c in seen["children"]] == ["child-c8", "child-c8"]
    assert {c["state"] for c in seen["children"]} == {"completed"}
    child_parents = await db.fetch(
        "SELECT parent_id FROM process_instances WHERE process_key = 'child-c8'"
    )
    assert {str(r["parent_id"]) for r in child_parents} == {parent}


def yaml(key: str, nodes: list[dict[str, Any]], flows: list[tuple[str, str]]) -> str:
    return orjson.dumps(
        {
            "key": key,
            "nodes": nodes,
            "flows": [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in flows],
        }
    ).decode()


CALLER = yaml(
    "caller",
    [
        {"id": "s", "type": "start_event"},
        {"id": "call", "type": "call_activity", "called_element": "thrower"},
        {"id": "caught", "type": "error_boundary_event", "attached_to": "call",
         "error_code": "NO_STOCK", "code_variable": "why"},
        {"id": "ok", "type": "end_event"},
        {"id": "handled", "type": "end_event"},
    ],
    [("s", "call"), ("call", "ok"), ("caught", "handled")],
)  # fmt: skip
THROWER = yaml(
    "thrower",
    [
        {"id": "s", "type": "start_event"},
        {"id": "boom", "type": "error_end_event", "error_code": "NO_STOCK"},
    ],
    [("s", "boom")],
)


async def test_an_error_thrown_in_the_child_is_caught_on_the_call_activity(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(CALLER)
        parent = (await client.start("caller")).instance_id

        async def failed_to_start() -> bool:
            return bool(await client.incidents(instance_id=parent))

        # The called process is not deployed yet: the call's task holds an incident.
        await wait_until(failed_to_start, timeout=20, what="the failed call's incident")
        incident = (await client.incidents(instance_id=parent))[0]
        assert "could not start" in incident["message"]
        await client.deploy(THROWER)
        await client.retry(incident_id=incident["id"])

        async def completed() -> bool:
            return await status_of(db, parent) == "completed"

        await wait_until(completed, timeout=20, what="the caller to catch the child's error")
        seen = await client.get_instance(parent)
    assert seen["variables"]["why"] == "NO_STOCK"
    assert any(h["kind"] == "end_event" and h["node_id"] == "handled" for h in seen["history"])
    assert seen["children"][0]["state"] == "cancelled"


async def test_cancelling_the_caller_cancels_its_child_and_the_child_alone_is_refused(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.add("child-work")  # no worker: the child waits at its task
    async with running_engine(settings), Client(settings) as client:
        await client.deploy_file(DATA / "call_activity_c8.bpmn")
        parent = (await client.start("parent-c8", variables={"orderId": "o-2"})).instance_id

        async def child_waits() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM tasks t JOIN process_instances i ON i.id = t.instance_id"
                " WHERE i.parent_id = $1 AND t.status = 'queued'",
                parent,
            )
            return bool(count == 1)

        await wait_until(child_waits, timeout=20, what="the child to wait at its task")
        child = str(
            await db.fetchval("SELECT id FROM process_instances WHERE parent_id = $1", parent)
        )
        with pytest.raises(InvalidState, match="started by a call activity"):
            await client.cancel(child)
        await client.cancel(parent, reason="test")

        async def child_cancelled() -> bool:
            return await status_of(db, child) == "cancelled"

        await wait_until(child_cancelled, timeout=20, what="the child to be cancelled")
    child_tasks = await db.fetch("SELECT status FROM tasks WHERE instance_id = $1", child)
    assert [r["status"] for r in child_tasks] == ["cancelled"]
