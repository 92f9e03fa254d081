"""One batch of worker reports -> one transaction: ledger, leases, engine steps, outbox.

Runs under row locks (instances, then tasks, each in id order, so replicas never deadlock)
and decides everything in memory; the unit of work writes it in a few statements.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import orjson

from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_task_decision, apply_transition
from orchestrator.daemon.last_written import RowCopies, StaleCopy
from orchestrator.daemon.ledger import BatchLedger, report_fingerprint
from orchestrator.definitions.loader import Process
from orchestrator.engine import task as lifecycle
from orchestrator.engine.state import InstanceState, Transition
from orchestrator.engine.step import EngineStepError, complete_task, error_task
from orchestrator.engine.variables import task_variables
from orchestrator.model.definition import RetryPolicy, ServiceTask, UserTask, fetch_list
from orchestrator.model.wire import (
    BpmnErrorReport,
    Claimed,
    Completed,
    ExtendLock,
    Failed,
    LockAnswer,
    Released,
    Report,
    ReportAnswer,
    TaskRevoked,
)
from orchestrator.store.errors import NeedsLocks
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import InstanceRow, PublishedRow, TaskRow, UnitOfWork

log = logging.getLogger(__name__)
NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class IncomingReport:
    report: Report
    reply_to: str | None


@dataclass(frozen=True)
class Notice:
    """An answer for the worker that sent a report, or the client that sent a command; best
    effort, never persisted."""

    reply_to: str
    body: bytes
    correlation_id: str | None = None


@dataclass
class BatchOutcome:
    publish: list[PublishedRow] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    #: Index into the batch -> reason, for reports that name no known task.
    dead: dict[int, str] = field(default_factory=dict)
    #: Indexes of reports whose instance another session has locked: to be tried again.
    deferred: set[int] = field(default_factory=set)
    #: What each transaction wrote, with the instances it read (for LastWrittenRows).
    written: list[tuple[UnitOfWork, dict[str, InstanceRow]]] = field(default_factory=list)

    def merge(self, other: BatchOutcome, *, offset: int) -> BatchOutcome:
        """Add the outcome of the reports that start at `offset` in the same batch."""
        self.publish += other.publish
        self.notices += other.notices
        self.dead.update({index + offset: reason for index, reason in other.dead.items()})
        self.deferred.update(index + offset for index in other.deferred)
        self.written += other.written
        return self


class ReportBatch:
    """Applies one batch of reports inside the caller's transaction."""

    def __init__(
        self,
        db: Session,
        context: EngineContext,
        *,
        stale_copies: bool = False,
        uow: UnitOfWork | None = None,
    ):
        self._db = db
        self._context = context
        self._processes = context.processes
        self._uow = uow if uow is not None else UnitOfWork()
        if stale_copies:  # this batch first failed to write from the engine's copies
            self._uow.count("recent_copies_stale")
        self._ledger = BatchLedger(self._uow)
        #: Deciding from the engine's copies of the rows it last wrote (see
        #: decide_for_one_statement), not from locked rows.
        self._from_copies = False
        self._tasks: dict[str, TaskRow] = {}
        self._instances: dict[str, InstanceRow] = {}
        self._states: dict[str, InstanceState] = {}
        self._outcome = BatchOutcome()

    async def run(self, reports: list[IncomingReport]) -> BatchOutcome:
        """Inside the caller's transaction: lock and read the rows, decide, write."""
        await self._lock([item.report.task_id for item in reports])
        await self._load_ledger(reports)
        self._decide(reports)
        return await self._write()

    async def run_in_one_statement(
        self, reports: list[IncomingReport], copies: RowCopies
    ) -> BatchOutcome:
        """Decide from the engine's copies of the rows it last wrote and write in one
        autocommit statement.

        Only for completions that advance their instances (see LastWrittenRows.copies_for),
        and only if every row is still at the version copied: otherwise the statement writes
        nothing and raises SerializationError (or NeedsLocks before writing).
        """
        self.decide_for_one_statement(reports, copies)
        return await self._write()

    def decide_for_one_statement(self, reports: list[IncomingReport], copies: RowCopies) -> None:
        """`run_in_one_statement` up to its statement: the reports decided into the unit of
        work (which the caller may write together with other work, then hand to `written`)."""
        self._tasks, self._instances, self._states = copies.tasks, copies.instances, copies.states
        if any(not self._processes.has(row.definition_id) for row in copies.instances.values()):
            raise NeedsLocks("definition not loaded")
        self._uow.count("batches_from_recent")
        self._from_copies = True
        self._decide(reports)
        # Each write must also change its instance's row: that row's lock and version are
        # what every other writer of its tasks goes through.
        if self._outcome.dead or set(copies.instances) - self._uow.changed_instances.keys():
            raise NeedsLocks("a report did not advance its instance")

    def _decide(self, reports: list[IncomingReport]) -> None:
        for index, item in enumerate(reports):
            task = self._tasks.get(item.report.task_id)
            if task is None:
                self._outcome.dead[index] = f"unknown task: {item.report.task_id}"
                continue
            if task.instance_id not in self._instances:  # locked elsewhere: skipped, not waited
                self._outcome.deferred.add(index)
                self._uow.count("reports_deferred")
                continue
            self._uow.count(f"reports_{item.report.type}")
            self._apply(item, task)

    async def _write(self) -> BatchOutcome:
        return self.written(await self._db.write(self._uow))

    def written(self, published: list[PublishedRow]) -> BatchOutcome:
        """The outcome, once the unit of work is committed and `published` are its rows."""
        self._outcome.publish = published
        self._outcome.written.append((self._uow, self._instances))
        return self._outcome

    async def _lock(self, task_ids: list[str]) -> None:
        """Lock the instances (in id order); their lock guards their tasks too: every writer
        of a task row (report batches, the reaper) holds its instance's lock. Instances
        another session holds are skipped: their tasks are read but left alone."""
        unique = sorted(set(task_ids))
        self._instances, self._states = await self._db.lock_instances_of_tasks(unique)
        definition_ids = {row.definition_id for row in self._instances.values()}
        await self._processes.preload(self._db, definition_ids)
        for task in await self._db.tasks_by_id(unique):
            self._tasks[task.id] = task

    async def _load_ledger(self, reports: list[IncomingReport]) -> None:
        """Read the ledger only where a repeat is possible. A report for the current attempt
        of a queued or claimed task cannot be one: any earlier outcome of that attempt would
        have moved the task on."""
        needed = set()
        for item in reports:
            report = item.report
            task = self._tasks.get(report.task_id)
            if task is None or not isinstance(report, Completed | Failed | BpmnErrorReport):
                continue
            if task.instance_id not in self._instances:  # deferred: decided in a later round
                continue
            if not lifecycle.is_current(task, report.attempt):
                needed.add(task.id)
        if needed:
            await self._ledger.load(self._db, sorted(needed))

    def _apply(self, item: IncomingReport, task: TaskRow) -> None:
        report = item.report
        waiting = task.status == "queued" and task.attempt == report.attempt
        self._apply_report(item, report, task)
        # A worker took the waiting attempt: a claim, or an outcome sent without one.
        if waiting and (task.status != "queued" or task.attempt != report.attempt):
            self._uow.task_events.append(("claimed", task.topic))

    def _apply_report(self, item: IncomingReport, report: Report, task: TaskRow) -> None:
        if isinstance(report, Claimed):
            self._claim(item, report, task)
        elif isinstance(report, Completed | BpmnErrorReport):
            self._outcome_report(item, report, task)
        elif isinstance(report, Failed):
            self._failure(item, report, task)
        elif isinstance(report, ExtendLock):
            self._extend(item, report, task)
        elif isinstance(report, Released):
            self._release(item, report, task)

    # --- leases ------------------------------------------------------------------------

    def _claim(self, item: IncomingReport, report: Claimed, task: TaskRow) -> None:
        decision = lifecycle.claim(task, report, instance_cancelled=self._cancelled(task))
        self._carry_out(item, task, decision)

    def _cancelled(self, task: TaskRow) -> bool:
        return self._instances[task.instance_id].status == "cancelled"

    def _extend(self, item: IncomingReport, report: ExtendLock, task: TaskRow) -> None:
        decision = lifecycle.extend(task, report, instance_cancelled=self._cancelled(task))
        self._carry_out(item, task, decision)

    def _release(self, item: IncomingReport, report: Released, task: TaskRow) -> None:
        self._carry_out(item, task, lifecycle.release(task, report))

    # --- outcomes ----------------------------------------------------------------------

    def _seen_before(
        self, item: IncomingReport, report: Completed | Failed | BpmnErrorReport, task: TaskRow
    ) -> tuple[bool, bytes]:
        """Record a repeat in the ledger and answer it; True when it was one."""
        payload_hash = report_fingerprint(report)
        found = self._ledger.recorded_for(report)
        if found is None:
            return False, payload_hash
        slot, recorded = found
        repeat = lifecycle.repeat(recorded, report, payload_hash)
        self._uow.repeat(task.id, slot, conflict=repeat.conflict)
        self._notify(item, repeat.answer)
        return True, payload_hash

    def _outcome_report(
        self, item: IncomingReport, report: Completed | BpmnErrorReport, task: TaskRow
    ) -> None:
        repeated, payload_hash = self._seen_before(item, report, task)
        if repeated:
            return
        self._ledger.insert(report, payload_hash)
        cancelled = self._cancelled(task)
        if isinstance(report, Completed):
            decision = lifecycle.complete(task, report, instance_cancelled=cancelled)
        else:
            decision = lifecycle.bpmn_error(task, report, instance_cancelled=cancelled)
        self._carry_out(item, task, decision)
        if isinstance(decision.step, Completed):
            self._advance(task, decision.step)
        elif decision.step is not None:
            self._business_error(task, decision.step)

    def _advance(self, task: TaskRow, report: Completed) -> None:
        state = self._state(task.instance_id)
        try:
            transition = complete_task(self._process(task), state, task.id, report.variables)
        except EngineStepError as exc:
            self._engine_incident(task, exc)
            return
        self._apply_transition(task, transition)

    def _business_error(self, task: TaskRow, report: BpmnErrorReport) -> None:
        """To the error boundary event that catches the code, else an incident."""
        state = self._state(task.instance_id)
        try:
            transition = error_task(
                self._process(task), state, task.id, report.code, report.message, report.variables
            )
        except EngineStepError as exc:
            self._engine_incident(task, exc)
            return
        if transition is not None:
            self._uow.count("business_errors_caught")
            self._apply_transition(task, transition)
            return
        apply_task_decision(self._uow, task, lifecycle.uncaught_error(task, report))

    def _apply_transition(self, task: TaskRow, transition: Transition) -> None:
        self._states[task.instance_id] = transition.state
        self._uow.changed_instances[task.instance_id] = transition.state
        apply_transition(self._uow, self._info(task.instance_id), transition)

    def _engine_incident(self, task: TaskRow, exc: EngineStepError) -> None:
        if self._from_copies:  # the copy is older than the rows: no incident, decide again
            raise StaleCopy(f"recent copy of instance {task.instance_id}: {exc}") from exc
        log.error("cannot advance instance %s: %s", task.instance_id, exc)
        self._uow.task_incident(task, "engine", str(exc))

    def _failure(self, item: IncomingReport, report: Failed, task: TaskRow) -> None:
        repeated, payload_hash = self._seen_before(item, report, task)
        if repeated:
            return
        self._ledger.insert(report, payload_hash)
        policy = self._retry_policy(task)
        decision = lifecycle.fail(task, report, policy=policy, unit_random=random.random())
        self._carry_out(item, task, decision)

    # --- helpers -----------------------------------------------------------------------

    def _process(self, task: TaskRow) -> Process:
        return self._processes.cached(self._instances[task.instance_id].definition_id)

    def _retry_policy(self, task: TaskRow) -> RetryPolicy:
        """An external task's policy; a call activity's task fails at once (its child could
        not start: an operator retries it)."""
        node = self._process(task).nodes[task.node_id]
        if isinstance(node, ServiceTask | UserTask):
            return node.retry
        return NO_RETRIES

    def _state(self, instance_id: str) -> InstanceState:
        return self._states[instance_id]

    def _info(self, instance_id: str) -> InstanceInfo:
        row = self._instances[instance_id]
        return InstanceInfo(instance_id, row.process_key, row.business_key, row.traceparent)

    def _carry_out(self, item: IncomingReport, task: TaskRow, decision: lifecycle.Decision) -> None:
        """Write what the task's lifecycle decided; answer the worker."""
        if decision.sends:  # only a task message needs the instance (claims are half the reports)
            info = self._info(task.instance_id)
            node = self._process(task).nodes[task.node_id]
            variables = task_variables(self._state(task.instance_id), task.id, fetch_list(node))
            apply_task_decision(self._uow, task, decision, info, variables)
        else:
            apply_task_decision(self._uow, task, decision)
        if decision.answer is not None:
            self._notify(item, decision.answer)

    def _notify(
        self, item: IncomingReport, notice: LockAnswer | TaskRevoked | ReportAnswer
    ) -> None:
        if item.reply_to:
            body = orjson.dumps(notice.model_dump(mode="json"))
            self._outcome.notices.append(Notice(item.reply_to, body))
