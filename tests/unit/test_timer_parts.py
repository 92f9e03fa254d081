"""The unit of work's timer parts: due times from the engine's clock, and what is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.definitions.timers import parse_timer
from orchestrator.store.batch_statement import batch_statement
from orchestrator.store.unit_of_work import NewTimer, UnitOfWork

NOW = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)


def test_a_new_timer_is_due_by_the_engines_clock_and_keeps_its_text() -> None:
    uow = UnitOfWork()
    uow.new_timers.append(NewTimer("t1", "i1", "wait", parse_timer("duration", "PT15M")))
    parts = uow._timer_parts(NOW)
    assert parts == {
        "new_timers": [
            ["t1"],
            ["i1"],
            ["wait"],
            ["duration"],
            ["PT15M"],
            [NOW + timedelta(minutes=15)],
        ]
    }


def test_a_timer_opened_and_closed_in_one_batch_is_neither_written_nor_deleted() -> None:
    uow = UnitOfWork()
    uow.new_timers.append(NewTimer("t1", "i1", "wait", parse_timer("duration", "PT1S")))
    uow.closed_waits += [("t1", "timer"), ("t2", "timer"), ("s1", "message")]
    assert uow._timer_parts(NOW) == {"closed_timers": [["t2"]]}


def test_a_cycle_that_goes_on_is_updated_unless_it_was_closed() -> None:
    uow = UnitOfWork()
    uow.fired_timers += [("t1", 1, NOW), ("t2", 2, NOW)]
    uow.closed_waits.append(("t2", "timer"))
    assert uow._timer_parts(NOW) == {
        "fired_timers": [["t1"], [1], [NOW]],
        "closed_timers": [["t2"]],
    }


def test_a_cycle_whose_turns_have_all_passed_is_not_kept() -> None:
    uow = UnitOfWork()
    spec = parse_timer("cycle", "R2/2020-01-01T00:00:00Z/PT1H")
    uow.new_timers.append(NewTimer("t1", "i1", "b", spec))
    assert uow._timer_parts(NOW) == {}


def test_the_statement_returns_the_holders_of_withdrawn_tasks_only_when_it_withdraws() -> None:
    with_withdrawn, _ = batch_statement({"withdrawn_tasks": [["t"]]}, 0)
    without, _ = batch_statement({"closed_timers": [["t"]]}, 0)
    assert "FROM withdrawn_tasks WHERE was = 'claimed'" in with_withdrawn
    assert "'[]'::jsonb AS revoked" in without
