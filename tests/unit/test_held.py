"""Held messages come back after a pause that doubles with each try, oldest first, and not
at all once their channel is gone (the broker has requeued them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from orchestrator.daemon.held import FIRST_PAUSE_S, LONGEST_PAUSE_S, Held, HeldMessages


@dataclass
class _Channel:
    is_closed: bool = False


@dataclass
class _Message:
    channel: _Channel = field(default_factory=_Channel)


def held(items: list[str], channel: _Channel | None = None) -> Held[str]:
    message = _Message(channel or _Channel())
    return Held(cast(AbstractIncomingMessage, cast(Any, message)), items)


def test_a_held_message_is_due_after_its_pause_and_the_pause_doubles() -> None:
    waiting: HeldMessages[str] = HeldMessages()
    entry = held(["report"])
    waiting.hold(entry, now=10.0)
    assert waiting.next_due() == 10.0 + FIRST_PAUSE_S
    assert waiting.take_due(10.0 + FIRST_PAUSE_S / 2) == []
    assert waiting.take_due(10.0 + FIRST_PAUSE_S) == [entry]
    assert len(waiting) == 0
    waiting.hold(entry, now=20.0)
    assert waiting.next_due() == 20.0 + 2 * FIRST_PAUSE_S
    for _ in range(20):
        waiting.take_due(1e9)
        waiting.hold(entry, now=30.0)
    assert waiting.next_due() == 30.0 + LONGEST_PAUSE_S
    assert waiting.holds == 22


def test_due_messages_come_back_in_the_order_they_were_held() -> None:
    waiting: HeldMessages[str] = HeldMessages()
    first, second, third = held(["a"]), held(["b"]), held(["c"])
    for entry in (first, second, third):
        waiting.hold(entry, now=1.0)
    assert waiting.take_due(2.0) == [first, second, third]
    assert waiting.next_due() is None


def test_a_message_whose_channel_closed_is_dropped_not_retried() -> None:
    waiting: HeldMessages[str] = HeldMessages()
    gone = _Channel()
    lost, kept = held(["a"], gone), held(["b"])
    waiting.hold(lost, now=1.0)
    waiting.hold(kept, now=1.0)
    gone.is_closed = True
    assert waiting.take_due(2.0) == [kept]
    assert len(waiting) == 0
