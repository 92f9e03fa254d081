"""A task's lifecycle, pure: (task row, event) -> decision. No I/O, no clock, no randomness.

One function per event: a worker's report (claim, extend, release, complete, bpmn_error,
fail), the reaper's (an expired lease, a retry whose delay ran out), the dispatch watch's (no
claim within the dispatch deadline) and an operator's (retry, cancel). Each returns a
Decision: the row's new state, the message to send, the history line, incident and counter
to write, the answer for the worker and the engine step to run. The shell (daemon/reports.py,
reaper.py, dispatch.py, operations.py) loads the rows, calls these, and writes what they
decided (daemon/effects.py, apply_task_decision).

Times are durations (a lease of `lease_ms`, a retry after `due_ms`) that the store anchors at
its own now() when it writes: the rules never need the clock. Randomness (retry jitter)
comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

from orchestrator.engine.dispatch import (
    DispatchLost,
    QueueState,
    Redispatch,
    after_waiting,
    lost_message,
)
from orchestrator.engine.retry import GiveUp, after_failure
from orchestrator.engine.state import Record
from orchestrator.errors import InvalidState
from orchestrator.model.definition import RetryPolicy
from orchestrator.model.wire import (
    BpmnErrorReport,
    Claimed,
    Completed,
    ExtendLock,
    Failed,
    LockAnswer,
    Released,
    ReportAnswer,
    TaskRevoked,
)

TaskStatus = Literal["queued", "claimed", "retry_wait", "incident", "completed", "cancelled"]
#: A task in one of these still waits for an outcome: a report may settle it.
OPEN_STATUSES: frozenset[str] = frozenset({"queued", "claimed", "retry_wait", "incident"})


class TaskFacts(Protocol):
    """What the rules read of a task: a store TaskRow has it all."""

    @property
    def id(self) -> str: ...
    @property
    def node_id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def status(self) -> TaskStatus: ...
    @property
    def attempt(self) -> int: ...
    @property
    def retries_left(self) -> int: ...
    @property
    def lock_ms(self) -> int: ...
    @property
    def worker_id(self) -> str | None: ...
    @property
    def lease_expiries(self) -> int: ...
    @property
    def lease_ms(self) -> int | None: ...
    @property
    def due_ms(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_details(self) -> str | None: ...


class Recorded(Protocol):
    """The ledger's entry of an earlier report (daemon/ledger.py, LedgerEntry)."""

    @property
    def kind(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def payload_hash(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TaskState:
    """The task row's new values."""

    status: TaskStatus
    attempt: int
    retries_left: int
    worker_id: str | None
    lease_expiries: int
    #: The lease runs this long from the write (None: no lease, or the one it has).
    lease_ms: int | None
    #: A retry is due this long after the write.
    due_ms: int | None
    #: The last attempt's error: what the next attempt's worker is told.
    error: str | None
    error_details: str | None

    @classmethod
    def of(cls, task: TaskFacts) -> TaskState:
        return cls(
            task.status,
            task.attempt,
            task.retries_left,
            task.worker_id,
            task.lease_expiries,
            task.lease_ms,
            task.due_ms,
            task.error,
            task.error_details,
        )


@dataclass(frozen=True, slots=True)
class TaskIncident:
    """An incident that holds the task (and its instance) until an operator acts."""

    kind: str
    message: str
    details: str | None = None


Answer = LockAnswer | TaskRevoked | ReportAnswer


@dataclass(frozen=True, slots=True)
class Decision:
    """What one event does to a task. The default decision changes nothing."""

    #: The row's new state; None leaves the row as it is.
    state: TaskState | None = None
    #: Publish the task message of the new attempt (state.attempt).
    dispatch: bool = False
    #: Publish the current attempt's message again as its k-th re-send (0: no re-send).
    resend: int = 0
    #: The engine step to run with this outcome: complete_task for a completion, error_task
    #: for a business error.
    step: Completed | BpmnErrorReport | None = None
    #: For the worker that sent the report (or, on a cancel, the task's holder).
    answer: Answer | None = None
    incident: TaskIncident | None = None
    #: Resolve the task's open incidents with this resolution.
    resolve: str | None = None
    #: A line of the instance's history.
    record: Record | None = None
    counter: str | None = None

    @property
    def sends(self) -> bool:
        """A task message goes out: a new attempt's, or a re-send."""
        return self.dispatch or self.resend > 0


UNCHANGED = Decision()


@dataclass(frozen=True, slots=True)
class Repeat:
    """A report the ledger already holds an entry for: answered, counted, never applied."""

    #: The payload (or the kind) differs from the one recorded first.
    conflict: bool
    answer: ReportAnswer


def is_open(status: str) -> bool:
    return status in OPEN_STATUSES


def is_current(task: TaskFacts, attempt: int) -> bool:
    """`attempt` is the task's current one, and nobody has reported its outcome yet."""
    return task.attempt == attempt and (task.status == "queued" or task.status == "claimed")


def _holds(task: TaskFacts, report: Claimed | ExtendLock | Released) -> bool:
    return (
        task.status == "claimed"
        and task.attempt == report.attempt
        and task.worker_id == report.worker_id
    )


def _takes_lease(task: TaskFacts, report: Claimed | ExtendLock | Released) -> bool:
    """The holder, or anyone while nobody holds the current attempt yet: a heartbeat or a
    release of it then counts as its claim (docs/wire-protocol.md)."""
    return (task.status == "queued" and task.attempt == report.attempt) or _holds(task, report)


def _leased(task: TaskFacts, worker_id: str, lease_ms: int) -> TaskState:
    # Built field by field, not with replace(): claims are half of all reports.
    return TaskState(
        "claimed",
        task.attempt,
        task.retries_left,
        worker_id,
        task.lease_expiries,
        lease_ms,
        task.due_ms,
        task.error,
        task.error_details,
    )


def _next_attempt(
    task: TaskFacts,
    *,
    error: str | None,
    error_details: str | None,
    retries_left: int | None = None,
    lease_expiries: int | None = None,
) -> TaskState:
    """The task's next attempt, open to any worker. Every road back to the queue comes here:
    a release, an expired lease, a due retry, an operator's retry."""
    return TaskState(
        "queued",
        task.attempt + 1,
        task.retries_left if retries_left is None else retries_left,
        None,
        task.lease_expiries if lease_expiries is None else lease_expiries,
        None,
        None,
        error,
        error_details,
    )


def _record(task: TaskFacts, kind: str, **detail: object) -> Record:
    return Record(kind, task.node_id, task.id, detail)


def _closed_status(instance_cancelled: bool) -> Literal["cancelled", "closed"]:
    """Why a closed task takes no report: its instance was cancelled, or it ended otherwise
    (its instance moved on without it)."""
    return "cancelled" if instance_cancelled else "closed"


# --- leases ---------------------------------------------------------------------------------


def revoke(task: TaskFacts, attempt: int, *, instance_cancelled: bool) -> TaskRevoked:
    """Tell a worker that `attempt` is not its own (any more): another worker or a newer
    attempt has the task, or the task is closed."""
    reason = "not the current holder"
    if not is_open(task.status):
        reason = _closed_status(instance_cancelled)
    return TaskRevoked(task_id=task.id, attempt=attempt, reason=reason)


def _lock_answer(
    task: TaskFacts,
    report: Claimed | ExtendLock,
    request_id: str,
    held: bool,
    lock_ms: int,
    instance_cancelled: bool,
) -> LockAnswer:
    return LockAnswer(
        task_id=task.id,
        attempt=report.attempt,
        request_id=request_id,
        held=held,
        cancelled=instance_cancelled,
        lock_expires_in_ms=lock_ms if held else None,
    )


def claim(task: TaskFacts, report: Claimed, *, instance_cancelled: bool) -> Decision:
    """A worker took the task's message. The first claim of the current attempt takes the
    lease for the task's lock_ms; the holder's repeated claim keeps it (not renewed: that is
    what extend_lock is for); anyone else is refused. With a request_id the answer is a
    lock_answer either way; without one only a refusal is answered (task_revoked)."""
    state = None
    if task.status == "queued" and task.attempt == report.attempt:
        state = _leased(task, report.worker_id, task.lock_ms)
    held = state is not None or _holds(task, report)
    answer: Answer | None = None
    if report.request_id is not None:
        answer = _lock_answer(
            task, report, report.request_id, held, task.lock_ms, instance_cancelled
        )
    elif not held:
        answer = revoke(task, report.attempt, instance_cancelled=instance_cancelled)
    if held:
        return Decision(state, answer=answer)
    return Decision(answer=answer, counter="claims_refused")


def extend(task: TaskFacts, report: ExtendLock, *, instance_cancelled: bool) -> Decision:
    """A heartbeat: the lease runs `report.lock_ms` from now for the holder (or for anyone,
    while nobody holds the current attempt). Anyone else is told it does not hold the task;
    nothing changes, nothing is counted."""
    held = _takes_lease(task, report)
    answer = _lock_answer(task, report, report.request_id, held, report.lock_ms, instance_cancelled)
    if not held:
        return Decision(answer=answer)
    return Decision(_leased(task, report.worker_id, report.lock_ms), answer=answer)


def release(task: TaskFacts, report: Released) -> Decision:
    """The holder gives the task back unfinished (it shuts down): the next attempt goes out
    now. A release of an attempt the worker does not hold changes nothing."""
    if not _takes_lease(task, report):
        return UNCHANGED
    return Decision(
        _next_attempt(
            task,
            error=f"released unfinished by {report.worker_id} (shutting down)",
            error_details=None,
        ),
        dispatch=True,
        record=_record(task, "task_released", attempt=task.attempt, worker=report.worker_id),
    )


# --- outcomes -------------------------------------------------------------------------------


def repeat(
    recorded: Recorded, report: Completed | Failed | BpmnErrorReport, payload_hash: bytes
) -> Repeat:
    """A report the ledger has seen (its slot: the task's one outcome, or this attempt's
    failure). The first report wins: this one is a duplicate if it says the same thing,
    a conflict if its payload or kind differs."""
    conflict = recorded.payload_hash != payload_hash or recorded.kind != report.type
    return Repeat(
        conflict,
        ReportAnswer(
            task_id=report.task_id,
            attempt=report.attempt,
            status="conflict" if conflict else "duplicate",
            recorded_kind=recorded.kind,
            recorded_attempt=recorded.attempt,
        ),
    )


def _settle(
    task: TaskFacts, report: Completed | BpmnErrorReport, instance_cancelled: bool
) -> Decision:
    """The first outcome of an open task wins, whichever attempt sends it: a worker whose
    lease expired may still finish first. One that comes while the task holds an incident
    settles the incident. A closed task takes no outcome (answered, counted)."""
    if not is_open(task.status):
        answer = ReportAnswer(
            task_id=task.id, attempt=report.attempt, status=_closed_status(instance_cancelled)
        )
        return Decision(answer=answer, counter="reports_after_close")
    state = TaskState(
        "completed",
        task.attempt,
        task.retries_left,
        report.worker_id,
        task.lease_expiries,
        None,
        None,
        task.error,
        task.error_details,
    )
    if task.status == "incident":
        return Decision(state, step=report, resolve=f"{report.type} late")
    return Decision(state, step=report)


def complete(task: TaskFacts, report: Completed, *, instance_cancelled: bool) -> Decision:
    """A completion, not seen before (see `repeat`): the instance moves on (complete_task)."""
    return _settle(task, report, instance_cancelled)


def bpmn_error(task: TaskFacts, report: BpmnErrorReport, *, instance_cancelled: bool) -> Decision:
    """A business error, not seen before: the task is settled and the error goes to the
    boundary event that catches its code (error_task; `uncaught_error` when none does)."""
    return _settle(task, report, instance_cancelled)


def uncaught_error(task: TaskFacts, report: BpmnErrorReport) -> Decision:
    """No error boundary event catches the business error: the task holds an incident."""
    state = replace(
        TaskState.of(task),
        status="incident",
        error=f"business error {report.code}",
        error_details=report.message,
    )
    incident = TaskIncident(
        "unhandled_bpmn_error",
        f"business error {report.code!r} has no matching error boundary event",
        report.message,
    )
    return Decision(state, incident=incident)


def fail(task: TaskFacts, report: Failed, *, policy: RetryPolicy, unit_random: float) -> Decision:
    """A failed attempt, not seen before: a retry after a delay, or an incident (retry
    policy: engine/retry.py; `unit_random` in [0, 1) sets its jitter). The failure of an
    attempt that is no longer current is stale: answered, counted, not applied."""
    if not is_current(task, report.attempt):
        answer = ReportAnswer(task_id=task.id, attempt=report.attempt, status="stale")
        return Decision(answer=answer, counter="reports_stale")
    decision = after_failure(
        policy,
        attempt=task.attempt,
        retries_left=task.retries_left,
        error_code=report.error_code,
        retries_override=report.retries,
        delay_override_ms=report.retry_delay_ms,
        unit_random=unit_random,
    )
    failed = replace(
        TaskState.of(task),
        worker_id=None,
        lease_ms=None,
        error=report.error_message,
        error_details=report.error_details,
    )
    record = _record(task, "task_failed", attempt=task.attempt, error=report.error_message)
    if isinstance(decision, GiveUp):
        incident = TaskIncident(
            "failed_task", f"{report.error_message} ({decision.reason})", report.error_details
        )
        state = replace(failed, status="incident", retries_left=0)
        return Decision(state, record=record, incident=incident)
    state = replace(
        failed, status="retry_wait", retries_left=decision.retries_left, due_ms=decision.delay_ms
    )
    return Decision(state, record=record)


# --- the reaper, the dispatch watch ---------------------------------------------------------


def expire(task: TaskFacts, *, max_expiries: int) -> Decision:
    """The holder did not report within its lease: the next attempt goes out, unless the
    task's leases have now expired `max_expiries` times (its workers die or hang on it)."""
    expiries = task.lease_expiries + 1
    error = f"lease expired: {task.worker_id} did not report within its lock"
    record = _record(
        task, "lease_expired", attempt=task.attempt, worker=task.worker_id, expiries=expiries
    )
    if expiries < max_expiries:
        state = _next_attempt(task, error=error, error_details=None, lease_expiries=expiries)
        return Decision(state, dispatch=True, record=record, counter="leases_expired")
    state = replace(
        TaskState.of(task),
        status="incident",
        worker_id=None,
        lease_expiries=expiries,
        lease_ms=None,
        error=error,
        error_details=None,
    )
    incident = TaskIncident(
        "lease_expired",
        f"the lease of task {task.id} expired {expiries} times (its workers die or hang)",
    )
    return Decision(state, record=record, incident=incident, counter="leases_expired")


def retry_due(task: TaskFacts) -> Decision:
    """A failed task's retry delay ran out: its next attempt goes out."""
    state = _next_attempt(task, error=task.error, error_details=task.error_details)
    return Decision(
        state, dispatch=True, record=_record(task, "task_retry_due", attempt=task.attempt + 1)
    )


def due(task: TaskFacts, *, max_expiries: int) -> Decision:
    """What the reaper found due: a claimed task's lease, or a waiting retry."""
    if task.status == "claimed":
        return expire(task, max_expiries=max_expiries)
    return retry_due(task)


def redispatch(
    task: TaskFacts,
    *,
    waited_ms: int,
    deadline_ms: int,
    redispatches: int,
    max_redispatches: int,
    queue: QueueState,
    read_for_ms: int | None,
    caught_up_for_ms: int | None = None,
) -> Decision:
    """A queued task whose message went out `waited_ms` ago, never claimed: its message goes
    out again, or after `max_redispatches` re-sends the task holds an incident (the rule is
    engine/dispatch.py's). A re-send changes no row: the store restarts its dispatch clock."""
    decision = after_waiting(
        waited_ms,
        deadline_ms=deadline_ms,
        redispatches=redispatches,
        max_redispatches=max_redispatches,
        queue=queue,
        read_for_ms=read_for_ms,
        caught_up_for_ms=caught_up_for_ms,
    )
    if isinstance(decision, Redispatch):
        record = _record(
            task,
            "task_redispatched",
            attempt=task.attempt,
            redispatch=decision.number,
            waited_ms=waited_ms,
            queue_ready=queue.ready,
            queue_consumers=queue.consumers,
        )
        return Decision(resend=decision.number, record=record, counter="tasks_redispatched")
    if isinstance(decision, DispatchLost):
        incident = TaskIncident("dispatch_lost", lost_message(decision.redispatches, task.topic))
        return Decision(replace(TaskState.of(task), status="incident"), incident=incident)
    return UNCHANGED


# --- operators ------------------------------------------------------------------------------


def operator_retry(
    task: TaskFacts, *, retries: int, incident_id: str, instance_active: bool
) -> Decision:
    """An operator resolves the task's incident by granting `retries` attempts: the next
    attempt goes out at once, and its leases count from zero again."""
    if task.status != "incident" or not instance_active:
        raise InvalidState(f"task {task.id} is {task.status}, not in an incident")
    state = _next_attempt(
        task,
        error=task.error,
        error_details=task.error_details,
        retries_left=retries - 1,
        lease_expiries=0,
    )
    record = _record(task, "task_retried", incident_id=incident_id, attempt=state.attempt)
    return Decision(
        state, dispatch=True, resolve="retried", record=record, counter="incidents_retried"
    )


def cancel(task: TaskFacts) -> Decision:
    """The instance is cancelled: its open task is withdrawn. A holder is told to stop now
    (the answer goes to its inbox) rather than at its next heartbeat or report."""
    state = replace(
        TaskState.of(task), status="cancelled", worker_id=None, lease_ms=None, due_ms=None
    )
    answer = None
    if task.status == "claimed" and task.worker_id:
        answer = TaskRevoked(task_id=task.id, attempt=task.attempt, reason="cancelled")
    return Decision(state, answer=answer, record=_record(task, "task_cancelled"))
