"""Run a handler without a broker or an engine, as unit tests of workers do.

report = await run_task(charge, {"amount": 12})
assert report.type == "completed" and report.variables["payment_id"]
"""

from __future__ import annotations

import uuid
from typing import Any

from workers._context import LockStatus, TaskContext, TaskInfo
from workers._durations import from_ms, to_ms
from workers._outcome import Handler, Outcome, run_handler

HELD = LockStatus(held=True, cancelled=False)


async def run_task(
    handler: Handler,
    variables: dict[str, Any] | None = None,
    *,
    attempt: int = 1,
    retries_left: int = 2,
    business_key: str | None = None,
    topic: str = "test",
    lock_s: float = 30.0,
    lock: LockStatus = HELD,
    previous_error: str | None = None,
    lock_ms: int | None = None,
    traceparent: str | None = None,
) -> Outcome:
    """The report the worker would send for this handler run; extend_lock answers `lock`.
    (`lock_ms` is the older name of `lock_s`, in milliseconds.) `traceparent`: the task
    message's trace context header."""
    task_id = str(uuid.uuid4())
    info = TaskInfo(
        task_id=task_id,
        attempt=attempt,
        retries_left=retries_left,
        topic=topic,
        instance_id=str(uuid.uuid4()),
        process_key="test",
        node_id=topic,
        business_key=business_key,
        lock_ms=to_ms(from_ms(lock_s, lock_ms)),
        idempotency_key=task_id,
        previous_error=previous_error,
        traceparent=traceparent,
    )

    async def extend(_lock_ms: int) -> LockStatus:
        return lock

    return await run_handler(handler, TaskContext(info, dict(variables or {}), extend), "test")
