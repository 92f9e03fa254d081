"""What this engine last wrote of its active instances and their open tasks.

A report for a task the engine itself dispatched can then be decided from memory and written
in one autocommit statement, instead of a transaction that locks and reads the rows first
(five round trips). Nothing here is trusted: the write names the version of every row it
changes, and fails whole if another engine, the reaper or an operator changed one since.
The engine then forgets those rows and decides again from locked rows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from orchestrator.engine.state import InstanceState
from orchestrator.model.wire import Completed
from orchestrator.store.errors import NeedsLocks
from orchestrator.store.unit_of_work import InstanceRow, TaskRow, UnitOfWork


class StaleCopy(NeedsLocks):
    """A copy of the rows last written turned out older than the rows: the batch is decided
    again from locked rows (counted as `recent_copies_stale`), as when its write fails on a
    version."""


@dataclass
class _Instance:
    row: InstanceRow
    state: InstanceState
    task_ids: set[str]


@dataclass(frozen=True)
class RowCopies:
    """Private copies of the rows a batch of reports needs; the batch may change them."""

    tasks: dict[str, TaskRow]
    instances: dict[str, InstanceRow]
    states: dict[str, InstanceState]


class LastWrittenRows:
    """The engine's copies of the rows it last wrote, by instance and task. Bounded: the
    least recently written instances are forgotten first, so a backlog of 100,000 waiting
    instances costs no more memory than `max_instances` of them."""

    def __init__(self, max_instances: int) -> None:
        self._max = max_instances
        self._instances: OrderedDict[str, _Instance] = OrderedDict()
        self._tasks: dict[str, TaskRow] = {}

    def __len__(self) -> int:
        return len(self._instances)

    def copies_for(self, reports: Iterable[object]) -> RowCopies | None:
        """Copies for a batch made only of completions of current attempts of open tasks
        known here (the common case of a task finishing); None for anything else."""
        tasks: dict[str, TaskRow] = {}
        instances: dict[str, InstanceRow] = {}
        states: dict[str, InstanceState] = {}
        for report in reports:
            if not isinstance(report, Completed) or report.task_id in tasks:
                return None
            task = self._tasks.get(report.task_id)
            if (
                task is None
                or task.attempt != report.attempt
                or task.status not in ("queued", "claimed")
            ):
                return None
            entry = self._instances[task.instance_id]
            tasks[task.id] = replace(task)
            instances[task.instance_id] = entry.row
            states[task.instance_id] = entry.state
        return RowCopies(tasks, instances, states)

    def remember(self, uow: UnitOfWork, rows: Mapping[str, InstanceRow]) -> None:
        """After `uow` committed: keep what it wrote, at the versions it wrote."""
        for row, state in uow.new_instances:
            self._put_instance(row, state)
        for instance_id, state in uow.changed_instances.items():
            known = rows.get(instance_id)
            if known is None or state.status != "active":
                self.forget([instance_id])
            else:
                next_state = replace(state, version=state.version + 1)
                self._put_instance(replace(known, status=state.status), next_state)
        for task in uow.new_tasks:
            self._put_task(task, task.version)
        for task in uow.changed_tasks.values():
            self._put_task(task, task.version + 1)

    def forget(self, instance_ids: Iterable[str]) -> None:
        for instance_id in instance_ids:
            entry = self._instances.pop(instance_id, None)
            if entry is not None:
                for task_id in entry.task_ids:
                    self._tasks.pop(task_id, None)

    def _put_instance(self, row: InstanceRow, state: InstanceState) -> None:
        entry = self._instances.get(state.id)
        if entry is None:
            self._instances[state.id] = _Instance(row, state, set())
            while len(self._instances) > self._max:
                _, evicted = self._instances.popitem(last=False)
                for task_id in evicted.task_ids:
                    self._tasks.pop(task_id, None)
        else:
            entry.row, entry.state = row, state
            self._instances.move_to_end(state.id)

    def _put_task(self, task: TaskRow, version: int) -> None:
        entry = self._instances.get(task.instance_id)
        if entry is not None and task.is_open and entry.state.token_for_task(task.id) is None:
            # The task is newer than this copy of its instance: another engine advanced the
            # instance since this one wrote it, and this batch changed only the task (a
            # claim). Kept, it would decide the task's completion from a state that does not
            # wait on it. The next batch of this instance reads it under locks instead.
            self.forget([task.instance_id])
            entry = None
        if entry is None or not task.is_open:
            self._tasks.pop(task.id, None)
            if entry is not None:
                entry.task_ids.discard(task.id)
            return
        # Pending lease and due times are write instructions, already carried out.
        self._tasks[task.id] = replace(task, version=version, lease_ms=None, due_ms=None)
        entry.task_ids.add(task.id)
