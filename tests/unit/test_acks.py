"""Acks of settled deliveries go together, and never cover a delivery still running."""

from __future__ import annotations

import asyncio
from typing import Any

from workers._acks import AckBatcher


class _Channel:
    """Just what acking uses of a channel (aiormq's public call), and the acks sent on it."""

    def __init__(self) -> None:
        self.is_closed = False
        self.sent: list[tuple[int, bool]] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        await asyncio.sleep(0)  # writing the frame lets other tasks run
        self.sent.append((delivery_tag, multiple))


class _Delivery:
    """Just what AckBatcher reads of a delivery."""

    def __init__(self, channel: _Channel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag


def _deliveries(count: int, channel: _Channel | None = None) -> tuple[list[Any], list[Any]]:
    owner = channel if channel is not None else _Channel()
    return [_Delivery(owner, tag) for tag in range(1, count + 1)], owner.sent


async def _settle(acks: AckBatcher, *deliveries: Any) -> None:
    for delivery in deliveries:
        acks.ack(delivery)
    for _ in range(10):  # enough loop iterations for the flush to finish
        await asyncio.sleep(0)


async def test_a_run_of_settled_deliveries_is_one_multiple_ack() -> None:
    acks = AckBatcher()
    d, sent = _deliveries(5)
    await _settle(acks, d[2], d[0], d[1], d[3])
    assert sent == [(4, True)]


async def test_deliveries_past_a_running_one_are_acked_alone() -> None:
    acks = AckBatcher()
    d, sent = _deliveries(4)
    await _settle(acks, d[1], d[2])  # tag 1 still running
    assert sent == [(2, False), (3, False)]
    await _settle(acks, d[0], d[3])
    assert sent[2:] == [(4, True)]  # covers 1 and 4; 2 and 3 are acked already


async def test_a_nacked_delivery_does_not_block_later_acks() -> None:
    acks = AckBatcher()
    d, sent = _deliveries(3)
    acks.settled_elsewhere(d[0])
    await _settle(acks, d[1], d[2])
    assert sent == [(3, True)]


async def test_each_channel_counts_its_own_tags() -> None:
    acks = AckBatcher()
    first, sent_first = _deliveries(2)
    second, sent_second = _deliveries(2)
    await _settle(acks, first[0], first[1], second[1])
    assert sent_first == [(2, True)]
    assert sent_second == [(2, False)]


async def test_a_delivery_settling_during_a_flush_is_acked_too() -> None:
    acks = AckBatcher()
    d, sent = _deliveries(3)
    acks.ack(d[0])
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the flush is now writing the ack of tag 1
    acks.ack(d[1])
    acks.ack(d[2])
    for _ in range(10):
        await asyncio.sleep(0)
    assert sent == [(1, True), (3, True)]
