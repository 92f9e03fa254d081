"""The dispatch deadline: when a queued task's message is published again. Pure: the shell
passes how long ago the message went out and what the broker says of the topic's queue and of
the engine's reports queue.

A task's lease starts when a worker claims it, so nothing else notices a message that never
reaches one (purged, dropped by a queue policy, acked by a worker that never claimed it). A
task that no worker claimed within its dispatch deadline is published again, as the same
attempt, so whichever copy is claimed second is refused. The k-th re-send waits deadline x
2^k after the previous dispatch. While the queue still holds ready messages the task is
probably waiting behind them, so it waits ten times longer; with no consumer at all nobody
could take a copy, so it waits until one comes, and its clock counts only from then.

A task is `queued` in PostgreSQL until the engine applies its claim (or, for a task that
finishes within the worker's claim delay, its completion): a worker may have taken the
message long ago while that report still waits in the reports queue behind others. So while
the reports queue holds ready messages nothing is re-sent, and a task's clock counts only
from the first look that found none after one that did: a backlog of reports is the engine's
lag, not a lost message (and the reports an engine took last may still be in its hands).
After `max_redispatches` re-sends the task raises an incident instead of sending more.
"""

from __future__ import annotations

from dataclasses import dataclass

#: While the topic's queue holds ready messages, a task waits this many times its deadline.
BACKLOG_FACTOR = 10
#: Beyond this many re-sends the wait stops doubling (and 2^k stays a sane number).
MAX_DOUBLINGS = 20


@dataclass(frozen=True)
class QueueState:
    """What the broker says of a topic's queue."""

    ready: int
    consumers: int

    @property
    def backlog(self) -> bool:
        return self.ready > 0


@dataclass(frozen=True)
class Wait:
    """Not due: the message may still be on its way (or nobody could take a copy)."""


@dataclass(frozen=True)
class Redispatch:
    """Publish the same attempt again; `number` is this re-send's (1 for the first)."""

    number: int


@dataclass(frozen=True)
class DispatchLost:
    """Re-sent `redispatches` times and never claimed: raise an incident."""

    redispatches: int


@dataclass
class Since:
    """Since when a condition holds (the topic's queue has a consumer; no report waits for the
    engine), as far as looks at the broker tell: from the first look that found it holding
    after one that did not, never from before that look. Times are the caller's (seconds)."""

    #: What the last look found.
    holding: bool = True
    #: The first look that found it holding after one that did not (None: every look did).
    since: float | None = None

    def look(self, holds: bool, now: float) -> None:
        if holds and not self.holding:
            self.since = now
        self.holding = holds

    def for_ms(self, now: float) -> int | None:
        """How long it has held: 0 while it does not, None if every look found it holding."""
        if not self.holding:
            return 0
        return None if self.since is None else max(0, int((now - self.since) * 1000))


def due_after_ms(deadline_ms: int, redispatches: int, queue: QueueState) -> int:
    """How long after its last dispatch a message with `redispatches` re-sends so far is due
    again: deadline x 2^redispatches, ten times that while the queue has a backlog."""
    wait: int = deadline_ms << min(max(redispatches, 0), MAX_DOUBLINGS)
    return wait * BACKLOG_FACTOR if queue.backlog else wait


def counted_ms(
    waited_ms: int, *, read_for_ms: int | None = None, caught_up_for_ms: int | None = None
) -> int:
    """How much of a task's wait counts: only the time for which its queue has had a consumer
    (`read_for_ms`) and no report has waited for the engine (`caught_up_for_ms`); None: as far
    as anyone knows, always."""
    for since_ms in (read_for_ms, caught_up_for_ms):
        if since_ms is not None:
            waited_ms = min(waited_ms, since_ms)
    return waited_ms


def after_waiting(
    waited_ms: int,
    *,
    deadline_ms: int,
    redispatches: int,
    max_redispatches: int,
    queue: QueueState,
    read_for_ms: int | None = None,
    reports_ready: int = 0,
    caught_up_for_ms: int | None = None,
) -> Wait | Redispatch | DispatchLost:
    """What to do with a queued task whose message went out `waited_ms` ago, when its queue
    has had a consumer for the last `read_for_ms`, `reports_ready` report messages wait for
    the engine, and none waited at any look in the last `caught_up_for_ms` (None: as far as
    anyone knows, always)."""
    if queue.consumers == 0:
        # Nobody could take a copy: re-sending only piles messages into an unread queue, and
        # a task waiting for its workers to be deployed has lost nothing.
        return Wait()
    if reports_ready > 0:
        # The engine is behind: this task's claim or completion may be among the reports it
        # has not read yet.
        return Wait()
    # Time with nobody reading the queue does not count: when the workers come back, the
    # messages that waited for them are all still there, in the order they came. Nor does
    # time in which the engine was behind on its reports: a report sent then may only just
    # have been read (and may still be in the engine's hands).
    waited_ms = counted_ms(waited_ms, read_for_ms=read_for_ms, caught_up_for_ms=caught_up_for_ms)
    if waited_ms < due_after_ms(deadline_ms, redispatches, queue):
        return Wait()
    if redispatches >= max_redispatches:
        return DispatchLost(redispatches)
    return Redispatch(redispatches + 1)


def lost_message(redispatches: int, topic: str) -> str:
    """The incident's message: what happened, and where to look."""
    dispatches = redispatches + 1
    return (
        f"the task's messages keep disappearing: dispatched {dispatches} times "
        f"({redispatches} re-sends) to topic {topic!r}, never claimed; check the topic "
        "queue's policies (message TTL, max length) and its consumers (one that acks tasks "
        "without claiming them)"
    )
