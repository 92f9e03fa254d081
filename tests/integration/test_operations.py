"""When things go wrong: business errors, incidents and operator retry, cancel, heartbeats."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import ValidationError

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.errors import InvalidCommand, InvalidState, NotFound
from orchestrator.model.wire import BpmnErrorReport, Claimed, Completed
from tests.support.harness import (
    hang_until_cancelled,
    process_env,
    running_engine,
    running_worker,
    wait_until,
)
from tests.support.raw_worker import RawWorker
from workers import BpmnError, TaskContext, TaskFailure, Worker

pytestmark = pytest.mark.integration

CHARGE = "ops-charge"
SHIP = "ops-ship"
TIMEOUT = 15.0


def payment_process(*, lock: str = "30s", **charge_options: Any) -> str:
    """start -> charge -(DECLINED boundary)-> declined | charge -> ship -> shipped."""
    return orjson.dumps(
        {
            "key": "pay",
            "business_key": {"unique": True},
            "nodes": [
                {"id": "start", "type": "start_event"},
                {
                    "id": "charge",
                    "type": "service_task",
                    "topic": CHARGE,
                    "lock": lock,
                    "retry": {"max_attempts": 2, "initial_backoff_ms": 0},
                    **charge_options,
                },
                {
                    "id": "card_declined",
                    "type": "error_boundary_event",
                    "attached_to": "charge",
                    "error_code": "DECLINED",
                    "message_variable": "decline_reason",
                },
                {"id": "ship", "type": "service_task", "topic": SHIP},
                {"id": "shipped", "type": "end_event"},
                {"id": "declined", "type": "end_event"},
            ],
            "flows": [
                {"id": "f1", "from": "start", "to": "charge"},
                {"id": "f2", "from": "charge", "to": "ship"},
                {"id": "f3", "from": "ship", "to": "shipped"},
                {"id": "f4", "from": "card_declined", "to": "declined"},
            ],
        }
    ).decode()


@asynccontextmanager
async def payment_setup(
    settings: Settings, topics: set[str], worker: Worker | None = None, **options: Any
) -> AsyncIterator[Client]:
    """Engine, the payment process deployed, `worker` running (if any), and a client."""
    topics.update({CHARGE, SHIP})
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(payment_process(**options))
        if worker is None:
            yield client
            return
        async with running_worker(worker):
            yield client


def payment_worker(settings: Settings, **options: Any) -> Worker:
    """A worker whose ship step always succeeds; each test registers its own charge step."""
    worker = Worker("ops", settings=settings, **options)

    @worker.task(SHIP)
    async def ship(task: TaskContext) -> dict[str, Any]:
        return {"shipped": True}

    return worker


async def wait_for_state(client: Client, instance_id: str, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await client.get_instance(instance_id))
        return bool(found["state"] == state)

    await wait_until(reached, timeout=TIMEOUT, what=f"instance {instance_id} to be {state}")
    return found


async def wait_for_incident(client: Client, instance_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def raised() -> bool:
        found[:] = await client.incidents(instance_id=instance_id)
        return bool(found)

    await wait_until(raised, timeout=TIMEOUT, what=f"an incident on {instance_id}")
    (incident,) = found
    return incident


def history_kinds(instance: dict[str, Any]) -> list[str]:
    return [entry["kind"] for entry in instance["history"]]


# --- business errors -------------------------------------------------------------------------


async def test_business_error_goes_to_the_matching_boundary_event(
    settings: Settings, topics: set[str]
) -> None:
    worker = payment_worker(settings)

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        if task.variables["amount"] > 100:
            raise BpmnError("DECLINED", "over the limit", variables={"limit": 100})
        return {"charged": task.variables["amount"]}

    async with payment_setup(settings, topics, worker) as client:
        small = await client.start("pay", business_key="small", variables={"amount": 5})
        large = await client.start("pay", business_key="large", variables={"amount": 500})
        shipped = await wait_for_state(client, small.instance_id, "completed")
        declined = await wait_for_state(client, large.instance_id, "completed")

    assert shipped["variables"] == {"amount": 5, "charged": 5, "shipped": True}
    assert declined["variables"] == {
        "amount": 500,
        "limit": 100,
        "decline_reason": "over the limit",
    }
    assert [t["node_id"] for t in declined["tasks"]] == ["charge"]
    assert "error_caught" in history_kinds(declined)
    assert declined["incidents"] == []


async def test_unhandled_business_error_is_an_incident_an_operator_retries(
    settings: Settings, topics: set[str], db: asyncpg.Pool
) -> None:
    worker = payment_worker(settings)
    seen: list[tuple[int, str | None]] = []

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append((task.attempt, task.previous_error))
        if task.attempt == 1:
            raise BpmnError("FRAUD_SUSPECTED", "velocity check")
        return {"charged": True}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="b1", variables={"amount": 5})
        incident = await wait_for_incident(client, started.instance_id)
        retried = await client.retry(incident_id=incident["id"])
        done = await wait_for_state(client, started.instance_id, "completed")
        again = await client.retry(incident_id=incident["id"])
        with pytest.raises(NotFound):
            await client.retry(task_id=incident["task_id"])
        resolved = await client.incidents(instance_id=started.instance_id, include_resolved=True)

        # The first attempt's business error, delivered again: a duplicate, not a new incident.
        async with RawWorker(settings) as raw:
            await raw.report(
                BpmnErrorReport(
                    task_id=incident["task_id"],
                    attempt=1,
                    worker_id="replay",
                    code="FRAUD_SUSPECTED",
                    message="velocity check",
                )
            )
            (answer,) = await raw.wait_for_notices(1, "the answer to the replayed error")
        after_replay = await client.incidents(instance_id=started.instance_id)

    assert incident["kind"] == "unhandled_bpmn_error"
    assert "FRAUD_SUSPECTED" in incident["message"]
    assert incident["details"] == "velocity check"
    assert retried == {
        "incident_id": incident["id"],
        "task_id": incident["task_id"],
        "instance_id": started.instance_id,
        "attempt": 2,
        "already_retried": False,
    }
    assert again["already_retried"] is True
    assert seen == [(1, None), (2, "business error FRAUD_SUSPECTED")]
    assert done["variables"]["shipped"] is True
    assert [(i["id"], i["resolution"], i["attempt"]) for i in resolved] == [
        (incident["id"], "retried", 1)  # the attempt that raised it, not the task's latest
    ]
    assert answer.type == "report_answer" and answer.status == "duplicate"
    assert after_replay == []
    ledger = await db.fetchval(
        "SELECT duplicates FROM report_ledger WHERE task_id = $1 AND slot = 'outcome:1'",
        incident["task_id"],
    )
    assert ledger == 1


# --- retries, incidents, attempt information ---------------------------------------------------


async def test_exhausted_retries_raise_an_incident_and_retry_grants_more(
    settings: Settings, topics: set[str]
) -> None:
    worker = payment_worker(settings)
    seen: list[tuple[int, int, str | None]] = []

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append((task.attempt, task.retries_left, task.previous_error))
        if task.attempt < 4:
            raise TaskFailure(f"gateway down #{task.attempt}", details="trace")
        return {"charged": True}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="r1", variables={"amount": 5})
        incident = await wait_for_incident(client, started.instance_id)
        retried = await client.retry(task_id=incident["task_id"], retries=2)
        done = await wait_for_state(client, started.instance_id, "completed")

    assert incident["kind"] == "failed_task"
    assert incident["message"].startswith("gateway down #2")
    assert incident["attempt"] == 2
    assert retried["attempt"] == 3
    assert seen == [
        (1, 1, None),
        (2, 0, "gateway down #1"),
        (3, 1, "gateway down #2"),
        (4, 0, "gateway down #3"),
    ]
    assert done["state"] == "completed"
    assert history_kinds(done).count("task_failed") == 3
    assert "task_retried" in history_kinds(done)


async def test_retry_refuses_what_it_cannot_retry(settings: Settings, topics: set[str]) -> None:
    async with payment_setup(settings, topics) as client:
        await client.start("pay", business_key="x", variables={})
        with pytest.raises(NotFound):
            await client.retry(incident_id="00000000-0000-0000-0000-000000000000")
        async with RawWorker(settings) as raw:
            task = await raw.take(CHARGE)
        with pytest.raises(NotFound, match="no open incident"):
            await client.retry(task_id=task.task_id)
        with pytest.raises(InvalidCommand):
            await client.retry()


async def test_late_completion_after_a_lease_incident_settles_it(
    settings: Settings, topics: set[str]
) -> None:
    async with payment_setup(settings, topics, lock="500ms", max_lease_expiries=1) as client:
        started = await client.start("pay", business_key="late", variables={})
        async with RawWorker(settings) as raw:
            task = await raw.take(CHARGE)
            await raw.report(Claimed(task_id=task.task_id, attempt=1, worker_id="slow"))
            incident = await wait_for_incident(client, started.instance_id)
            await raw.report(Completed(task_id=task.task_id, attempt=1, worker_id="slow"))

            async def moved_on() -> bool:
                instance = await client.get_instance(started.instance_id)
                return [t["node_id"] for t in instance["open_tasks"]] == ["ship"]

            await wait_until(moved_on, timeout=TIMEOUT, what="the instance to reach ship")
        resolved = await client.incidents(instance_id=started.instance_id, include_resolved=True)

    assert incident["kind"] == "lease_expired"
    assert [(i["id"], i["resolution"]) for i in resolved] == [(incident["id"], "completed late")]


# --- cancellation ------------------------------------------------------------------------------


async def test_cancel_withdraws_tasks_stops_the_holder_and_refuses_late_reports(
    settings: Settings, topics: set[str], db: asyncpg.Pool
) -> None:
    worker = payment_worker(settings, claim_after_ms=0)
    hanging = hang_until_cancelled(worker, CHARGE)
    running, stopped = hanging.running, hanging.stopped

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="c1", variables={})
        await asyncio.wait_for(running.wait(), TIMEOUT)

        async def claimed() -> bool:
            status = await db.fetchval(
                "SELECT status FROM tasks WHERE instance_id = $1", started.instance_id
            )
            return bool(status == "claimed")

        await wait_until(claimed, timeout=TIMEOUT, what="the charge task to be claimed")
        result = await client.cancel(started.instance_id, reason="customer called")
        await asyncio.wait_for(stopped.wait(), TIMEOUT)
        again = await client.cancel(started.instance_id)
        instance = await client.get_instance(started.instance_id)
        # The business key is free again for a new order.
        second = await client.start("pay", business_key="c1", variables={})

        (task,) = instance["tasks"]
        async with RawWorker(settings) as raw:
            await raw.report(Completed(task_id=task["id"], attempt=1, worker_id="late"))
            (answer,) = await raw.wait_for_notices(1, "the answer to a late completion")
        after = await client.get_instance(started.instance_id)

    assert result == {
        "instance_id": started.instance_id,
        "already_cancelled": False,
        "cancelled_tasks": 1,
    }
    assert again["already_cancelled"] is True
    assert instance["state"] == "cancelled"
    assert instance["ended_at"] is not None
    assert task["status"] == "cancelled"
    assert second.created and second.instance_id != started.instance_id
    cancelled = [h for h in instance["history"] if h["kind"] == "instance_cancelled"]
    assert [h["detail"] for h in cancelled] == [{"reason": "customer called"}]
    assert answer.type == "report_answer" and answer.status == "cancelled"
    assert history_kinds(after) == history_kinds(instance)
    recorded = await db.fetchrow(
        "SELECT kind, worker_id FROM report_ledger WHERE task_id = $1 AND slot = 'outcome'",
        task["id"],
    )
    assert (recorded["kind"], recorded["worker_id"]) == ("completed", "late")
    # The engine's recent copy of the task still said "claimed": its one-statement write
    # failed on the versions the cancel had bumped, and the locked rows decided instead.
    stale = await db.fetchval(
        "SELECT sum(value) FROM engine_counters WHERE name = 'recent_copies_stale'"
    )
    assert stale == 1


async def test_cancel_of_a_completed_instance_is_refused(
    settings: Settings, topics: set[str]
) -> None:
    worker = payment_worker(settings)

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        return {}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="done", variables={})
        await wait_for_state(client, started.instance_id, "completed")
        with pytest.raises(InvalidState, match="already completed"):
            await client.cancel(started.instance_id)
        with pytest.raises(NotFound):
            await client.cancel("00000000-0000-0000-0000-000000000000")


async def test_an_operator_fixes_a_variable_and_retries_the_incident(
    settings: Settings, topics: set[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.daemon")
    worker = payment_worker(settings)
    seen: list[Any] = []

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append(task.variables.get("card"))
        if task.variables.get("card") != "valid":
            raise TaskFailure("card rejected")
        return {"charged": True}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="fix", variables={"card": "expired"})
        incident = await wait_for_incident(client, started.instance_id)
        answer = await client.set_variables(
            started.instance_id, {"card": "valid", "note": "<b>fixed</b>"}
        )
        await client.retry(incident_id=incident["id"])
        done = await wait_for_state(client, started.instance_id, "completed")
        with pytest.raises(InvalidState, match="only an active instance"):
            await client.set_variables(started.instance_id, {"card": "x"})
        with pytest.raises(NotFound):
            await client.set_variables("00000000-0000-0000-0000-000000000000", {"x": 1})

    assert answer == {"instance_id": started.instance_id, "scope": None, "names": ["card", "note"]}
    assert seen == ["expired", "expired", "valid"]
    assert done["variables"]["card"] == "valid"
    assert done["variables"]["note"] == "<b>fixed</b>"
    (entry,) = [h for h in done["history"] if h["kind"] == "variables_set"]
    assert entry["detail"] == {"names": ["card", "note"]}
    # The engine's log lines carry the ids (fields of the JSON lines, ORCH_LOG_FORMAT=json).
    raised = next(
        r for r in caplog.records if r.getMessage().startswith(f"incident {incident['id']}")
    )
    assert (raised.instance_id, raised.task_id, raised.attempt) == (
        started.instance_id,
        incident["task_id"],
        2,
    )
    operator = [r for r in caplog.records if r.getMessage().startswith("operator ")]
    assert [r.getMessage().split(" ")[1] for r in operator] == ["set", "retried"]
    assert all(r.instance_id == started.instance_id for r in operator)


async def test_set_variables_refuses_an_unknown_scope_and_an_empty_set(
    settings: Settings, topics: set[str]
) -> None:
    async with payment_setup(settings, topics) as client:
        started = await client.start("pay", business_key="scope", variables={})
        with pytest.raises(NotFound, match="no scope"):
            await client.set_variables(started.instance_id, {"x": 1}, scope="nope")
        with pytest.raises(ValidationError):
            await client.set_variables(started.instance_id, {})
        instance = await client.get_instance(started.instance_id)
    assert "x" not in instance["variables"]


# --- heartbeats --------------------------------------------------------------------------------


async def test_auto_extension_keeps_a_slow_task_past_its_lock(
    settings: Settings, topics: set[str]
) -> None:
    worker = payment_worker(settings)
    attempts: list[int] = []

    @worker.task(CHARGE, auto_extend_max_ms=60_000)
    async def charge(task: TaskContext) -> dict[str, Any]:
        attempts.append(task.attempt)
        await asyncio.sleep(2.5)  # five times its 500 ms lock
        return {"charged": True}

    async with payment_setup(settings, topics, worker, lock="500ms") as client:
        started = await client.start("pay", business_key="slow", variables={})
        done = await wait_for_state(client, started.instance_id, "completed")

    assert attempts == [1]
    assert "lease_expired" not in history_kinds(done)


async def test_auto_extension_stops_at_its_maximum(settings: Settings, topics: set[str]) -> None:
    worker = payment_worker(settings)
    attempts: list[tuple[int, str | None]] = []

    @worker.task(CHARGE, auto_extend_max_ms=1_000)
    async def charge(task: TaskContext) -> dict[str, Any]:
        attempts.append((task.attempt, task.previous_error))
        if task.attempt == 1:
            await asyncio.sleep(4)  # stuck: the extension limit lets its lock lapse
        return {"charged": True}

    async with payment_setup(settings, topics, worker, lock="500ms") as client:
        started = await client.start("pay", business_key="stuck", variables={})
        done = await wait_for_state(client, started.instance_id, "completed")

    assert [attempt for attempt, _ in attempts] == [1, 2]
    assert (attempts[1][1] or "").startswith("lease expired")
    assert "lease_expired" in history_kinds(done)


# --- the command line --------------------------------------------------------------------------


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run `orchestrator ARGS` as its own process (the engine runs in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "--log-level",
        "WARNING",
        *args,
        env=process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_operator_commands_on_the_command_line(settings: Settings, topics: set[str]) -> None:
    worker = Worker("ops", settings=settings)

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        if task.attempt == 1:
            raise TaskFailure("card network down", retries=0)
        return {}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="cli", variables={})
        incident = await wait_for_incident(client, started.instance_id)
        table = await cli(settings, "incidents")
        listed = await cli(settings, "incidents", "--json", "--instance", started.instance_id)
        unknown = await cli(settings, "retry", "00000000-0000-0000-0000-000000000000")
        by_task = await cli(settings, "retry", incident["task_id"])

        async def at_ship() -> bool:
            instance = await client.get_instance(started.instance_id)
            return [t["node_id"] for t in instance["open_tasks"]] == ["ship"]

        await wait_until(at_ship, timeout=TIMEOUT, what="the retried charge to complete")
        cancelled = await cli(settings, "cancel", started.instance_id, "--reason", "test")
        state = (await client.get_instance(started.instance_id))["state"]

    code, out, _ = table
    assert code == 0 and incident["id"] in out and "failed_task" in out
    assert out.splitlines()[0].split()[:3] == ["incident", "instance", "process"]
    assert [i["id"] for i in orjson.loads(listed[1])] == [incident["id"]]
    assert unknown[0] == 1 and "neither an incident nor a task" in unknown[2]
    assert by_task[0] == 0 and orjson.loads(by_task[1])["attempt"] == 2
    assert cancelled[0] == 0 and orjson.loads(cancelled[1])["cancelled_tasks"] == 1
    assert state == "cancelled"


async def test_a_handler_sees_when_its_task_was_published(
    settings: Settings, topics: set[str]
) -> None:
    worker = payment_worker(settings)
    seen: list[tuple[int, float | None, float]] = []

    @worker.task(CHARGE)
    async def charge(task: TaskContext) -> dict[str, Any]:
        seen.append((task.info.created_at_ms, task.info.published_at_ms, time.time() * 1000))
        return {}

    async with payment_setup(settings, topics, worker) as client:
        started = await client.start("pay", business_key="when", variables={})
        await wait_for_state(client, started.instance_id, "completed")

    ((created, published, entered),) = seen
    assert published is not None
    assert created <= published + 1 <= entered + 1  # created_at_ms is whole milliseconds
