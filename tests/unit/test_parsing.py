from __future__ import annotations

import uuid

import orjson
import pytest

from orchestrator.daemon.parsing import Malformed, parse_command, parse_report
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
        (orjson.dumps({"type": "completed"}), "wrong schema"),
        (orjson.dumps({"type": "nonsense", "task_id": "x"}), "wrong schema"),
        (
            orjson.dumps({"type": "claimed", "task_id": "x", "attempt": 1, "worker_id": "w"}),
            "unknown task",
        ),
        (b"x" * 20_000, "oversized"),
    ],
)
def test_malformed_reports_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_report(body, 10_000)


def test_commands() -> None:
    command = parse_command(
        orjson.dumps({"type": "start", "process_key": "p", "idempotency_key": "k"}), 10_000
    )
    assert isinstance(command, StartCommand) and command.variables == {}
    with pytest.raises(Malformed, match="wrong schema"):
        parse_command(orjson.dumps({"type": "start"}), 10_000)
