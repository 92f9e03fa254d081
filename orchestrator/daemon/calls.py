"""Call activities between instances, as messages through the outbox.

A call activity waits on a task row whose id is also its child instance's id. Starting the
child is a start command, the child's end a report for that task, cancelling the child a
cancel command: each written to the outbox in the transaction that decided it, published
after commit, and taken exactly once by the start and report ledgers. No transaction ever
holds two instances' rows.
"""

from __future__ import annotations

from typing import Any

import orjson

from orchestrator.broker.topology import OUTBOX_TO_COMMANDS, OUTBOX_TO_REPORTS
from orchestrator.engine.state import CalledBy, NotifyParent, StartChild
from orchestrator.model.wire import WIRE_VERSION
from orchestrator.store.unit_of_work import OutboxMessage


def child_worker_id(child_id: str) -> str:
    """The worker id of the reports an instance sends its caller."""
    return f"instance:{child_id}"


def start_child(
    effect: StartChild, attempt: int = 1, *, traceparent: str | None = None
) -> OutboxMessage:
    """The child's start command (`attempt`: the call's task attempt, after an operator's
    retry of a start that failed). The child joins its caller's trace (`traceparent`)."""
    called = effect.called_by
    body: dict[str, Any] = {
        "v": WIRE_VERSION,
        "type": "start",
        "process_key": effect.process_key,
        "version": effect.version,
        "idempotency_key": f"call:{effect.instance_id}",
        "variables": effect.variables,
        "instance_id": effect.instance_id,
        "called_by": {**_called_by(called), "attempt": attempt},
    }
    if traceparent is not None:
        body["traceparent"] = traceparent
    return OutboxMessage(
        OUTBOX_TO_COMMANDS, f"start:{effect.instance_id}", orjson.dumps(body), traceparent
    )


def notify_parent(
    effect: NotifyParent, child_id: str, traceparent: str | None = None
) -> OutboxMessage:
    """The child's outcome as the report of its call activity's task."""
    report: dict[str, Any] = {
        "v": WIRE_VERSION,
        "task_id": effect.called_by.task_id,
        "attempt": 1,
        "worker_id": child_worker_id(child_id),
        "variables": effect.variables,
    }
    if effect.error_code is None:
        report["type"] = "completed"
    else:
        report.update(type="bpmn_error", code=effect.error_code, message=effect.error_message)
    if traceparent is not None:
        report["traceparent"] = traceparent
    return OutboxMessage(OUTBOX_TO_REPORTS, f"ended:{child_id}", orjson.dumps(report), traceparent)


def start_failed(called_by: CalledBy, attempt: int, reason: str) -> OutboxMessage:
    """The child could not start (its process is not deployed): the call activity's task
    fails with no retries left, so its caller holds an incident an operator can retry."""
    report = {
        "v": WIRE_VERSION,
        "type": "failed",
        "task_id": called_by.task_id,
        "attempt": attempt,
        "worker_id": child_worker_id(called_by.task_id),
        "error_message": f"the called process could not start: {reason}",
        "retries": 0,
    }
    return OutboxMessage(
        OUTBOX_TO_REPORTS, f"start-failed:{called_by.task_id}:{attempt}", orjson.dumps(report)
    )


def cancel_child(child_id: str, reason: str) -> OutboxMessage:
    body = {"v": WIRE_VERSION, "type": "cancel", "instance_id": child_id, "reason": reason}
    return OutboxMessage(OUTBOX_TO_COMMANDS, f"cancel:{child_id}", orjson.dumps(body))


def _called_by(called: CalledBy) -> dict[str, Any]:
    return {
        "instance_id": called.instance_id,
        "task_id": called.task_id,
        "catches": list(called.catches),
    }


def deliver_buffered(wait_id: str, name: str, correlation_key: str | None) -> OutboxMessage:
    """The engine's command to itself when a subscription opens: correlate a message that
    was buffered for it before (see daemon/messages.py)."""
    body = {
        "v": WIRE_VERSION,
        "type": "deliver_buffered",
        "name": name,
        "correlation_key": correlation_key,
    }
    return OutboxMessage(OUTBOX_TO_COMMANDS, f"deliver:{wait_id}", orjson.dumps(body))
