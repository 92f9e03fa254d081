"""The task lifecycle's rules (engine/task.py), one table per event: what a claim, a
heartbeat, a release, an outcome, a failure, an expired lease, a lost message, an operator's
retry or cancel does to a task, and what the worker is told."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest

from orchestrator.engine import task as lifecycle
from orchestrator.engine.dispatch import QueueState, lost_message
from orchestrator.engine.state import Record
from orchestrator.engine.task import UNCHANGED, Decision, TaskIncident, TaskState, TaskStatus
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
from orchestrator.store.unit_of_work import TaskRow

TASK_ID = "5f0c1c9e-8a7e-4d6b-9a51-2f5c3d1e0a11"
LOCK_MS = 30_000
POLICY = RetryPolicy(
    initial_backoff_ms=100,
    backoff_coefficient=2,
    max_backoff_ms=1000,
    jitter=0,
    non_retryable_codes=("FATAL",),
)


def task(
    status: TaskStatus = "claimed",
    attempt: int = 1,
    worker: str | None = "w1",
    **fields: Any,
) -> TaskRow:
    """A task row as the shell hands it to the rules (claimed by w1 unless told)."""
    if status != "claimed" and worker == "w1":
        worker = None
    row = TaskRow(TASK_ID, "i1", "charge", "payments", status, attempt, 2, LOCK_MS, worker, None, 0)
    for name, value in fields.items():
        setattr(row, name, value)
    return row


def moved(row: TaskRow, **changes: Any) -> TaskState:
    """The row's state with `changes`: what a rule is expected to write."""
    return replace(TaskState.of(row), **changes)


def ids(attempt: int = 1, worker: str = "w1") -> dict[str, Any]:
    return {"task_id": TASK_ID, "attempt": attempt, "worker_id": worker}


def revoked(reason: str, attempt: int = 1) -> TaskRevoked:
    return TaskRevoked(task_id=TASK_ID, attempt=attempt, reason=reason)


def lock_answer(held: bool, *, lock_ms: int = LOCK_MS, cancelled: bool = False) -> LockAnswer:
    return LockAnswer(
        task_id=TASK_ID,
        attempt=1,
        request_id="r1",
        held=held,
        cancelled=cancelled,
        lock_expires_in_ms=lock_ms if held else None,
    )


def answered(status: Any, attempt: int = 1) -> ReportAnswer:
    return ReportAnswer(task_id=TASK_ID, attempt=attempt, status=status)


def test_every_status_the_store_allows_is_a_task_status() -> None:
    migration = Path(__file__).parents[2] / "orchestrator/store/migrations/0001_initial.sql"
    check = re.search(r"\('queued'[^)]*\)", migration.read_text())
    assert check is not None
    assert set(re.findall(r"'(\w+)'", check.group())) == set(get_args(TaskStatus))
    closed = set(get_args(TaskStatus)) - lifecycle.OPEN_STATUSES
    assert closed == {"completed", "cancelled"}


# --- claims ---------------------------------------------------------------------------------

CLAIMS = [
    # (row, claim: attempt, worker, request_id; instance cancelled) -> state, answer, counter
    pytest.param(
        task("queued"), (1, "w1", None), False, "lease", None, None, id="first-claim-takes-lease"
    ),
    pytest.param(
        task("queued"),
        (1, "w1", "r1"),
        False,
        "lease",
        lock_answer(True),
        None,
        id="first-claim-with-request-id-answered-held",
    ),
    pytest.param(
        task(), (1, "w1", None), False, None, None, None, id="holder-claims-again-nothing-changes"
    ),
    pytest.param(
        task(),
        (1, "w1", "r1"),
        False,
        None,
        lock_answer(True),
        None,
        id="holder-asks-again-still-held-not-renewed",
    ),
    pytest.param(
        task(),
        (1, "w2", None),
        False,
        None,
        revoked("not the current holder"),
        "claims_refused",
        id="second-worker-refused",
    ),
    pytest.param(
        task(),
        (1, "w2", "r1"),
        False,
        None,
        lock_answer(False),
        "claims_refused",
        id="second-worker-with-request-id-answered-not-held",
    ),
    pytest.param(
        task("queued", attempt=2),
        (1, "w1", None),
        False,
        None,
        revoked("not the current holder"),
        "claims_refused",
        id="stale-attempt-refused",
    ),
    pytest.param(
        task("retry_wait"),
        (1, "w1", None),
        False,
        None,
        revoked("not the current holder"),
        "claims_refused",
        id="failed-attempt-refused",
    ),
    pytest.param(
        task("completed"),
        (1, "w1", None),
        False,
        None,
        revoked("closed"),
        "claims_refused",
        id="closed-task",
    ),
    pytest.param(
        task("cancelled"),
        (1, "w1", None),
        True,
        None,
        revoked("cancelled"),
        "claims_refused",
        id="cancelled-instance",
    ),
    pytest.param(
        task("cancelled"),
        (1, "w1", "r1"),
        True,
        None,
        lock_answer(False, cancelled=True),
        "claims_refused",
        id="cancelled-instance-with-request-id",
    ),
]


@pytest.mark.parametrize(("row", "claim", "cancelled", "state", "answer", "counter"), CLAIMS)
def test_claim(
    row: TaskRow,
    claim: tuple[int, str, str | None],
    cancelled: bool,
    state: str | None,
    answer: Any,
    counter: str | None,
) -> None:
    attempt, worker, request_id = claim
    report = Claimed(**ids(attempt, worker), request_id=request_id)
    decision = lifecycle.claim(row, report, instance_cancelled=cancelled)
    expected = moved(row, status="claimed", worker_id=worker, lease_ms=LOCK_MS)
    assert decision == Decision(expected if state else None, answer=answer, counter=counter)


# --- heartbeats and releases ----------------------------------------------------------------

EXTENDS = [
    # (row, heartbeat: attempt, worker; instance cancelled) -> holds the lease
    pytest.param(task(), (1, "w1"), False, True, id="holder-renews"),
    # Nobody holds the current attempt yet: the heartbeat counts as its claim.
    pytest.param(task("queued"), (1, "w1"), False, True, id="queued-task-takes-lease"),
    pytest.param(task(), (1, "w2"), False, False, id="other-worker-not-held"),
    pytest.param(task("queued", attempt=2), (1, "w1"), False, False, id="stale-attempt"),
    pytest.param(task("completed"), (1, "w1"), False, False, id="closed-task"),
    pytest.param(task("cancelled"), (1, "w1"), True, False, id="cancelled-instance"),
]


@pytest.mark.parametrize(("row", "heartbeat", "cancelled", "held"), EXTENDS)
def test_extend(row: TaskRow, heartbeat: tuple[int, str], cancelled: bool, held: bool) -> None:
    attempt, worker = heartbeat
    report = ExtendLock(**ids(attempt, worker), lock_ms=5000, request_id="r1")
    decision = lifecycle.extend(row, report, instance_cancelled=cancelled)
    answer = lock_answer(held, lock_ms=5000, cancelled=cancelled)
    state = moved(row, status="claimed", worker_id=worker, lease_ms=5000) if held else None
    assert decision == Decision(state, answer=answer)  # a refusal is not counted


RELEASES = [
    pytest.param(task(), (1, "w1"), True, id="holder-gives-back"),
    pytest.param(task("queued"), (1, "w1"), True, id="given-back-before-the-claim-came"),
    pytest.param(task(), (1, "w2"), False, id="other-worker-ignored"),
    pytest.param(task("queued", attempt=2), (1, "w1"), False, id="stale-attempt-ignored"),
    pytest.param(task("completed"), (1, "w1"), False, id="closed-task-ignored"),
]


@pytest.mark.parametrize(("row", "release", "next_attempt"), RELEASES)
def test_release(row: TaskRow, release: tuple[int, str], next_attempt: bool) -> None:
    attempt, worker = release
    decision = lifecycle.release(row, Released(**ids(attempt, worker)))
    if not next_attempt:
        assert decision is UNCHANGED
        return
    assert decision == Decision(
        moved(
            row,
            status="queued",
            attempt=2,
            worker_id=None,
            error="released unfinished by w1 (shutting down)",
        ),
        dispatch=True,
        record=Record("task_released", "charge", TASK_ID, {"attempt": 1, "worker": "w1"}),
    )
    assert decision.sends


# --- outcomes -------------------------------------------------------------------------------

OUTCOMES = [
    # (row, report attempt, instance cancelled) -> settles (and the incident it resolves), or
    # the answer for a closed task
    pytest.param(task(), 1, False, True, None, id="holder-completes"),
    pytest.param(task("queued"), 1, False, True, None, id="completion-before-its-claim"),
    # Its lease expired and attempt 2 went out; attempt 1 still finished first: it wins.
    pytest.param(task("queued", attempt=2), 1, False, True, None, id="late-after-lease-expiry"),
    pytest.param(task("retry_wait"), 1, False, True, None, id="after-a-failure-report"),
    pytest.param(task("incident"), 1, False, True, "late", id="during-incident-settles-it"),
    pytest.param(task("completed"), 1, False, False, "closed", id="closed-task"),
    pytest.param(task("cancelled"), 1, True, False, "cancelled", id="cancelled-instance"),
]


@pytest.mark.parametrize("kind", ["completed", "bpmn_error"])
@pytest.mark.parametrize(("row", "attempt", "cancelled", "settles", "note"), OUTCOMES)
def test_outcome(
    kind: str, row: TaskRow, attempt: int, cancelled: bool, settles: bool, note: str | None
) -> None:
    report: Completed | BpmnErrorReport
    if kind == "completed":
        report = Completed(**ids(attempt, "w9"))
        decision = lifecycle.complete(row, report, instance_cancelled=cancelled)
    else:
        report = BpmnErrorReport(**ids(attempt, "w9"), code="E1")
        decision = lifecycle.bpmn_error(row, report, instance_cancelled=cancelled)
    if not settles:
        assert decision == Decision(answer=answered(note), counter="reports_after_close")
        return
    state = moved(row, status="completed", worker_id="w9", lease_ms=None, due_ms=None)
    resolve = f"{kind} late" if note else None
    assert decision == Decision(state, step=report, resolve=resolve)


def test_an_uncaught_business_error_holds_the_task_in_an_incident() -> None:
    row = task("completed", worker="w9")
    report = BpmnErrorReport(**ids(), code="E1", message="card declined")
    assert lifecycle.uncaught_error(row, report) == Decision(
        moved(row, status="incident", error="business error E1", error_details="card declined"),
        incident=TaskIncident(
            "unhandled_bpmn_error",
            "business error 'E1' has no matching error boundary event",
            "card declined",
        ),
    )


class Entry:
    """A ledger entry (daemon/ledger.py's LedgerEntry has the same three fields)."""

    def __init__(self, kind: str, attempt: int, payload_hash: bytes) -> None:
        self.kind, self.attempt, self.payload_hash = kind, attempt, payload_hash


REPEATS = [
    # (recorded first, the repeat's kind and payload hash) -> conflict
    pytest.param(Entry("completed", 1, b"h1"), "completed", b"h1", False, id="same-duplicate"),
    pytest.param(
        Entry("completed", 1, b"h1"), "completed", b"h2", True, id="other-payload-conflict"
    ),
    pytest.param(Entry("completed", 1, b"h1"), "bpmn_error", b"h1", True, id="other-kind-conflict"),
    pytest.param(Entry("failed", 1, b"h1"), "failed", b"h1", False, id="failure-repeated"),
]


@pytest.mark.parametrize(("recorded", "kind", "payload_hash", "conflict"), REPEATS)
def test_a_repeat_is_answered_with_what_was_recorded_first(
    recorded: Entry, kind: str, payload_hash: bytes, conflict: bool
) -> None:
    # Attempt 2 repeats what attempt 1 recorded: the first outcome wins, whichever attempt.
    report: Completed | Failed | BpmnErrorReport
    if kind == "completed":
        report = Completed(**ids(2, "w2"))
    elif kind == "bpmn_error":
        report = BpmnErrorReport(**ids(2, "w2"), code="E1")
    else:
        report = Failed(**ids(2, "w2"), error_message="boom")
    repeat = lifecycle.repeat(recorded, report, payload_hash)
    assert repeat == lifecycle.Repeat(
        conflict,
        ReportAnswer(
            task_id=TASK_ID,
            attempt=2,
            status="conflict" if conflict else "duplicate",
            recorded_kind=recorded.kind,
            recorded_attempt=1,
        ),
    )


# --- failures -------------------------------------------------------------------------------

FAILURES = [
    # (row, failure fields) -> new status, retries_left, due_ms, incident message
    pytest.param(task(), {}, "retry_wait", 1, 100, None, id="retried-after-backoff"),
    pytest.param(task("queued"), {}, "retry_wait", 1, 100, None, id="failed-before-claim-came"),
    pytest.param(task(attempt=2), {"attempt": 2}, "retry_wait", 1, 200, None, id="backoff-grows"),
    pytest.param(
        task(retries_left=0),
        {},
        "incident",
        0,
        None,
        "boom (no retries left)",
        id="retries-run-out",
    ),
    pytest.param(
        task(),
        {"error_code": "FATAL"},
        "incident",
        0,
        None,
        "boom (error code 'FATAL' is not retryable)",
        id="non-retryable-code",
    ),
    pytest.param(
        task(retries_left=0),
        {"retries": 5, "retry_delay_ms": 7},
        "retry_wait",
        4,
        7,
        None,
        id="worker-grants-retries",
    ),
    pytest.param(
        task(),
        {"retries": 0},
        "incident",
        0,
        None,
        "boom (no retries left)",
        id="worker-says-no-more",
    ),
]


@pytest.mark.parametrize(
    ("row", "fields", "status", "retries_left", "due_ms", "incident"), FAILURES
)
def test_failure_of_the_current_attempt(
    row: TaskRow,
    fields: dict[str, Any],
    status: TaskStatus,
    retries_left: int,
    due_ms: int | None,
    incident: str | None,
) -> None:
    report = Failed(**{**ids(), **fields}, error_message="boom", error_details="trace")
    decision = lifecycle.fail(row, report, policy=POLICY, unit_random=0.5)
    state = moved(
        row,
        status=status,
        retries_left=retries_left,
        due_ms=due_ms,
        worker_id=None,
        lease_ms=None,
        error="boom",
        error_details="trace",
    )
    record = Record("task_failed", "charge", TASK_ID, {"attempt": report.attempt, "error": "boom"})
    raised = TaskIncident("failed_task", incident, "trace") if incident else None
    assert decision == Decision(state, record=record, incident=raised)


STALE_FAILURES = [
    pytest.param(task("queued", attempt=2), id="attempt-expired-since"),
    pytest.param(task("retry_wait"), id="attempt-failed-already"),
    pytest.param(task("incident"), id="attempt-in-incident"),
    pytest.param(task("completed"), id="task-completed"),
    pytest.param(task("cancelled"), id="task-cancelled"),
]


@pytest.mark.parametrize("row", STALE_FAILURES)
def test_failure_of_an_attempt_no_longer_current_is_stale(row: TaskRow) -> None:
    report = Failed(**ids(), error_message="boom")
    decision = lifecycle.fail(row, report, policy=POLICY, unit_random=0.5)
    assert decision == Decision(answer=answered("stale"), counter="reports_stale")
    assert not lifecycle.is_current(row, 1)


# --- the reaper -----------------------------------------------------------------------------

EXPIRIES = [
    # (expiries so far, most allowed) -> the next attempt goes out
    pytest.param(0, 3, True, id="first-expiry-next-attempt"),
    pytest.param(1, 3, True, id="second-expiry-next-attempt"),
    pytest.param(2, 3, False, id="last-expiry-incident"),
    pytest.param(0, 1, False, id="one-allowed-incident-at-once"),
]


@pytest.mark.parametrize(("expiries", "most", "next_attempt"), EXPIRIES)
def test_expired_lease(expiries: int, most: int, next_attempt: bool) -> None:
    row = task(lease_expiries=expiries)
    decision = lifecycle.due(row, max_expiries=most)
    error = "lease expired: w1 did not report within its lock"
    detail = {"attempt": 1, "worker": "w1", "expiries": expiries + 1}
    record = Record("lease_expired", "charge", TASK_ID, detail)
    if next_attempt:
        state = moved(
            row,
            status="queued",
            attempt=2,
            worker_id=None,
            lease_expiries=expiries + 1,
            error=error,
        )
        expected = Decision(state, dispatch=True, record=record, counter="leases_expired")
    else:
        state = moved(
            row, status="incident", worker_id=None, lease_expiries=expiries + 1, error=error
        )
        message = (
            f"the lease of task {TASK_ID} expired {expiries + 1} times (its workers die or hang)"
        )
        incident = TaskIncident("lease_expired", message)
        expected = Decision(state, record=record, incident=incident, counter="leases_expired")
    assert decision == expected


def test_a_due_retry_sends_the_next_attempt_with_the_last_error() -> None:
    row = task("retry_wait", error="boom", error_details="trace", due_ms=None)
    assert lifecycle.due(row, max_expiries=1) == Decision(
        moved(row, status="queued", attempt=2),
        dispatch=True,
        record=Record("task_retry_due", "charge", TASK_ID, {"attempt": 2}),
    )


# --- the dispatch watch ---------------------------------------------------------------------

READING = QueueState(ready=0, consumers=1)

REDISPATCHES = [
    # (waited ms, re-sends so far, queue) -> re-send number, or lost
    pytest.param(999, 0, READING, None, id="within-deadline-waits"),
    pytest.param(5_000, 0, QueueState(0, 0), None, id="nobody-reading-waits"),
    pytest.param(1000, 0, READING, 1, id="past-deadline-sent-again"),
    pytest.param(4000, 2, READING, 3, id="third-resend"),
    pytest.param(8000, 3, READING, "lost", id="after-max-resends-incident"),
]


@pytest.mark.parametrize(("waited_ms", "redispatches", "queue", "outcome"), REDISPATCHES)
def test_dispatch_deadline(
    waited_ms: int, redispatches: int, queue: QueueState, outcome: int | str | None
) -> None:
    row = task("queued")
    decision = lifecycle.redispatch(
        row,
        waited_ms=waited_ms,
        deadline_ms=1000,
        redispatches=redispatches,
        max_redispatches=3,
        queue=queue,
        read_for_ms=None,
    )
    if outcome is None:
        assert decision is UNCHANGED
    elif isinstance(outcome, str):  # lost
        incident = TaskIncident("dispatch_lost", lost_message(3, "payments"))
        assert decision == Decision(moved(row, status="incident"), incident=incident)
    else:
        detail = {
            "attempt": 1,
            "redispatch": outcome,
            "waited_ms": waited_ms,
            "queue_ready": 0,
            "queue_consumers": 1,
        }
        record = Record("task_redispatched", "charge", TASK_ID, detail)
        # The same attempt again: no row changes.
        assert decision == Decision(resend=outcome, record=record, counter="tasks_redispatched")
        assert decision.sends


# --- operators ------------------------------------------------------------------------------


def test_an_operator_retry_resets_the_task_and_sends_the_next_attempt() -> None:
    row = task("incident", retries_left=0, lease_expiries=5, error="boom")
    decision = lifecycle.operator_retry(row, retries=3, incident_id="inc1", instance_active=True)
    assert decision == Decision(
        moved(row, status="queued", attempt=2, retries_left=2, lease_expiries=0),
        dispatch=True,
        resolve="retried",
        record=Record("task_retried", "charge", TASK_ID, {"incident_id": "inc1", "attempt": 2}),
        counter="incidents_retried",
    )


@pytest.mark.parametrize(
    ("status", "active"),
    [("claimed", True), ("retry_wait", True), ("completed", True), ("incident", False)],
)
def test_an_operator_retries_only_a_task_in_an_incident_of_an_active_instance(
    status: TaskStatus, active: bool
) -> None:
    with pytest.raises(InvalidState, match="not in an incident"):
        lifecycle.operator_retry(task(status), retries=1, incident_id="i", instance_active=active)


CANCELS = [
    # (row) -> the holder told to stop
    pytest.param(task(), revoked("cancelled"), id="holder-revoked"),
    pytest.param(task(attempt=3), revoked("cancelled", attempt=3), id="holder-of-attempt-3"),
    pytest.param(task("queued"), None, id="queued-withdrawn"),
    pytest.param(task("retry_wait", due_ms=500), None, id="retry-withdrawn"),
    pytest.param(task("incident"), None, id="incident-withdrawn"),
]


@pytest.mark.parametrize(("row", "answer"), CANCELS)
def test_cancel_withdraws_the_task_and_revokes_its_holder(
    row: TaskRow, answer: TaskRevoked | None
) -> None:
    state = moved(row, status="cancelled", worker_id=None, lease_ms=None, due_ms=None)
    record = Record("task_cancelled", "charge", TASK_ID)
    assert lifecycle.cancel(row) == Decision(state, answer=answer, record=record)
