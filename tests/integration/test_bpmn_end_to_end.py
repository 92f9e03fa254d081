"""BPMN files of both Camunda dialects, deployed and run to their end with simple workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.errors import DefinitionError
from tests.support.harness import running_engine, running_worker, wait_until
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "bpmn"


def simple_worker(settings: Settings) -> Worker:
    """One handler per topic of the test files: each returns what the next gateway needs."""
    worker = Worker("bpmn", settings=settings)
    answers: dict[str, Any] = {
        "reserve-stock": lambda v: {"reservation": True},
        "approve": lambda v: {"approved": True},
        "charge-card": lambda v: {"charged": True},
        "ship": lambda v: {"shipped": True},
        "authorize": lambda v: {"authorized": True},
        "pack": lambda v: {"parcel": f"P-{v['item']}"},
        "print-label": lambda v: {"printed": True},
        "express": lambda v: {"express_done": True},
        "user-task": lambda v: {"approved": True},
        "approvals": lambda v: {"approved_by": "ann"},
    }
    for topic, answer in answers.items():

        async def handler(task: TaskContext, answer: Any = answer) -> dict[str, Any]:
            return dict(answer(task.variables))

        worker.task(topic, concurrency=8)(handler)
    return worker


CASES = [
    (
        "c7_order.bpmn",
        "order-c7",
        {"order": {"id": "o-1"}, "amount": 5000, "customer": {"type": "regular"}},
        {"reserved": True, "approved": True, "charged": True, "shipped": True},
    ),
    (
        "c8_order.bpmn",
        "order-c8",
        {"order": {"id": "o-2"}, "amount": 5000, "customer": {"type": "regular"}},
        {"reserved": True, "approved": True, "charged": True, "shipped": True},
    ),
    (
        "subprocess_and_mi.bpmn",
        "fulfilment",
        {"order": {"total": 10, "items": ["x", "y", "z"]}},
        {"authorized": True, "parcels": ["P-x", "P-y", "P-z"], "printed": True},
    ),
    ("inclusive.bpmn", "extras", {"gift": True, "shipping": "express"}, {"express_done": True}),
    ("user_task.bpmn", "approval-c7", {}, {"approved_by": "ann", "approved": True}),
    ("user_task_c8.bpmn", "approval-c8", {}, {"decision": True}),
]


async def test_modeler_files_of_both_dialects_run_to_their_end(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    topics.update(
        {"reserve-stock", "approve", "charge-card", "ship", "authorize", "pack", "print-label"}
    )
    topics.update({"express", "user-task", "approvals"})
    async with (
        running_engine(settings),
        Client(settings) as client,
        running_worker(simple_worker(settings)),
    ):
        started: dict[str, str] = {}
        for filename, key, variables, _ in CASES:
            deployed = await client.deploy_file(DATA / filename)
            assert [d["process_key"] for d in deployed["deployed"]] == [key]
            started[key] = (await client.start(key, variables=variables)).instance_id

        async def all_completed() -> bool:
            states = await db.fetch(
                "SELECT status FROM process_instances WHERE id = ANY($1::uuid[])",
                list(started.values()),
            )
            return [r["status"] for r in states] == ["completed"] * len(CASES)

        await wait_until(all_completed, timeout=60, what="every BPMN instance to complete")
        for _, key, _, expected in CASES:
            instance = await client.get_instance(started[key])
            got = {name: instance["variables"].get(name) for name in expected}
            assert got == expected, key


async def test_a_file_that_cannot_run_is_refused_whole_with_every_line(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        with pytest.raises(DefinitionError) as refused:
            await client.deploy_file(DATA / "unsupported_everything.bpmn")
        with pytest.raises(DefinitionError, match="DOCTYPE is not allowed"):
            await client.deploy_file(DATA / "billion_laughs.bpmn")
    problems = refused.value.problems
    assert len(problems) > 10 and all(p.startswith("line ") for p in problems)
    assert await db.fetchval("SELECT count(*) FROM process_definitions") == 0
