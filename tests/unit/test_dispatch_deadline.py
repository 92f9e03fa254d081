"""The dispatch deadline's rule: when a queued task's message is published again, held back,
or given up on (engine/dispatch.py); and what a definition may say about it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from orchestrator.config import Settings
from orchestrator.definitions.loader import content_hash, load_definition
from orchestrator.engine.dispatch import (
    BACKLOG_FACTOR,
    DispatchLost,
    QueueState,
    Redispatch,
    Wait,
    after_waiting,
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
