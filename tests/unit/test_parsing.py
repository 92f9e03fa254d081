from __future__ import annotations

import uuid

import orjson
import pytest

from orchestrator.daemon.parsing import Malformed, parse_command, parse_report, parse_reports
from orchestrator.model.wire import Completed, StartCommand


def test_valid_report() -> None:
    body = (
        Completed(task_id=str(uuid.uuid4()), attempt=1, worker_id="w", variables={"a": 1})
        .model_dump_json()
        .encode()
    )
    report = parse_report(body, 10_000)
    assert isinstance(report, Completed) and report.variables == {"a": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (orjson.dumps({"v": 1, "type": "completed"}), "wrong schema"),
        (orjson.dumps({"v": 1, "type": "nonsense", "task_id": "x"}), "wrong schema"),
        (
            orjson.dumps(
                {"v": 1, "type": "claimed", "task_id": "x", "attempt": 1, "worker_id": "w"}
            ),
            "unknown task",
        ),
        (
            orjson.dumps({"type": "claimed", "task_id": str(uuid.uuid4()), "attempt": 1}),
            "wrong schema: claimed.worker_id",
        ),
        (
            orjson.dumps(
                {"type": "claimed", "task_id": str(uuid.uuid4()), "attempt": 1, "worker_id": "w"}
            ),
            "wrong schema: v: Field required",
        ),
        (
            orjson.dumps(
                {
                    "v": 2,
                    "type": "claimed",
                    "task_id": str(uuid.uuid4()),
                    "attempt": 1,
                    "worker_id": "w",
                }
            ),
            "wrong schema: claimed.v",
        ),
        (b"x" * 20_000, "oversized"),
    ],
)
def test_malformed_reports_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_report(body, 10_000)


def test_commands() -> None:
    start = {"v": 1, "type": "start", "process_key": "p", "idempotency_key": "k"}
    command = parse_command(orjson.dumps(start), 10_000)
    assert isinstance(command, StartCommand) and command.variables == {}
    with pytest.raises(Malformed, match=r"wrong schema: start\.process_key"):
        parse_command(orjson.dumps({"v": 1, "type": "start"}), 10_000)
    unversioned = {key: value for key, value in start.items() if key != "v"}
    with pytest.raises(Malformed, match="wrong schema: v: Field required"):
        parse_command(orjson.dumps(unversioned), 10_000)


def test_an_unversioned_element_of_a_report_array_is_refused_alone() -> None:
    ids = {"task_id": str(uuid.uuid4()), "attempt": 1, "worker_id": "w"}
    good = Completed(**ids).model_dump(mode="json")
    unversioned = {key: value for key, value in good.items() if key != "v"}
    parsed = parse_reports(orjson.dumps([good, unversioned]), 10_000)
    assert isinstance(parsed[0].report, Completed) and parsed[0].reason is None
    assert parsed[1].report is None
    assert (parsed[1].reason or "").startswith("wrong schema: v: Field required")


def test_engine_task_messages_match_the_wire_model() -> None:
    from orchestrator.daemon.effects import InstanceInfo, task_message
    from orchestrator.model.wire import TaskMessage
    from orchestrator.store.unit_of_work import TaskRow

    task = TaskRow(
        id=str(uuid.uuid4()),
        instance_id=str(uuid.uuid4()),
        node_id="n",
        topic="t",
        status="queued",
        attempt=2,
        retries_left=1,
        lock_ms=5000,
        worker_id=None,
        lease_expires_at=None,
        lease_expiries=0,
    )
    message = task_message(task, InstanceInfo(task.instance_id, "p", "bk", None), {"a": [1]})
    parsed = TaskMessage.model_validate_json(message.body)
    assert (parsed.task_id, parsed.attempt, parsed.variables) == (task.id, 2, {"a": [1]})
    optional = {"headers", "user_task"}  # only on tasks that have them
    assert sorted(orjson.loads(message.body)) == sorted(set(TaskMessage.model_fields) - optional)
    assert message.message_id == f"{task.id}:2"
