"""Every client call has a deadline, and a command the client gave up on never takes effect
later: against the real broker, with and without an engine."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from orchestrator.broker.deadline import DEADLINE_HEADER
from orchestrator.broker.topology import COMMAND_ROUTING_KEY, Topology
from orchestrator.client import Client, CommandTimeout, NoEngine
from orchestrator.config import Settings
from orchestrator.model.wire import CommandReply
from tests.support.harness import (
    ROOT,
    counter,
    process_env,
    running_engine,
    sequential_process,
    wait_until,
)

pytestmark = pytest.mark.integration

#: How late a call may end after its deadline on a busy machine.
LATE_S = 1.0
TOPIC = "deadline-work"


def no_engine_message(settings: Settings) -> str:
    return f"no engine answered on {settings.namespace}: is `orchestrator engine` running?"


async def commands_waiting(settings: Settings) -> int:
    """Messages in the commands queue (a passive declare)."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            Topology(settings.namespace).commands_queue, passive=True
        )
        return int(queue.declaration_result.message_count or 0)


@dataclass
class StubEngine:
    """Consumes the commands queue like an engine, but only records what arrives (unacked:
    closing it puts the commands back, as when an engine dies); `answer_from` is the first
    delivery it answers (None: it answers nothing)."""

    channel: AbstractChannel
    answer_from: int | None = None
    seen: list[AbstractIncomingMessage] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        self.seen.append(message)
        self.arrived_at.append(time.monotonic())
        if self.answer_from is not None and len(self.seen) > self.answer_from:
            reply = CommandReply(ok=True, result={"answered": len(self.seen)})
            await self.channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(reply.model_dump(mode="json")),
                    correlation_id=message.correlation_id,
                ),
                routing_key=message.reply_to or "",
            )


@contextlib.asynccontextmanager
async def stub_engine(
    settings: Settings, answer_from: int | None = None
) -> AsyncIterator[StubEngine]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(settings.namespace).commands_queue, ensure=False)
        stub = StubEngine(channel, answer_from)
        await queue.consume(stub.on_command, no_ack=False)
        yield stub


async def declare_topology(settings: Settings) -> None:
    """The commands queue, as the first client or engine would declare it."""
    async with Client(settings):
        pass


async def test_a_call_with_no_engine_gives_up_at_its_deadline_having_sent_nothing(
    settings: Settings,
) -> None:
    """`timeout=` per call, and the client's default from the settings otherwise."""
    async with Client(settings) as client:
        began = time.monotonic()
        with pytest.raises(NoEngine, match=no_engine_message(settings)):
            await client.stats(timeout=1.5)
        elapsed = time.monotonic() - began
    assert 1.5 <= elapsed < 1.5 + LATE_S
    async with Client(replace(settings, client_timeout_s=1.0)) as client:
        began = time.monotonic()
        with pytest.raises(CommandTimeout):  # NoEngine is one
            await client.get_instance(str(uuid.uuid4()))
        elapsed = time.monotonic() - began
    assert 1.0 <= elapsed < 1.0 + LATE_S
    # No engine consumed the queue, so nothing was left there to take effect later.
    assert await commands_waiting(settings) == 0


async def test_no_engine_answered_says_so_within_seconds(
    settings: Settings, tmp_path: Path
) -> None:
    """The CLI gives up after 2 s without a consumer of the commands queue, whatever the
    timeout (60 s here): exit status 1 and one line on stderr."""
    definition = tmp_path / "order.yaml"
    definition.write_text(sequential_process("nobody", [TOPIC]))
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "deploy",
        str(definition),
        cwd=ROOT,
        env=process_env(settings, ORCH_CLIENT_TIMEOUT="60"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    elapsed = time.monotonic() - began
    assert proc.returncode == 1, (out, err)
    assert err.decode() == f"error: {no_engine_message(settings)}\n"
    assert out == b""
    assert elapsed < 10, f"took {elapsed:.1f} s"
    # The library does the same when asked to.
    async with Client(settings, no_engine_after=0.5) as client:
        began = time.monotonic()
        with pytest.raises(NoEngine):
            await client.deploy_file(definition, timeout=60)
        assert 0.5 <= time.monotonic() - began < 0.5 + LATE_S


async def test_a_command_is_resent_within_its_deadline_and_stamped_with_it(
    settings: Settings,
) -> None:
    """An engine that takes a command and never answers: the client resends it after 2 s
    (same correlation id, same deadline), and gives up at the call's deadline with a
    CommandTimeout that is not NoEngine. Each send expires where sending stops: 0.4 s (a
    tenth of the timeout) before the call's deadline."""
    await declare_topology(settings)
    async with stub_engine(settings) as stub, Client(settings) as client:
        wall_began = time.time() * 1000
        began = time.monotonic()
        with pytest.raises(CommandTimeout) as raised:
            await client.start("order", idempotency_key="resent-1", timeout=4.0)
        elapsed = time.monotonic() - began
    assert not isinstance(raised.value, NoEngine)
    assert "sent 2 times" in str(raised.value) and "'resent-1'" in str(raised.value)
    assert 4.0 <= elapsed < 4.0 + LATE_S
    assert len(stub.seen) == 2
    first, second = stub.seen
    assert first.correlation_id == second.correlation_id and first.body == second.body
    assert 1.9 <= stub.arrived_at[1] - stub.arrived_at[0] < 1.9 + LATE_S
    deadlines = [int(str((m.headers or {}).get(DEADLINE_HEADER))) for m in stub.seen]
    assert abs(deadlines[0] - deadlines[1]) < 100
    assert wall_began + 3600 - 100 <= deadlines[0] <= wall_began + 3600 + LATE_S * 1000
    # aio-pika gives the AMQP expiration in seconds.
    ttls = [m.expiration for m in stub.seen]
    first_ttl, second_ttl = (float(t) if isinstance(t, int | float) else -1.0 for t in ttls)
    assert 3.6 - LATE_S <= first_ttl <= 3.6 and 0 < second_ttl <= 1.7, ttls


async def test_a_reply_to_a_resend_answers_the_call(settings: Settings) -> None:
    await declare_topology(settings)
    async with stub_engine(settings, answer_from=1) as stub, Client(settings) as client:
        began = time.monotonic()
        assert await client.stats(timeout=10) == {"answered": 2}
        elapsed = time.monotonic() - began
    assert len(stub.seen) == 2
    assert 1.9 <= elapsed < 2 + LATE_S


async def dead_expired(settings: Settings) -> int:
    """Take the dead queue's messages; how many RabbitMQ dead-lettered because their
    expiration passed."""
    connection = await aio_pika.connect(settings.amqp_url)
    count = 0
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(settings.namespace).dead_queue, ensure=False)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            deaths: Any = (message.headers or {}).get("x-death") or []
            count += any(death.get("reason") == "expired" for death in deaths)
    return count


async def test_a_command_given_up_on_never_takes_effect_when_an_engine_starts(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """An engine takes a start and dies before it does anything (the stub closes with the
    command unacked, so RabbitMQ puts it back). The client has given up; an engine that
    starts after the deadline never creates the instance. Whether the broker expired the
    command first or the engine dropped it on arrival, it is accounted for once."""
    topics.add(TOPIC)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("late", [TOPIC]))
    async with stub_engine(settings) as stub, Client(settings) as client:
        with pytest.raises(CommandTimeout):
            await client.start("late", idempotency_key="given-up", timeout=2.0)
    assert len(stub.seen) == 1
    async with running_engine(settings), Client(settings) as client:
        # Sent after the given-up command, so answered after it was dropped (or would have
        # been committed): the engine takes the queue in order, a round at a time.
        fresh = await client.start("late", idempotency_key="fresh", timeout=15)
        assert fresh.created
        keys = await db.fetch("SELECT idempotency_key FROM start_ledger")
        assert [row["idempotency_key"] for row in keys] == ["fresh"]
        expired_by_broker = 0

        async def accounted() -> bool:
            nonlocal expired_by_broker
            expired_by_broker += await dead_expired(settings)
            return await counter(db, "commands_expired") + expired_by_broker >= 1

        await wait_until(accounted, timeout=10, what="the given-up start to be dropped")
        assert await counter(db, "commands_expired") + expired_by_broker == 1
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 1
    assert await commands_waiting(settings) == 0


async def test_the_engine_drops_a_command_past_its_deadline_on_arrival(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """Commands published with no AMQP expiration, so the broker keeps them all and the
    engine's check decides: a start whose deadline passed, and one with a garbled deadline,
    take no effect, are answered `timeout` and counted; one in time and one with no deadline
    (an older client) take effect."""
    topics.add(TOPIC)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("arrival", [TOPIC]))
    now_ms = int(time.time() * 1000)
    headers: dict[str, dict[str, Any] | None] = {
        "past": {DEADLINE_HEADER: str(now_ms - 1)},
        "garbled": {DEADLINE_HEADER: "tomorrow"},
        "in-time": {DEADLINE_HEADER: now_ms + 600_000},
        "no-deadline": None,
    }
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True)
        answers: dict[str, CommandReply] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            answers[message.correlation_id or ""] = CommandReply.model_validate_json(message.body)

        await replies.consume(on_reply, no_ack=True)
        exchange = await channel.get_exchange(Topology(settings.namespace).commands_exchange)
        for key, header in headers.items():
            body = {"v": 1, "type": "start", "process_key": "arrival", "idempotency_key": key}
            await exchange.publish(
                aio_pika.Message(
                    orjson.dumps(body),
                    headers=header,
                    correlation_id=key,
                    reply_to=replies.name,
                ),
                COMMAND_ROUTING_KEY,
            )
        async with running_engine(settings):

            async def all_answered() -> bool:
                return len(answers) == len(headers)

            await wait_until(all_answered, timeout=15, what="an answer to every command")
            expired = await counter(db, "commands_expired")
    for key in ("past", "garbled"):
        error = answers[key].error
        assert not answers[key].ok and error is not None and error.code == "timeout", answers[key]
        assert error.message.startswith("dropped")
    assert answers["in-time"].ok and answers["no-deadline"].ok
    keys = await db.fetch("SELECT idempotency_key FROM start_ledger ORDER BY 1")
    assert [row["idempotency_key"] for row in keys] == ["in-time", "no-deadline"]
    assert expired == 2


@pytest.mark.timeout(60)
async def test_a_start_held_past_its_deadline_never_takes_effect(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """The engine took the start in time, but another session holds its idempotency key, so
    the engine holds the start and tries it again and again. Once the caller's deadline has
    passed, the next try drops it instead, and the key's release changes nothing."""
    topics.add(TOPIC)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("held", [TOPIC]))
        async with db.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute(
                "INSERT INTO start_ledger (idempotency_key, payload_hash, instance_id, created)"
                " VALUES ('contended', '\\x00', gen_random_uuid(), true)"
            )
            with pytest.raises(CommandTimeout):
                await client.start("held", idempotency_key="contended", timeout=2.0)

            async def dropped() -> bool:
                return await counter(db, "commands_expired") == 1

            await wait_until(dropped, timeout=10, what="the held start to be dropped")
            await transaction.rollback()  # the key is free: a held start would go through now
        fresh = await client.start("held", idempotency_key="after", timeout=15)
        assert fresh.created
    keys = await db.fetch("SELECT idempotency_key FROM start_ledger")
    assert [row["idempotency_key"] for row in keys] == ["after"]
    assert await db.fetchval("SELECT count(*) FROM process_instances") == 1
    assert await counter(db, "commands_expired") == 1
