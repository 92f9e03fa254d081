"""The floor under instance latency on this machine: what one broker hop and one commit cost
at the least, measured in the same run on the same services.

An instance of S steps makes 2S + 1 broker hops (its start command, then each task and its
report) and S + 1 commits (its start, then each step), one after another. No engine can be
faster than those alone. Samples use the durability the engine uses: a persistent message on
a durable queue, published with confirms on one connection and consumed (and acked) on
another; a one-row insert committed with synchronous_commit on. Nothing of the engine's own
work is in them.

Two floors, because a machine that has been idle for a few milliseconds answers more slowly
(its processes sleep and must be woken): samples taken back to back give the least this
hardware can do; samples taken a few milliseconds apart give what a lone request pays. The
first is the floor under load, the second under a low arrival rate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from bench.queries import query
from bench.stats import percentile
from orchestrator.broker.connection import connect
from orchestrator.broker.publisher import Outgoing, Publisher

#: Time between samples for the idle floor: long enough that every process has gone to sleep.
IDLE_GAP_S = 0.005


@dataclass(frozen=True)
class Floor:
    broker_hop_ms: float  # p50 of one persistent, confirmed message from publish to consumer
    commit_ms: float  # p50 of a one-row insert with its commit, as the client sees it
    hops: int
    commits: int

    @classmethod
    def of(cls, steps: int, broker_hop_ms: float, commit_ms: float) -> Floor:
        return cls(round(broker_hop_ms, 3), round(commit_ms, 3), 2 * steps + 1, steps + 1)

    @property
    def instance_ms(self) -> float:
        return round(self.hops * self.broker_hop_ms + self.commits * self.commit_ms, 2)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "instance_ms": self.instance_ms}


async def measure_floors(
    amqp_url: str, database_url: str, queue: str, *, steps: int, samples: int = 200
) -> dict[str, Floor]:
    """The floor with samples back to back, and with samples an idle gap apart."""
    floors = {}
    for name, gap_s in (("back_to_back", 0.0), ("after_idle", IDLE_GAP_S)):
        hops = await broker_hops(amqp_url, queue, samples, gap_s)
        commits = await commit_times(database_url, samples, gap_s)
        floors[name] = Floor.of(steps, percentile(hops, 50), percentile(commits, 50))
    return floors


async def broker_hops(amqp_url: str, queue_name: str, samples: int, gap_s: float) -> list[float]:
    """Milliseconds from publish to the consumer's callback, one message at a time."""
    sender = await connect(amqp_url, name="bench-floor-publisher")
    receiver = await connect(amqp_url, name="bench-floor-consumer")
    hops: list[float] = []
    arrived = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        hops.append((time.time() - float(message.body)) * 1000)
        await message.ack()
        arrived.set()

    try:
        channel = await receiver.channel()
        await channel.set_qos(prefetch_count=1)
        # Durable (persistent messages go to disk only on a durable queue), and gone with the
        # consumer's connection whatever happens here.
        queue = await channel.declare_queue(queue_name, durable=True, auto_delete=True)
        await queue.consume(on_message)
        publisher = await Publisher.open(sender)
        for _ in range(samples):
            arrived.clear()
            body = repr(time.time()).encode()
            await publisher.publish(Outgoing("", queue_name, body))
            await asyncio.wait_for(arrived.wait(), timeout=10)
            await asyncio.sleep(gap_s)
    finally:
        await sender.close()
        await receiver.close()
    return hops


async def commit_times(database_url: str, samples: int, gap_s: float) -> list[float]:
    """Milliseconds for a one-row insert and its commit, one at a time."""
    conn = await asyncpg.connect(database_url, timeout=5)
    times: list[float] = []
    try:
        await conn.execute(query("floor_create_table"))
        await conn.execute(query("floor_commit_synchronously"))
        for _ in range(samples):
            began = time.perf_counter()
            await conn.execute(query("floor_insert"))
            times.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(gap_s)
        await conn.execute(query("floor_drop_table"))
    finally:
        await conn.close()
    return times
