"""The dispatch deadline's rule: when a queued task's message is published again, held back,
or given up on (engine/dispatch.py); and what a definition may say about it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import Settings
from orchestrator.definitions.loader import content_hash, load_definition
from orchestrator.engine.dispatch import (
    BACKLOG_FACTOR,
    DispatchLost,
    QueueState,
    Redispatch,
    Since,
    Wait,
    after_waiting,
    counted_ms,
    due_after_ms,
    lost_message,
)
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import ServiceTask
from orchestrator.store.batch_statement import GUARDED, batch_statement
from workers._worker import _maybe_stale

EMPTY = QueueState(ready=0, consumers=2)
BACKLOG = QueueState(ready=100_000, consumers=2)
UNREAD = QueueState(ready=0, consumers=0)


def decide(waited_ms: int, redispatches: int = 0, queue: QueueState = EMPTY, most: int = 5) -> Any:
    return after_waiting(
        waited_ms,
        deadline_ms=1000,
        redispatches=redispatches,
        max_redispatches=most,
        queue=queue,
    )


def test_unclaimed_past_the_deadline_is_sent_again_as_the_next_redispatch() -> None:
    assert decide(999) == Wait()
    assert decide(1000) == Redispatch(1)
    assert decide(5000, redispatches=2) == Redispatch(3)


def test_each_resend_waits_twice_as_long_as_the_one_before() -> None:
    assert [due_after_ms(1000, k, EMPTY) for k in range(4)] == [1000, 2000, 4000, 8000]
    assert decide(3999, redispatches=2) == Wait()
    assert decide(4000, redispatches=2) == Redispatch(3)
    # The doubling stops somewhere sane.
    assert due_after_ms(1000, 10_000, EMPTY) == due_after_ms(1000, 20, EMPTY)


def test_a_task_behind_a_backlog_waits_ten_times_its_deadline() -> None:
    assert decide(9_999, queue=BACKLOG) == Wait()
    assert decide(10_000, queue=BACKLOG) == Redispatch(1)
    assert due_after_ms(1000, 1, BACKLOG) == 2000 * BACKLOG_FACTOR


def test_nothing_is_sent_to_a_queue_nobody_reads() -> None:
    assert decide(10**9, queue=UNREAD) == Wait()
    assert decide(10**9, redispatches=5, queue=UNREAD) == Wait()


def test_only_time_with_a_consumer_counts() -> None:
    def read_for(read_ms: int | None, queue: QueueState = EMPTY) -> Any:
        return after_waiting(
            60_000,
            deadline_ms=1000,
            redispatches=0,
            max_redispatches=5,
            queue=queue,
            read_for_ms=read_ms,
        )

    assert read_for(None) == Redispatch(1)
    assert read_for(999) == Wait()
    assert read_for(1000) == Redispatch(1)
    # Workers back after a long absence, the queue full of what waited for them.
    assert read_for(9_999, BACKLOG) == Wait()
    assert read_for(10_000, BACKLOG) == Redispatch(1)


def test_nothing_is_sent_again_while_reports_wait_for_the_engine() -> None:
    """A fast worker's completion is its claim: until the engine reads it the task stays
    queued, however long ago its message was taken. Reports waiting in the engine's queue
    are its lag, not a lost message."""

    def behind(reports_ready: int, redispatches: int = 0, queue: QueueState = EMPTY) -> Any:
        return after_waiting(
            10**9,
            deadline_ms=1000,
            redispatches=redispatches,
            max_redispatches=5,
            queue=queue,
            reports_ready=reports_ready,
        )

    assert behind(1) == Wait()
    assert behind(18_000, queue=BACKLOG) == Wait()
    # Not even a task out of re-sends is given up on while its claim may be among them.
    assert behind(1, redispatches=5) == Wait()
    assert behind(0) == Redispatch(1)
    assert behind(0, redispatches=5) == DispatchLost(5)


def test_only_time_since_the_engine_caught_up_with_its_reports_counts() -> None:
    def caught_up_for(caught_up_ms: int | None, **kw: Any) -> Any:
        return after_waiting(
            60_000,
            deadline_ms=1000,
            redispatches=0,
            max_redispatches=5,
            queue=kw.pop("queue", EMPTY),
            caught_up_for_ms=caught_up_ms,
            **kw,
        )

    assert caught_up_for(None) == Redispatch(1)
    # A report read just now may still be in the engine's hands: a deadline from then on.
    assert caught_up_for(0) == Wait()
    assert caught_up_for(999) == Wait()
    assert caught_up_for(1000) == Redispatch(1)
    assert caught_up_for(9_999, queue=BACKLOG) == Wait()
    assert caught_up_for(10_000, queue=BACKLOG) == Redispatch(1)
    # Whichever came last counts: workers back, or the engine caught up.
    assert caught_up_for(5000, read_for_ms=999) == Wait()
    assert caught_up_for(999, read_for_ms=5000) == Wait()
    assert caught_up_for(1000, read_for_ms=1000) == Redispatch(1)


def test_the_counted_wait_is_the_shortest_of_the_clocks() -> None:
    assert counted_ms(60_000) == 60_000
    assert counted_ms(60_000, read_for_ms=10, caught_up_for_ms=None) == 10
    assert counted_ms(60_000, read_for_ms=None, caught_up_for_ms=20) == 20
    assert counted_ms(60_000, read_for_ms=30, caught_up_for_ms=20) == 20
    assert counted_ms(5, read_for_ms=30, caught_up_for_ms=20) == 5


@given(
    waited=st.integers(0, 10**7),
    redispatches=st.integers(0, 8),
    ready=st.integers(0, 10),
    consumers=st.integers(0, 3),
    read_for=st.none() | st.integers(0, 10**7),
    reports_ready=st.integers(0, 3),
    caught_up_for=st.none() | st.integers(0, 10**7),
)
def test_a_resend_needs_a_reader_no_waiting_reports_and_a_full_counted_wait(
    waited: int,
    redispatches: int,
    ready: int,
    consumers: int,
    read_for: int | None,
    reports_ready: int,
    caught_up_for: int | None,
) -> None:
    queue = QueueState(ready, consumers)
    decision = after_waiting(
        waited,
        deadline_ms=1000,
        redispatches=redispatches,
        max_redispatches=5,
        queue=queue,
        read_for_ms=read_for,
        reports_ready=reports_ready,
        caught_up_for_ms=caught_up_for,
    )
    counted = counted_ms(waited, read_for_ms=read_for, caught_up_for_ms=caught_up_for)
    due = due_after_ms(1000, redispatches, queue)
    acts = consumers > 0 and reports_ready == 0 and counted >= due
    assert (decision != Wait()) == acts
    if acts:
        lost = DispatchLost(redispatches)
        assert decision == (lost if redispatches >= 5 else Redispatch(redispatches + 1))


def test_a_clock_starts_at_the_first_look_that_found_its_condition_holding() -> None:
    """Between a look that found nobody reading (or reports waiting) and the next, nobody
    knows when that changed: the time counts from the later look, never from the earlier."""
    read = Since()
    assert read.for_ms(5.0) is None  # every look so far found a consumer
    read.look(True, 1.0)
    assert read.for_ms(5.0) is None
    read.look(False, 2.0)
    assert read.for_ms(9.0) == 0
    read.look(False, 3.0)
    read.look(True, 3.2)
    assert read.for_ms(3.2) == 0
    assert read.for_ms(4.2) == 1000
    read.look(True, 4.0)  # still holding: still counted from the first look that found it
    assert read.for_ms(5.2) == 2000
    # The engine's own clock starts at its first look, whatever it finds.
    caught_up = Since(holding=False)
    assert caught_up.for_ms(1.0) == 0
    caught_up.look(True, 1.5)
    assert caught_up.for_ms(2.0) == 500


def test_after_the_last_resend_the_task_is_lost_not_sent_again() -> None:
    assert decide(16_000, redispatches=4) == Redispatch(5)
    assert decide(31_999, redispatches=5) == Wait()
    assert decide(32_000, redispatches=5) == DispatchLost(5)
    assert decide(1000, most=0) == DispatchLost(0)


def test_the_incident_says_what_happened_and_where_to_look() -> None:
    message = lost_message(5, "charge-payment")
    assert "keep disappearing" in message
    assert "dispatched 6 times (5 re-sends)" in message
    assert "never claimed" in message and "'charge-payment'" in message
    assert "policies" in message and "consumers" in message


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().dispatch_timeout_ms, Settings().max_redispatches) == (30_000, 5)
    monkeypatch.setenv("ORCH_DISPATCH_TIMEOUT_MS", "1500")
    monkeypatch.setenv("ORCH_MAX_REDISPATCHES", "2")
    settings = Settings.from_env()
    assert (settings.dispatch_timeout_ms, settings.max_redispatches) == (1500, 2)
    with pytest.raises(ValueError, match="dispatch_timeout_ms"):
        Settings(dispatch_timeout_ms=0)


def process(**task: Any) -> dict[str, Any]:
    return {
        "key": "p",
        "nodes": [
            {"id": "start", "type": "start_event"},
            {"id": "work", "type": "service_task", "topic": "work", **task},
            {"id": "end", "type": "end_event"},
        ],
        "flows": [
            {"id": "f1", "from": "start", "to": "work"},
            {"id": "f2", "from": "work", "to": "end"},
        ],
    }


def work_node(data: dict[str, Any]) -> ServiceTask:
    node = load_definition(orjson.dumps(data)).nodes["work"]
    assert isinstance(node, ServiceTask)
    return node


def test_a_service_task_may_set_its_own_deadline_and_resends() -> None:
    node = work_node(process(dispatch_timeout="2m", max_redispatches=3))
    assert (node.dispatch_timeout_ms, node.max_redispatches) == (120_000, 3)
    stored = node.model_dump(mode="json", by_alias=True)
    assert (stored["dispatch_timeout"], stored["max_redispatches"]) == (120_000, 3)
    unset = work_node(process())
    assert (unset.dispatch_timeout_ms, unset.max_redispatches) == (None, None)
    with pytest.raises(DefinitionError, match="dispatch_timeout"):
        load_definition(orjson.dumps(process(dispatch_timeout="10ms")))


def test_unset_options_leave_the_stored_graph_and_its_hash_as_they_were() -> None:
    """A definition deployed before these options existed keeps its content hash, so
    deploying it again returns its version instead of creating the next one."""
    definition = load_definition(orjson.dumps(process(lock="10s"))).definition
    stored = definition.model_dump(mode="json", by_alias=True)
    assert set(stored["nodes"][1]) == {
        "type",
        "id",
        "name",
        "topic",
        "lock",
        "retry",
        "max_lease_expiries",
    }
    reloaded = load_definition(orjson.dumps(stored)).definition
    assert content_hash(reloaded) == content_hash(definition)
    set_explicitly = load_definition(orjson.dumps(process(lock="10s", max_redispatches=5)))
    assert content_hash(set_explicitly.definition) != content_hash(definition)


def test_a_resend_restarts_the_clock_under_the_guard() -> None:
    sql, args = batch_statement({"redispatched": [["t"], [1]]}, expected_rows=1)
    assert "redispatched" in GUARDED
    assert "+ (SELECT count(*) FROM redispatched)" in sql
    assert args == [["t"], [1], 1]


def test_the_worker_claims_a_resent_message_before_running_it() -> None:
    def item(redelivered: bool, redispatch: int) -> Any:
        return SimpleNamespace(
            delivery=SimpleNamespace(redelivered=redelivered),
            task=SimpleNamespace(redispatch=redispatch),
        )

    assert not _maybe_stale(item(False, 0))
    assert _maybe_stale(item(False, 1))
    assert _maybe_stale(item(True, 0))
