"""Instances started by a timer or a message start event, as start commands through the
outbox: the start ledger makes each take effect once (its idempotency key names the timer's
turn or the message), and a unique business key is claimed as for any start."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from orchestrator.broker.topology import OUTBOX_TO_COMMANDS
from orchestrator.model.wire import WIRE_VERSION
from orchestrator.store.unit_of_work import OutboxMessage

#: The namespace of the instance ids a message start derives from its message id.
_MESSAGE_STARTS = uuid.UUID("6f1b2a6e-6a4c-4c3e-9c1e-3d2f5b7a9e10")


def start_at_event(
    process_key: str,
    version: int,
    start_id: str,
    idempotency_key: str,
    *,
    variables: dict[str, Any] | None = None,
    business_key: str | None = None,
    instance_id: str | None = None,
    traceparent: str | None = None,
) -> OutboxMessage:
    body: dict[str, Any] = {
        "v": WIRE_VERSION,
        "type": "start",
        "process_key": process_key,
        "version": version,
        "idempotency_key": idempotency_key,
        "business_key": business_key,
        "variables": variables or {},
        "start_at": start_id,
    }
    if instance_id is not None:
        body["instance_id"] = instance_id
    if traceparent is not None:  # the trace of the message that starts it
        body["traceparent"] = traceparent
    return OutboxMessage(
        OUTBOX_TO_COMMANDS, f"start:{idempotency_key}", orjson.dumps(body), traceparent
    )


def message_start_instance(message_id: str, process_key: str) -> str:
    """The id of the instance a message starts: the same for every delivery of it."""
    return str(uuid.uuid5(_MESSAGE_STARTS, f"{process_key}\n{message_id}"))
