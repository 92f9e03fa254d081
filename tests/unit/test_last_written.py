"""The rows the engine last wrote: what a batch may be decided from, and what is kept after it."""

from __future__ import annotations

import logging
from dataclasses import replace

import orjson
import pytest

from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.definitions import DefinitionCache
from orchestrator.daemon.last_written import LastWrittenRows, RowCopies, StaleCopy
from orchestrator.daemon.reports import IncomingReport, ReportBatch
from orchestrator.engine.state import InstanceState, Token
from orchestrator.model.wire import Claimed, Completed, Failed
from orchestrator.store.rows import StoredDefinition
from orchestrator.store.unit_of_work import InstanceRow, TaskRow, UnitOfWork
from tests.support.harness import sequential_process

ROW = InstanceRow(definition_id=1, process_key="p", business_key=None, status="active")
#: An instance id the engine core derives task ids from (a UUID).
I1 = "00000000-0000-4000-8000-000000000001"


def _state(instance_id: str, task_id: str, version: int = 0) -> InstanceState:
    token = Token("t1", "step1", task_id)
    return InstanceState(instance_id, "active", {}, (token,), seq=2, version=version)


def _task(task_id: str, instance_id: str, **changes: object) -> TaskRow:
    task = TaskRow(
        id=task_id,
        instance_id=instance_id,
        node_id="step1",
        topic="work",
        status="queued",
        attempt=1,
        retries_left=2,
        lock_ms=1000,
        worker_id=None,
        lease_expires_at=None,
        lease_expiries=0,
    )
    return replace(task, **changes)  # type: ignore[arg-type]


def _started(last_written: LastWrittenRows, instance_id: str, task_id: str) -> None:
    uow = UnitOfWork()
    uow.new_instances.append((ROW, _state(instance_id, task_id)))
    uow.new_tasks.append(_task(task_id, instance_id))
    last_written.remember(uow, {})


def _done(task_id: str, attempt: int = 1) -> Completed:
    return Completed(task_id=task_id, attempt=attempt, worker_id="w")


def test_completions_of_known_open_tasks_are_decided_from_copies() -> None:
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    _started(last_written, "i2", "b")
    view = last_written.copies_for([_done("a"), _done("b")])
    assert view is not None
    assert set(view.tasks) == {"a", "b"} and set(view.instances) == {"i1", "i2"}
    assert view.states["i1"].version == 0 and view.tasks["a"].version == 0


def test_anything_else_goes_the_locked_way() -> None:
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    assert last_written.copies_for([_done("unknown")]) is None
    assert last_written.copies_for([_done("a", attempt=2)]) is None
    assert last_written.copies_for([_done("a"), _done("a")]) is None  # a repeat within the batch
    assert last_written.copies_for([Claimed(task_id="a", attempt=1, worker_id="w")]) is None
    failed = Failed(task_id="a", attempt=1, worker_id="w", error_message="x")
    assert last_written.copies_for([failed]) is None


def test_a_view_is_a_copy() -> None:
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    view = last_written.copies_for([_done("a")])
    assert view is not None
    view.tasks["a"].status = "completed"
    again = last_written.copies_for([_done("a")])
    assert again is not None and again.tasks["a"].status == "queued"


def test_remember_keeps_written_versions_and_drops_what_closed() -> None:
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    uow = UnitOfWork()
    uow.changed_tasks["a"] = _task("a", "i1", status="claimed", worker_id="w", lease_ms=500)
    last_written.remember(uow, {"i1": ROW})
    view = last_written.copies_for([_done("a")])
    assert view is not None
    assert (view.tasks["a"].status, view.tasks["a"].version) == ("claimed", 1)
    assert view.tasks["a"].lease_ms is None  # a write instruction, already carried out
    assert view.states["i1"].version == 0  # the instance row was not written

    advanced = UnitOfWork()
    advanced.changed_tasks["a"] = _task("a", "i1", status="completed", version=1)
    advanced.changed_instances["i1"] = _state("i1", "b", version=0)
    advanced.new_tasks.append(_task("b", "i1"))
    last_written.remember(advanced, {"i1": ROW})
    assert last_written.copies_for([_done("a")]) is None
    next_view = last_written.copies_for([_done("b")])
    assert next_view is not None and next_view.states["i1"].version == 1

    ended = UnitOfWork()
    ended.changed_tasks["b"] = _task("b", "i1", status="completed")
    ended.changed_instances["i1"] = replace(_state("i1", "b", version=1), status="completed")
    last_written.remember(ended, {"i1": ROW})
    assert len(last_written) == 0 and last_written.copies_for([_done("b")]) is None


def test_it_keeps_at_most_max_instances() -> None:
    last_written = LastWrittenRows(2)
    for n in range(5):
        _started(last_written, f"i{n}", f"t{n}")
    assert len(last_written) == 2
    assert last_written.copies_for([_done("t0")]) is None
    assert last_written.copies_for([_done("t4")]) is not None


def test_forget_drops_instances_and_their_tasks() -> None:
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    last_written.forget(["i1"])
    assert last_written.copies_for([_done("a")]) is None


def test_a_task_newer_than_its_instance_copy_drops_the_copy() -> None:
    # This engine wrote instance i1 waiting on task a. Another engine then completed a and
    # created b (the copy here never saw it); this engine's locked batch claimed b, changing
    # only the task. Keeping b under the old copy would decide b's completion from a state
    # that does not wait on b.
    last_written = LastWrittenRows(10)
    _started(last_written, "i1", "a")
    claimed = UnitOfWork()
    claimed.changed_tasks["b"] = _task("b", "i1", status="claimed", worker_id="w", version=0)
    last_written.remember(claimed, {"i1": ROW})
    assert last_written.copies_for([_done("b")]) is None
    assert last_written.copies_for([_done("a")]) is None  # the whole copy is gone
    assert len(last_written) == 0


def test_a_copy_that_does_not_wait_on_the_task_is_stale_not_an_incident(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whatever made a copy inconsistent, deciding from it is a stale copy: decided again
    # from locked rows, never an error or an incident of the instance.
    processes = DefinitionCache()
    graph = orjson.loads(sequential_process("p", ["one", "two"]))
    processes.remember(StoredDefinition(id=1, version=1, graph=graph))
    context = EngineContext(processes)
    view = RowCopies(
        tasks={"b": _task("b", I1, node_id="step2", status="claimed", worker_id="w")},
        instances={I1: ROW},
        states={I1: _state(I1, "a")},
    )
    batch = ReportBatch(None, context)  # type: ignore[arg-type]  # decides without a session
    with caplog.at_level(logging.DEBUG), pytest.raises(StaleCopy):
        batch.decide_for_one_statement([IncomingReport(_done("b"), None)], view)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
