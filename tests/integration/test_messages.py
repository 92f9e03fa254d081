"""Messages correlated exactly once: by the client, from any AMQP producer, buffered before
the instance waits, through boundary events and event-based gateways, and expired."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import orjson
import pytest

from orchestrator.broker.topology import DEAD_REASON_HEADER, Topology
from orchestrator.cli import main
from orchestrator.client import Client, IdempotencyConflict, NotFound
from orchestrator.config import Settings
from tests.support.harness import (
    Processes,
    hang_until_cancelled,
    publish_raw,
    running_engine,
    running_worker,
    wait_until,
)
from workers import Worker

pytestmark = pytest.mark.integration

PAID = {"name": "paid", "correlation_key": "=orderId"}


def _flows(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": f"f_{a}_{b}", "from": a, "to": b} for a, b in pairs]


def waiting(key: str, node_type: str = "message_catch_event") -> bytes:
    """start -> wait for `paid` (keyed by orderId) -> end."""
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "wait", "type": node_type, "message": PAID},
        {"id": "e", "type": "end_event"},
    ]
    return orjson.dumps({"key": key, "nodes": nodes, "flows": _flows(("s", "wait"), ("wait", "e"))})


def interrupted_task(key: str, topic: str) -> bytes:
    """A service task with an interrupting message boundary event `cancel-order`."""
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "work", "type": "service_task", "topic": topic},
        {
            "id": "cancelled",
            "type": "message_boundary_event",
            "attached_to": "work",
            "interrupting": True,
            "message": {"name": "cancel-order", "correlation_key": "=orderId"},
        },
        {"id": "done", "type": "end_event"},
        {"id": "withdrawn", "type": "end_event"},
    ]
    flows = _flows(("s", "work"), ("work", "done"), ("cancelled", "withdrawn"))
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows})


def message_or_timer(key: str) -> bytes:
    nodes = [
        {"id": "s", "type": "start_event"},
        {"id": "gw", "type": "event_based_gateway"},
        {"id": "approved", "type": "message_catch_event", "message": PAID},
        {
            "id": "late",
            "type": "timer_catch_event",
            "timer": {"kind": "duration", "value": "PT10M"},
        },
        {"id": "on_message", "type": "end_event"},
        {"id": "on_timer", "type": "end_event"},
    ]
    flows = _flows(
        ("s", "gw"), ("gw", "approved"), ("gw", "late"),
        ("approved", "on_message"), ("late", "on_timer"),
    )  # fmt: skip
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows})


async def state_of(db: Any, instance_id: str) -> str:
    return str(await db.fetchval("SELECT status FROM process_instances WHERE id = $1", instance_id))


async def wait_for_state(db: Any, instance_id: str, state: str, timeout: float = 15) -> None:
    async def reached() -> bool:
        return await state_of(db, instance_id) == state

    await wait_until(reached, timeout=timeout, what=f"instance {instance_id} {state}")


async def wait_for_subscriptions(db: Any, count: int, timeout: float = 15) -> None:
    async def there() -> bool:
        return await db.fetchval("SELECT count(*) FROM message_subscriptions") == count

    await wait_until(there, timeout=timeout, what=f"{count} message subscriptions")


async def counter(db: Any, name: str) -> int:
    value = await db.fetchval("SELECT sum(value) FROM engine_counters WHERE name = $1", name)
    return int(value or 0)


async def test_a_correlated_message_moves_the_waiting_instance_on(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("order"))
        started = await client.start("order", variables={"orderId": "A-1", "kept": 1})
        await wait_for_subscriptions(db, 1)
        seen = await client.get_instance(started.instance_id)
        answer = await client.correlate("paid", "A-1", variables={"amount": 42})
        await wait_for_state(db, started.instance_id, "completed")
        after = await client.get_instance(started.instance_id)
        stats = await client.stats()
    assert [(s["node_id"], s["name"], s["correlation_key"]) for s in seen["subscriptions"]] == [
        ("wait", "paid", "A-1")
    ]
    assert answer["status"] == "correlated"
    assert answer["instance_id"] == started.instance_id
    assert after["variables"] == {"orderId": "A-1", "kept": 1, "amount": 42}
    assert after["subscriptions"] == []
    assert "message_correlated" in [h["kind"] for h in after["history"]]
    assert stats["counters"]["messages_correlated"] == 1


async def test_the_same_message_id_is_applied_once(settings: Settings, db: Any) -> None:
    """Two instances wait on one key: a message sent twice moves only the one that waited
    longest; the repeat is answered duplicate, a reuse with other contents refused."""
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("twice", "receive_task"))
        first = await client.start("twice", variables={"orderId": "K"})
        await wait_for_subscriptions(db, 1)
        second = await client.start("twice", variables={"orderId": "K"})
        await wait_for_subscriptions(db, 2)
        sent = [
            await client.correlate("paid", "K", variables={"n": 1}, message_id="m-1")
            for _ in range(2)
        ]
        with pytest.raises(IdempotencyConflict):
            await client.correlate("paid", "K", variables={"n": 2}, message_id="m-1")
        await wait_for_state(db, first.instance_id, "completed")
        await asyncio.sleep(0.5)
        assert await state_of(db, second.instance_id) == "active"
        stats = await client.stats()
    assert sent[0] == {
        "status": "correlated",
        "instance_id": first.instance_id,
        "message_id": "m-1",
    }
    assert sent[1] == {
        "status": "duplicate",
        "instance_id": first.instance_id,
        "message_id": "m-1",
        "recorded_status": "correlated",
    }
    assert stats["counters"]["messages_correlated"] == 1
    assert stats["counters"]["messages_duplicate"] == 1
    assert await db.fetchval("SELECT duplicates FROM messages WHERE message_id = 'm-1'") == 1
    assert await db.fetchval("SELECT count(*) FROM message_subscriptions") == 1


async def test_a_message_sent_before_the_wait_is_buffered_and_taken_once(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("early"))
        answer = await client.correlate("paid", "B-1", variables={"early": True})
        first = await client.start("early", variables={"orderId": "B-1"})
        await wait_for_state(db, first.instance_id, "completed")
        second = await client.start("early", variables={"orderId": "B-1"})
        await wait_for_subscriptions(db, 1)
        await asyncio.sleep(0.5)
        assert await state_of(db, second.instance_id) == "active"
        instance = await client.get_instance(first.instance_id)
        stats = await client.stats()
    assert answer["status"] == "buffered" and answer["instance_id"] is None
    assert instance["variables"] == {"orderId": "B-1", "early": True}
    row = await db.fetchrow("SELECT status, instance_id FROM messages")
    assert row["status"] == "correlated" and str(row["instance_id"]) == first.instance_id
    assert stats["counters"]["messages_buffered"] == 1
    assert stats["counters"]["messages_correlated"] == 1


async def test_messages_from_any_amqp_producer(settings: Settings, db: Any) -> None:
    topology = Topology(settings.namespace)
    exchange = topology.messages_exchange
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("raw"))
        started = await client.start("raw", variables={"orderId": "R-1"})
        await wait_for_subscriptions(db, 1)
        good = {"v": 1, "name": "paid", "correlation_key": "R-1", "variables": {"via": "amqp"}}
        # The AMQP message_id property stands in for the body's.
        await publish_raw(settings, exchange, "any.key", orjson.dumps(good), message_id="x-1")
        await publish_raw(settings, exchange, "", orjson.dumps(good), message_id="x-1")
        await wait_for_state(db, started.instance_id, "completed")
        unknown = {**good, "name": "nobody-waits", "message_id": "x-2"}
        await publish_raw(settings, exchange, "", b"{not json", message_id="bad-1")
        await publish_raw(settings, exchange, "", orjson.dumps(unknown), message_id="bad-2")
        # (aio-pika makes a message_id when given none: parse_message's unit test has that.)
        no_v = orjson.dumps({"name": "paid", "message_id": "bad-3"})
        await publish_raw(settings, exchange, "", no_v)
        dead = await _dead_letters(settings, topology, 3)
        variables = (await client.get_instance(started.instance_id))["variables"]
        stats = await client.stats()
    assert variables == {"orderId": "R-1", "via": "amqp"}
    reasons = sorted(str(m.headers[DEAD_REASON_HEADER]) for m in dead)
    assert reasons[0].startswith("not JSON")
    assert reasons[1].startswith("not_found: unknown message name 'nobody-waits'")
    assert reasons[2].startswith("wrong schema: v")
    assert {m.headers["x-orch-source-queue"] for m in dead} == {topology.messages_queue}
    assert stats["counters"]["messages_dead_lettered"] == 3
    assert stats["counters"]["messages_duplicate"] == 1
    assert stats["counters"]["messages_correlated"] == 1


async def _dead_letters(
    settings: Settings, topology: Topology, count: int
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.dead_queue, ensure=False)
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def all_there() -> bool:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                taken.append(message)
            return len(taken) >= count

        await wait_until(all_there, timeout=15, what=f"{count} dead letters")
        return taken
    finally:
        await connection.close()


async def test_an_interrupting_message_boundary_event_withdraws_the_task(
    settings: Settings, db: Any, topics: set[str]
) -> None:
    """The task's worker is running it: it is told to stop (task_revoked)."""
    topics.add("msg-work")
    worker = Worker("interrupted", settings=settings, claim_after_ms=0)
    hanging = hang_until_cancelled(worker, "msg-work")
    running, stopped = hanging.running, hanging.stopped

    async with running_engine(settings), Client(settings) as client:
        await client.deploy(interrupted_task("interrupt", "msg-work"))
        async with running_worker(worker):
            started = await client.start("interrupt", variables={"orderId": "C-1"})
            await wait_for_subscriptions(db, 1)
            await asyncio.wait_for(running.wait(), 15)

            async def claimed() -> bool:
                return await db.fetchval("SELECT status FROM tasks") == "claimed"

            await wait_until(claimed, timeout=15, what="the task to be claimed")
            answer = await client.correlate("cancel-order", "C-1")
            await wait_for_state(db, started.instance_id, "completed")
            await asyncio.wait_for(stopped.wait(), 15)
        instance = await client.get_instance(started.instance_id)
    assert answer["status"] == "correlated"
    assert [(t["node_id"], t["status"]) for t in instance["tasks"]] == [("work", "cancelled")]
    kinds = [h["kind"] for h in instance["history"]]
    assert "boundary_fired" in kinds
    assert instance["subscriptions"] == []


async def test_an_event_based_gateway_takes_the_message_and_drops_the_timer(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(message_or_timer("gateway"))
        started = await client.start("gateway", variables={"orderId": "G-1"})
        await wait_for_subscriptions(db, 1)
        answer = await client.correlate("paid", "G-1")
        await wait_for_state(db, started.instance_id, "completed")
        instance = await client.get_instance(started.instance_id)
    assert answer["status"] == "correlated"
    chosen = [h for h in instance["history"] if h["kind"] == "event_chosen"]
    assert [h["detail"]["event"] for h in chosen] == ["approved"]
    assert await db.fetchval("SELECT count(*) FROM message_subscriptions") == 0


async def test_a_buffered_message_expires_and_is_never_delivered(
    settings: Settings, db: Any
) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("expiry"))
        unbuffered = await client.correlate("paid", "E-1", ttl=0)
        answer = await client.correlate("paid", "E-1", ttl=0.3)

        async def expired() -> bool:
            status = "SELECT status FROM messages WHERE message_id = $1"
            return await db.fetchval(status, answer["message_id"]) == "expired"

        await wait_until(expired, timeout=10, what="the buffered message to expire")
        started = await client.start("expiry", variables={"orderId": "E-1"})
        await wait_for_subscriptions(db, 1)
        await asyncio.sleep(1.5)  # a sweep or two
        assert await state_of(db, started.instance_id) == "active"
        stats = await client.stats()
    assert unbuffered["status"] == "not_correlated"
    assert answer["status"] == "buffered"
    assert stats["counters"]["messages_expired"] == 1
    assert stats["counters"].get("messages_correlated", 0) == 0


async def test_a_message_name_nobody_waits_for_is_refused(settings: Settings) -> None:
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("names"))
        with pytest.raises(NotFound, match="unknown message name"):
            await client.correlate("pay", "X")


async def test_the_cli_correlates(
    settings: Settings, db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCH_AMQP_URL", settings.amqp_url)
    monkeypatch.setenv("ORCH_NAMESPACE", settings.namespace)
    args = ["correlate", "paid", "--key", "L-1", "--vars", '{"by": "cli"}', "--message-id", "c-1"]
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("cli"))
        started = await client.start("cli", variables={"orderId": "L-1"})
        await wait_for_subscriptions(db, 1)
        await asyncio.to_thread(main, [*args, "--ttl", "1h"])
        await wait_for_state(db, started.instance_id, "completed")
        variables = (await client.get_instance(started.instance_id))["variables"]
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["status"] == "correlated" and answer["message_id"] == "c-1"
    assert answer["instance_id"] == started.instance_id
    assert variables == {"orderId": "L-1", "by": "cli"}


async def test_messages_and_waits_arriving_together_on_two_engines_meet_exactly_once(
    settings: Settings, db: Any
) -> None:
    """Each key gets an instance and a message at the same moment, in either order, through
    two engines: every instance gets its own message, once."""
    keys = [f"R-{n}" for n in range(40)]
    async with running_engine(settings), running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("race"))

        async def both(key: str) -> tuple[str, dict[str, Any]]:
            started, answer = await asyncio.gather(
                client.start("race", variables={"orderId": key}),
                client.correlate("paid", key, variables={"got": key}, message_id=f"m-{key}"),
            )
            return started.instance_id, answer

        pairs = await asyncio.gather(*(both(key) for key in keys))

        async def all_done() -> bool:
            count = "SELECT count(*) FROM process_instances WHERE status = 'completed'"
            return await db.fetchval(count) == len(keys)

        await wait_until(all_done, timeout=30, what="every instance to get its message")
    rows = await db.fetch("SELECT id, variables FROM process_instances")
    assert sorted(r["variables"]["got"] for r in rows) == sorted(keys)
    assert all(r["variables"]["got"] == r["variables"]["orderId"] for r in rows)
    ledger = await db.fetch("SELECT message_id, status, instance_id FROM messages")
    assert {r["status"] for r in ledger} == {"correlated"} and len(ledger) == len(keys)
    by_key = {f"m-{key}": instance_id for key, (instance_id, _) in zip(keys, pairs, strict=True)}
    assert {r["message_id"]: str(r["instance_id"]) for r in ledger} == by_key
    statuses = [answer["status"] for _, answer in pairs]
    assert set(statuses) <= {"correlated", "buffered"}
    assert await db.fetchval("SELECT count(*) FROM message_subscriptions") == 0


async def test_an_engine_killed_after_committing_a_message_applies_it_once(
    settings: Settings, db: Any, processes: Processes
) -> None:
    """The engine dies (as with kill -9) between the commit of a correlation and its ack:
    the broker hands the message to another engine, which answers it duplicate."""
    crashing = processes.engine(ORCH_CRASH_AT="after_message_commit")
    async with Client(settings) as client:
        await client.deploy(waiting("killed"))
        started = await client.start("killed", variables={"orderId": "K-1"})
        await wait_for_subscriptions(db, 1)
        body = {"v": 1, "name": "paid", "correlation_key": "K-1", "variables": {"once": 1}}
        exchange = Topology(settings.namespace).messages_exchange
        await publish_raw(settings, exchange, "", orjson.dumps(body), message_id="k-1")
        await asyncio.wait_for(asyncio.to_thread(crashing.wait), 30)
        assert crashing.returncode == 137
        await wait_for_state(db, started.instance_id, "completed")
        assert await counter(db, "messages_duplicate") == 0
        async with running_engine(settings):

            async def redelivered() -> bool:
                return await counter(db, "messages_duplicate") == 1

            await wait_until(redelivered, timeout=15, what="the redelivery to be a duplicate")
            variables = (await client.get_instance(started.instance_id))["variables"]
    assert variables == {"orderId": "K-1", "once": 1}
    assert await counter(db, "messages_correlated") == 1


async def test_the_sweeper_delivers_a_buffered_message_whose_delivery_was_lost(
    settings: Settings, db: Any
) -> None:
    """A message left buffered while a subscription waits for it (its engine died between
    the two looks) is delivered by the sweeper of any engine."""
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(waiting("swept"))
        started = await client.start("swept", variables={"orderId": "S-1"})
        await wait_for_subscriptions(db, 1)
        await db.execute(
            "INSERT INTO messages (message_id, name, correlation_key, variables, payload_hash,"
            " status, expires_at) VALUES ('lost-1', 'paid', 'S-1', '{\"swept\": true}',"
            " '\\x00', 'buffered', now() + interval '1 hour')"
        )
        await wait_for_state(db, started.instance_id, "completed", timeout=10)
        variables = (await client.get_instance(started.instance_id))["variables"]
    assert variables == {"orderId": "S-1", "swept": True}
    assert await db.fetchval("SELECT status FROM messages") == "correlated"
