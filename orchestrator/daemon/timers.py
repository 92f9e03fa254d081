"""The timer scheduler: fires due timers, once each, on whichever engine takes them first.

Timers are rows (migration 0008): the transaction that starts one stores its first due
time, computed by that engine's clock. Every engine runs a scheduler that knows when the
earliest timer is due and sleeps until then, or until a NOTIFY on `orch_timers` (sent at
the commit of every statement that inserts timers) says an earlier one was written. It
reads the earliest due time again after each firing, every 30 s as a safety net, and after
its listening session was lost.

When timers are due it takes them in passes of PASS_LIMIT: one transaction locks the due
rows with their instances (SKIP LOCKED: two engines share a burst, and an instance a round
holds is tried again a moment later), applies step.timer_fired to each, and in the same
statement deletes the timer or, for a cycle that goes on, sets its next due time. A timer
whose instance ended or whose wait the state no longer has is deleted unfired.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from orchestrator.broker.topology import Topology
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_transition
from orchestrator.daemon.event_starts import start_at_event
from orchestrator.daemon.revocations import revoke_notices
from orchestrator.daemon.sender import Sender
from orchestrator.daemon.supervisor import wait_for_any
from orchestrator.definitions.graph import Process, process_starts
from orchestrator.definitions.timers import TimerError, first_due, next_due, parse_timer
from orchestrator.engine.state import CloseWait, InstanceState
from orchestrator.engine.step import EngineStepError, timer_fired
from orchestrator.store.errors import RETRYABLE, LockBusy
from orchestrator.store.listener import Listener
from orchestrator.store.rows import Row
from orchestrator.store.store import Session, Store
from orchestrator.store.unit_of_work import PublishedRow, UnitOfWork, state_from_record

log = logging.getLogger(__name__)
CHANNEL = "orch_timers"
#: Timers fired per transaction.
PASS_LIMIT = 500
#: The earliest due time is read again at least this often (a NOTIFY lost with its session).
SAFETY_S = 30.0
#: A due timer whose instance another session holds is tried again after this (doubling).
BUSY_PAUSE_S = 0.02
BUSY_PAUSE_MAX_S = 0.5


@dataclass
class PassResult:
    taken: int = 0
    fired: int = 0
    uow: UnitOfWork = field(default_factory=UnitOfWork)
    published: list[PublishedRow] = field(default_factory=list)


class TimerScheduler:
    def __init__(
        self, store: Store, sender: Sender, context: EngineContext, topology: Topology
    ) -> None:
        self._store = store
        self._sender = sender
        self._context = context
        self._topology = topology
        self._woken = asyncio.Event()
        #: The earliest due time known (epoch seconds, UTC); None: no timer is kept.
        self._next: float | None = None
        #: The earliest due time notified since the last read of min(due_at) began.
        self._noticed: float | None = None
        self._read_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Listen and fire until `stop`; a lost session or database is waited out."""
        delay = 0.2
        while not stop.is_set():
            listener: Listener | None = None
            try:
                listener = await self._store.listen(CHANNEL, self._notified)
                delay = 0.2
                await self._serve(listener, stop)
            except RETRYABLE as exc:
                log.warning("timer scheduler: %s; again in %.1f s", exc, delay)
                await wait_for_any(stop, delay)
                delay = min(delay * 2, 5.0)
            finally:
                if listener is not None:
                    await listener.close()

    def _notified(self, payload: str) -> None:
        try:
            due = float(payload)
        except ValueError:
            due = time.time()
        self._next = _earliest(self._next, due)
        # Kept apart too: a read of min(due_at) that began before that commit would miss it.
        self._noticed = _earliest(self._noticed, due)
        self._woken.set()

    async def _serve(self, listener: Listener, stop: asyncio.Event) -> None:
        await self._read_next()
        busy = BUSY_PAUSE_S
        while not stop.is_set() and not listener.is_closed():
            now = time.time()
            if time.monotonic() - self._read_at >= SAFETY_S:
                await self._read_next()
                continue
            if self._next is None or self._next > now:
                self._woken.clear()
                until_due = SAFETY_S if self._next is None else self._next - now
                until_safety = SAFETY_S - (time.monotonic() - self._read_at)
                await wait_for_any(stop, max(0.0, min(until_due, until_safety)), self._woken)
                continue
            try:
                fired = await self._fire_due(stop)
            except RETRYABLE:
                raise
            except LockBusy as exc:  # a row held elsewhere past the lock timeout: again soon
                log.debug("timer scheduler: %s", exc)
                fired = 0
            except Exception:  # a bug, not the database: say so, and do not spin
                log.exception("timer scheduler: a pass failed")
                await wait_for_any(stop, BUSY_PAUSE_MAX_S)
                fired = 0
            await self._read_next()
            if fired == 0 and self._next is not None and self._next <= time.time():
                await wait_for_any(stop, busy)  # due, but its instance is held elsewhere
                busy = min(busy * 2, BUSY_PAUSE_MAX_S)
            else:
                busy = BUSY_PAUSE_S

    async def _read_next(self) -> None:
        self._noticed = None
        due = await self._store.next_timer_due()
        self._next = _earliest(None if due is None else due.timestamp(), self._noticed)
        self._read_at = time.monotonic()

    async def _fire_due(self, stop: asyncio.Event) -> int:
        """Passes until one takes fewer than PASS_LIMIT timers; how many fired."""
        fired = 0
        while not stop.is_set():
            now = datetime.now(UTC)

            async def one_pass(db: Session, now: datetime = now) -> PassResult:
                return await fire_once(db, self._context, now=now, limit=PASS_LIMIT)

            result = await self._store.in_transaction(one_pass, stop=stop)
            notices = revoke_notices([result.uow], self._topology)
            await self._sender.send(result.published, notices)
            fired += result.fired
            if result.taken < PASS_LIMIT:
                break
        return fired


async def fire_once(
    db: Session, context: EngineContext, *, now: datetime, limit: int
) -> PassResult:
    """One pass inside the caller's transaction: the timers due by `now`, fired."""
    result = PassResult()
    await _fire_start_timers(db, result, now=now, limit=limit)
    states: dict[str, InstanceState] = {}
    records = await db.lock_due_timers(now, limit)
    result.taken = len(records)
    busy = await db.instances_with_busy_tasks(sorted({str(r["id"]) for r in records}))
    for record in records:
        instance_id = str(record["id"])
        if instance_id in busy:  # a task of it is being written elsewhere: the next pass
            continue
        state = states.get(instance_id) or state_from_record(record)
        fired = await _fire(db, context, result.uow, record, state)
        if fired is not None:
            states[instance_id] = fired
            result.fired += 1
    result.published = await db.write(result.uow)
    return result


async def _fire(
    db: Session, context: EngineContext, uow: UnitOfWork, record: Row, state: InstanceState
) -> InstanceState | None:
    """Fire one timer into `uow`; the instance's new state, or None if it did not fire (a
    stale timer, deleted; an error, an incident)."""
    timer_id = str(record["timer_id"])
    if state.status != "active" or not any(w.id == timer_id for w in state.waits):
        uow.closed_waits.append((timer_id, "timer"))
        uow.count("timers_stale")
        return None
    info = InstanceInfo.of_record(state.id, record)
    try:
        spec = parse_timer(record["kind"], record["spec"])
        then = next_due(spec, record["due_at"], record["fired"] + 1)
        process = await context.processes.get(db, record["definition_id"])
        transition = timer_fired(process, state, timer_id, repeats=then is not None)
    except (EngineStepError, TimerError) as exc:
        log.error("cannot fire timer %s of instance %s: %s", timer_id, state.id, exc)
        uow.closed_waits.append((timer_id, "timer"))
        uow.incident(state.id, record["timer_node"], "engine", f"timer {timer_id}: {exc}")
        return None
    uow.changed_instances[state.id] = transition.state
    detail = {"timer_id": timer_id, "due_at": record["due_at"].isoformat()}
    uow.record(state.id, "timer_fired", record["timer_node"], detail=detail)
    apply_transition(uow, info, transition)
    closed = any(isinstance(e, CloseWait) and e.wait_id == timer_id for e in transition.effects)
    if not closed:
        if then is not None:
            uow.fired_timers.append((timer_id, record["fired"] + 1, then))
        else:
            uow.closed_waits.append((timer_id, "timer"))
    uow.count("timers_fired")
    return transition.state


async def _fire_start_timers(db: Session, result: PassResult, *, now: datetime, limit: int) -> None:
    """Due timer start events: each turn starts an instance (a start command in this
    transaction's outbox, keyed by the turn), then waits for its next turn or goes."""
    for record in await db.lock_due_start_timers(now, limit):
        timer_id, fired = str(record["id"]), record["fired"] + 1
        result.uow.outbox.append(
            start_at_event(
                record["process_key"],
                record["version"],
                record["node_id"],
                f"timer-start:{timer_id}:{fired}",
            )
        )
        try:
            then = next_due(parse_timer(record["kind"], record["spec"]), record["due_at"], fired)
        except TimerError as exc:  # checked at deploy: only a changed parser gets here
            log.error("timer start event %s: %s", timer_id, exc)
            then = None
        if then is None:
            await db.delete_start_timer(timer_id)
        else:
            await db.reschedule_start_timer(timer_id, fired, then)
        result.uow.count("timer_starts")
        result.taken += 1
        result.fired += 1


def start_timer_rows(
    process: Process, definition_id: int, version: int, now: datetime
) -> list[tuple[object, ...]]:
    """The rows of a new version's timer start events, due from `now`."""
    rows: list[tuple[object, ...]] = []
    for start in process_starts(process):
        if start.timer is None:
            continue
        spec = parse_timer(start.timer.kind, start.timer.value)  # literal: checked at deploy
        due = first_due(spec, now)
        if due is not None:
            row_id = str(uuid.uuid4())
            rows.append(
                (row_id, definition_id, process.key, version, start.id, spec.kind, spec.text, due)
            )
    return rows


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
