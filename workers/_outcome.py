"""Running a handler and turning how it ended into the report the worker sends."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.model.wire import (
    BpmnErrorReport,
    Completed,
    Failed,
    TaskMessage,
)
from workers._context import TaskContext, TaskInfo
from workers._errors import BpmnError, TaskFailure

log = logging.getLogger(__name__)
Handler = Callable[[TaskContext], Awaitable[dict[str, Any] | None]]
Outcome = Completed | Failed | BpmnErrorReport
_TRACEBACK_LIMIT = 4_000
_MESSAGE_LIMIT = 10_000


def info_of(
    task: TaskMessage, published_at_ms: float | None = None, traceparent: str | None = None
) -> TaskInfo:
    return TaskInfo(
        task_id=task.task_id,
        attempt=task.attempt,
        retries_left=task.retries_left,
        topic=task.topic,
        instance_id=task.instance_id,
        process_key=task.process_key,
        node_id=task.node_id,
        business_key=task.business_key,
        lock_ms=task.lock_ms,
        idempotency_key=task.idempotency_key,
        created_at_ms=task.created_at_ms,
        published_at_ms=published_at_ms,
        previous_error=task.previous_error.message if task.previous_error else None,
        previous_error_details=task.previous_error.details if task.previous_error else None,
        traceparent=traceparent,
    )


async def run_handler(
    handler: Handler, context: TaskContext, worker_id: str, traceparent: str | None = None
) -> Outcome:
    """A dict completes; BpmnError is a business error; anything else is a failure. The
    report carries `traceparent` (the handler's span), else the task's."""
    ids: dict[str, Any] = {
        "task_id": context.info.task_id,
        "attempt": context.info.attempt,
        "worker_id": worker_id,
        "traceparent": traceparent or context.info.traceparent,
    }
    try:
        result = await handler(context)
    except BpmnError as exc:
        return BpmnErrorReport(**ids, code=exc.code, message=exc.message, variables=exc.variables)
    except TaskFailure as exc:
        return Failed(
            **ids,
            error_message=str(exc)[:_MESSAGE_LIMIT],
            error_code=exc.error_code,
            error_details=exc.details or _short_traceback(exc),
            retries=exc.retries,
            retry_delay_ms=exc.retry_delay_ms,
        )
    except Exception as exc:
        log.warning("task %s attempt %d failed: %r", ids["task_id"], ids["attempt"], exc)
        return Failed(
            **ids,
            error_message=f"{type(exc).__name__}: {exc}"[:_MESSAGE_LIMIT],
            error_details=_short_traceback(exc),
        )
    if result is not None and not isinstance(result, dict):
        return Failed(
            **ids,
            error_message=f"handler returned {type(result).__name__}; return a dict or None",
        )
    return Completed(**ids, variables=result or {})


def _short_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:]
