"""A command's deadline: how the client stamps it and how the engine reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator.broker.deadline import DEADLINE_HEADER, lapsed, split_lapsed, stamp


def test_stamp_gives_the_header_and_the_expiration_of_the_same_moment() -> None:
    before = time.time() * 1000
    headers, expiration = stamp(2500)
    after = time.time() * 1000
    assert expiration == "2500"
    assert before + 2500 - 1 <= int(headers[DEADLINE_HEADER]) <= after + 2500


def test_stamp_refuses_a_time_to_live_under_a_millisecond() -> None:
    with pytest.raises(ValueError):
        stamp(0)


@pytest.mark.parametrize("headers", [None, {}, {"other": "1"}])
def test_a_command_without_a_deadline_never_lapses(headers: dict[str, Any] | None) -> None:
    assert lapsed(headers, now_ms=1e15) is None


@pytest.mark.parametrize("value", [10_000, "10000", b"10000", 10_000.0, " 10000 "])
def test_the_deadline_reads_as_a_number_or_its_text(value: object) -> None:
    headers = {DEADLINE_HEADER: value}
    assert lapsed(headers, now_ms=9_999) is None
    at_deadline = lapsed(headers, now_ms=10_000)
    assert at_deadline is not None and "0 ms" in at_deadline
    late = lapsed(headers, now_ms=10_250)
    assert late is not None and "250 ms" in late and "engine's clock" in late


@pytest.mark.parametrize("value", ["soon", b"", True, "nan", "inf", [1], {"ms": 1}])
def test_an_unreadable_deadline_is_dropped(value: object) -> None:
    reason = lapsed({DEADLINE_HEADER: value}, now_ms=0)
    assert reason is not None and "not a time in Unix ms" in reason


@dataclass
class _Message:
    name: str
    headers: dict[str, Any] | None


def test_split_keeps_the_order_of_what_stays() -> None:
    messages = [
        _Message("old client", None),
        _Message("late", {DEADLINE_HEADER: 100}),
        _Message("in time", {DEADLINE_HEADER: 300}),
        _Message("garbled", {DEADLINE_HEADER: "x"}),
    ]
    keep, dropped = split_lapsed(messages, now_ms=200)
    assert [m.name for m in keep] == ["old client", "in time"]
    assert [m.name for m, _ in dropped] == ["late", "garbled"]
    assert all(reason.startswith("dropped") for _, reason in dropped)
