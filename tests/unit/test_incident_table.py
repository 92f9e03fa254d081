from __future__ import annotations

from orchestrator.incident_table import incident_table


def test_empty() -> None:
    assert incident_table([]) == "no incidents\n"


def test_rows_line_up_and_show_resolution() -> None:
    incidents = [
        {
            "id": "inc-1",
            "instance_id": "i-1",
            "process_key": "order",
            "business_key": None,
            "node_id": "charge_payment",
            "kind": "failed_task",
            "attempt": 5,
            "created_at": "2026-11-27T23:10:04.123456+00:00",
            "message": "psp timeout\n(no retries left)",
            "resolved_at": None,
        },
        {
            "id": "inc-2",
            "instance_id": "i-2",
            "process_key": "order",
            "business_key": "A-17",
            "node_id": "ship",
            "kind": "lease_expired",
            "attempt": 1,
            "created_at": "2026-11-27T23:11:00+00:00",
            "message": "x" * 200,
            "resolved_at": "2026-11-27T23:12:00+00:00",
            "resolution": "retried",
        },
    ]
    header, first, second = incident_table(incidents).splitlines()
    assert header.split() == [
        "incident", "instance", "process", "business", "key", "node", "kind", "attempt", "since",
        "message",
    ]  # fmt: skip
    assert first.index("charge_payment") == header.index("node")
    assert "2026-11-27T23:10:04 " in first and "psp timeout (no retries left)" in first
    assert " - " in first  # no business key
    assert second.endswith("[retried] " + "x" * 70)
