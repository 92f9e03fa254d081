"""The worker SDK's handler contract, without a broker (workers.testing)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.model.wire import BpmnErrorReport, Completed, Failed
from workers import BpmnError, LockStatus, TaskContext, TaskFailure, Worker
from workers.testing import run_task


async def test_returning_a_dict_completes() -> None:
    async def handler(task: TaskContext) -> dict[str, Any]:
        return {
            "double": task.variables["n"] * 2,
            "key": task.idempotency_key,
            "attempt": task.attempt,
        }

    report = await run_task(handler, {"n": 21}, attempt=3)
    assert isinstance(report, Completed)
    assert report.variables["double"] == 42
    assert report.variables["key"] == report.task_id
    assert report.variables["attempt"] == report.attempt == 3


async def test_returning_none_completes_without_variables() -> None:
    async def handler(task: TaskContext) -> None:
        return None

    report = await run_task(handler)
    assert isinstance(report, Completed) and report.variables == {}


async def test_business_error() -> None:
    async def handler(task: TaskContext) -> dict[str, Any]:
        raise BpmnError("OUT_OF_STOCK", "nothing left", {"missing": 3})

    report = await run_task(handler)
    assert isinstance(report, BpmnErrorReport)
    assert (report.code, report.message, report.variables) == (
        "OUT_OF_STOCK",
        "nothing left",
        {"missing": 3},
    )


async def test_any_exception_is_a_failure_with_a_traceback() -> None:
    async def handler(task: TaskContext) -> dict[str, Any]:
        raise KeyError("customer")

    report = await run_task(handler)
    assert isinstance(report, Failed)
    assert report.error_message == "KeyError: 'customer'"
    assert report.error_details is not None and "test_worker_sdk.py" in report.error_details
    assert report.retries is None and report.retry_delay_ms is None


async def test_failure_carries_retry_hints() -> None:
    async def handler(task: TaskContext) -> dict[str, Any]:
        raise TaskFailure("gateway down", retries=2, retry_delay_ms=5000, error_code="GW")

    report = await run_task(handler)
    assert isinstance(report, Failed)
    assert (report.retries, report.retry_delay_ms, report.error_code) == (2, 5000, "GW")


async def test_returning_a_non_dict_is_a_failure() -> None:
    async def handler(task: TaskContext) -> Any:
        return [1, 2]

    report = await run_task(handler)
    assert isinstance(report, Failed) and "return a dict" in report.error_message


async def test_extend_lock_answers() -> None:
    seen: list[LockStatus] = []

    async def handler(task: TaskContext) -> dict[str, Any]:
        seen.append(await task.extend_lock(5000))
        return {}

    await run_task(handler, lock=LockStatus(held=False, cancelled=True))
    assert seen == [LockStatus(held=False, cancelled=True)]


def test_a_topic_has_one_handler() -> None:
    worker = Worker("w")

    @worker.task("t")
    async def first(task: TaskContext) -> None:
        return None

    with pytest.raises(ValueError, match="already has a handler"):
        worker.task("t")(first)


async def test_worker_without_handlers_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="no handlers"):
        await Worker("empty").start()


async def test_auto_extension_keeps_its_cadence_however_slow_the_answers() -> None:
    """Extensions go out every third of a lock counted from the start: an answer that takes
    most of that time does not push the next extension later (which let short locks lapse)."""
    worker = Worker("cadence")
    sent: list[float] = []
    loop = asyncio.get_running_loop()

    async def slow_answer(_item: Any, _lock_ms: int) -> LockStatus:
        sent.append(loop.time())
        await asyncio.sleep(0.08)  # most of the 100 ms between extensions
        return LockStatus(held=True, cancelled=False)

    worker._extend = slow_answer  # type: ignore[method-assign]
    item = SimpleNamespace(task=SimpleNamespace(lock_ms=300, task_id="t"))
    extending = asyncio.create_task(worker._keep_extending(item, max_ms=60_000))  # type: ignore[arg-type]
    await asyncio.sleep(0.65)
    extending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await extending

    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    # Every 100 ms; waiting a third of a lock after each answer would make it 180 ms or more.
    assert len(sent) >= 5, sent
    assert max(gaps) < 0.16, gaps
