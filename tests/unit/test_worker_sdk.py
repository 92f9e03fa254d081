"""The worker SDK's handler contract, without a broker (workers.testing)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.model.wire import BpmnErrorReport, Completed, Failed
from workers import BpmnError, LockStatus, TaskContext, TaskFailure, TaskInfo, Worker
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
        raise TaskFailure("gateway down", retries=2, retry_delay_s=5, error_code="GW")

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
        seen.append(await task.extend_lock(lock_s=5))
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
    extending = asyncio.create_task(worker._keep_extending(item, max_s=60))  # type: ignore[arg-type]
    await asyncio.sleep(0.65)
    extending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await extending

    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    # Every 100 ms; waiting a third of a lock after each answer would make it 180 ms or more.
    assert len(sent) >= 5, sent
    assert max(gaps) < 0.16, gaps


# --- durations: seconds in the SDK, milliseconds on the wire; the old _ms names still work ---


async def test_a_retry_delay_in_seconds_goes_out_in_milliseconds() -> None:
    assert TaskFailure("x", retry_delay_s=1.5).retry_delay_ms == 1500
    assert TaskFailure("x", retry_delay_ms=250).retry_delay_s == 0.25
    assert TaskFailure("x").retry_delay_ms is None
    with pytest.raises(ValueError, match="retry_delay_s"):
        TaskFailure("x", retry_delay_s=-1)

    async def handler(task: TaskContext) -> None:
        raise TaskFailure("later", retry_delay_ms=2500)

    report = await run_task(handler)
    assert isinstance(report, Failed) and report.retry_delay_ms == 2500


async def test_extend_lock_takes_seconds_or_its_old_milliseconds() -> None:
    asked: list[int] = []

    async def extend(lock_ms: int) -> LockStatus:
        asked.append(lock_ms)
        return LockStatus(held=True, cancelled=False)

    context = TaskContext(info(lock_ms=30_000), {}, extend)
    await context.extend_lock(lock_s=2.5)
    await context.extend_lock(lock_ms=700)
    await context.extend_lock()
    await context.extend_lock(lock_s=0.0001)
    assert asked == [2500, 700, 30_000, 1]
    with pytest.raises(ValueError, match="lock_s must be positive"):
        await context.extend_lock(lock_s=0)
    with pytest.raises(TypeError):
        await context.extend_lock(5000)  # type: ignore[misc]
    assert context.info.lock_s == 30.0


async def test_run_task_takes_the_lock_in_seconds() -> None:
    locks: list[tuple[int, float]] = []

    async def handler(task: TaskContext) -> None:
        locks.append((task.info.lock_ms, task.info.lock_s))

    await run_task(handler, lock_s=2)
    await run_task(handler, lock_ms=1500)
    await run_task(handler)
    assert locks == [(2000, 2.0), (1500, 1.5), (30_000, 30.0)]


def test_worker_durations_are_seconds_with_the_old_names_kept() -> None:
    assert Worker("w").claim_after_s == 0.02
    assert Worker("w", claim_after_s=0.5).claim_after_s == 0.5
    assert Worker("w", claim_after_ms=0).claim_after_s == 0
    with pytest.raises(ValueError, match="claim_after_s"):
        Worker("w", claim_after_s=-1)
    worker = Worker("w")

    async def handler(task: TaskContext) -> None:
        return None

    worker.task("seconds", auto_extend_max_s=90)(handler)
    worker.task("millis", auto_extend_max_ms=1_500)(handler)
    assert worker._topics["seconds"].auto_extend_max_s == 90
    assert worker._topics["millis"].auto_extend_max_s == 1.5
    with pytest.raises(ValueError, match="auto_extend_max_s must be positive"):
        worker.task("never", auto_extend_max_s=0)


def info(**fields: Any) -> TaskInfo:
    values: dict[str, Any] = {
        "task_id": "t",
        "attempt": 1,
        "retries_left": 0,
        "topic": "topic",
        "instance_id": "i",
        "process_key": "p",
        "node_id": "n",
        "business_key": None,
        "lock_ms": 1000,
        "idempotency_key": "t",
    }
    return TaskInfo(**{**values, **fields})
