"""Messages the engine cannot process go to the dead queue with a reason; the engine goes on."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from orchestrator.broker.topology import (
    COMMAND_ROUTING_KEY,
    DEAD_REASON_HEADER,
    REPORT_ROUTING_KEY,
    Topology,
)
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.model.wire import CommandReply, Completed
from tests.support.harness import (
    counter,
    instance_states,
    running_engine,
    running_worker,
    sequential_process,
    take_task,
    wait_until,
)
from workers import TaskContext, Worker

pytestmark = pytest.mark.integration

TOPIC = "malformed-step"
TIMEOUT = 15.0


def completed_body(task_id: str, **variables: Any) -> bytes:
    report = Completed(task_id=task_id, attempt=1, worker_id="raw", variables=variables)
    return orjson.dumps(report.model_dump(mode="json"))


def unversioned(body: bytes) -> bytes:
    """The same message without its `v`: the models would fill it in, the contract does not."""
    return orjson.dumps({key: value for key, value in orjson.loads(body).items() if key != "v"})


def bad_reports(settings: Settings) -> dict[str, tuple[bytes, str]]:
    """message_id -> (body, what the dead-letter reason must contain)."""
    unknown = str(uuid.uuid4())
    oversized = completed_body(str(uuid.uuid4()), blob="x" * settings.max_report_bytes)
    assert len(oversized) > settings.max_report_bytes
    return {
        "not-json": (b'{"type": "completed", task_id', "not JSON"),
        "not-utf8": (b"\xff\xfe\xfd", "not JSON"),
        "missing-fields": (orjson.dumps({"type": "completed"}), "wrong schema"),
        "unknown-type": (
            orjson.dumps({"type": "nonsense", "task_id": unknown, "attempt": 1, "worker_id": "w"}),
            "wrong schema",
        ),
        "empty-array": (b"[]", "wrong schema"),
        "no-version": (unversioned(completed_body(unknown, x=1)), "v: Field required"),
        "unknown-task": (completed_body(unknown, x=1), f"unknown task: {unknown}"),
        "not-a-task-id": (completed_body("order-17", x=1), "unknown task"),
        "oversized": (oversized, "oversized"),
    }


async def publish_all(
    channel: AbstractChannel,
    exchange_name: str,
    routing_key: str,
    bodies: dict[str, bytes],
    **properties: Any,
) -> None:
    """Publish each body (message_id = its key) in order, each confirmed by the broker."""
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    for message_id, body in bodies.items():
        message = aio_pika.Message(body, message_id=message_id, **properties)
        await exchange.publish(message, routing_key)


async def collect_dead(
    channel: AbstractChannel, topology: Topology, count: int
) -> dict[str, AbstractIncomingMessage]:
    """Take `count` dead letters off the dead queue, by message_id."""
    queue = await channel.get_queue(topology.dead_queue, ensure=False)
    dead: dict[str, AbstractIncomingMessage] = {}

    async def all_there() -> bool:
        while len(dead) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                return False
            dead[message.message_id or f"<no id {len(dead)}>"] = message
        return True

    await wait_until(all_there, timeout=TIMEOUT, what=f"{count} dead letters")
    return dead


async def nothing_more_dead(channel: AbstractChannel, topology: Topology) -> None:
    queue = await channel.get_queue(topology.dead_queue, ensure=False)
    extra = await queue.get(no_ack=True, fail=False)
    assert extra is None, (
        f"unexpected dead letter {extra.message_id}: {extra.headers}" if extra else ""
    )


def reason_of(message: AbstractIncomingMessage) -> str:
    reason = (message.headers or {}).get(DEAD_REASON_HEADER)
    assert isinstance(reason, str), f"dead letter without a reason header: {message.headers}"
    return reason


def one_step_worker(settings: Settings) -> Worker:
    worker = Worker("malformed", settings=settings)

    @worker.task(TOPIC)
    async def handle(task: TaskContext) -> dict[str, Any]:
        return {"handled": task.variables["n"] + 1}

    return worker


async def test_malformed_reports_are_dead_lettered_and_engine_keeps_running(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    topics.add(TOPIC)
    topology = Topology(settings.namespace)
    sent = bad_reports(settings)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("after-garbage", [TOPIC]))
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await publish_all(
                channel,
                topology.reports_exchange,
                REPORT_ROUTING_KEY,
                {key: body for key, (body, _) in sent.items()},
                content_type="application/json",
            )
            dead = await collect_dead(channel, topology, len(sent))

            assert sorted(dead) == sorted(sent)
            for key, (body, expected_reason) in sent.items():
                message = dead[key]
                reason = reason_of(message)
                assert expected_reason in reason, f"{key}: reason {reason!r}"
                assert message.headers["x-orch-source-queue"] == topology.reports_queue
                assert message.body == body, f"{key}: the dead letter's body was changed"
            assert await counter(db, "reports_dead_lettered") == len(sent)
            assert await db.fetchval("SELECT count(*) FROM report_ledger") == 0

            # The engine goes on: a normal instance started afterwards completes.
            async with running_worker(one_step_worker(settings)):
                started = await client.start("after-garbage", variables={"n": 1})

                async def completed() -> bool:
                    states = await instance_states(db, "after-garbage")
                    return states.get("completed") == 1

                await wait_until(completed, timeout=TIMEOUT, what="the later instance to complete")
            instance = await client.get_instance(started.instance_id)
            assert instance["variables"] == {"n": 1, "handled": 2}
            await nothing_more_dead(channel, topology)
            assert await counter(db, "reports_dead_lettered") == len(sent)


async def test_valid_report_among_malformed_ones_is_applied(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """Garbage around a good report in one burst: only the garbage is dead-lettered."""
    topics.add(TOPIC)
    topology = Topology(settings.namespace)
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("mixed", [TOPIC]))
        started = await client.start("mixed", variables={"n": 1})
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            task = await take_task(channel, topology, TOPIC)
            assert task.instance_id == started.instance_id
            unknown = str(uuid.uuid4())
            bodies = {
                "garbage-1": b"garbage",
                "unknown-task-1": completed_body(unknown, x=1),
                "valid": completed_body(task.task_id, done=True),
                "wrong-schema": orjson.dumps({"type": "completed", "task_id": task.task_id}),
                "unknown-task-2": completed_body(str(uuid.uuid4()), x=2),
            }
            await publish_all(channel, topology.reports_exchange, REPORT_ROUTING_KEY, bodies)
            dead = await collect_dead(channel, topology, len(bodies) - 1)

            async def completed() -> bool:
                return (await instance_states(db, "mixed")).get("completed") == 1

            await wait_until(completed, timeout=TIMEOUT, what="the valid report to be applied")
            assert sorted(dead) == sorted(set(bodies) - {"valid"})
            for key, message in dead.items():
                assert message.body == bodies[key], f"{key}: dead letter carries another body"
            assert "not JSON" in reason_of(dead["garbage-1"])
            assert f"unknown task: {unknown}" in reason_of(dead["unknown-task-1"])
            assert "unknown task" in reason_of(dead["unknown-task-2"])
            assert "wrong schema" in reason_of(dead["wrong-schema"])
            assert await counter(db, "reports_dead_lettered") == len(bodies) - 1
            instance = await client.get_instance(started.instance_id)
            assert instance["variables"] == {"n": 1, "done": True}
            await nothing_more_dead(channel, topology)


async def test_malformed_command_is_answered_invalid_command(
    settings: Settings, db: asyncpg.Pool
) -> None:
    topology = Topology(settings.namespace)
    bad = {
        "cmd-not-json": (b"deploy please", "not JSON"),
        "cmd-unknown-type": (orjson.dumps({"type": "launch", "process_key": "x"}), "wrong schema"),
        "cmd-missing-fields": (orjson.dumps({"type": "start"}), "wrong schema"),
        "cmd-no-version": (
            orjson.dumps({"type": "stats", "process_key": "x"}),
            "wrong schema: v: Field required",
        ),
    }
    async with running_engine(settings), Client(settings) as client:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            inbox = await channel.declare_queue(exclusive=True, auto_delete=True)
            replies: dict[str, CommandReply] = {}

            async def on_reply(message: AbstractIncomingMessage) -> None:
                replies[message.correlation_id or ""] = CommandReply.model_validate_json(
                    message.body
                )

            await inbox.consume(on_reply, no_ack=True)
            exchange = await channel.get_exchange(topology.commands_exchange, ensure=False)
            for key, (body, _) in bad.items():
                message = aio_pika.Message(
                    body, message_id=key, correlation_id=f"corr-{key}", reply_to=inbox.name
                )
                await exchange.publish(message, COMMAND_ROUTING_KEY)

            async def all_replied() -> bool:
                return len(replies) >= len(bad)

            await wait_until(all_replied, timeout=TIMEOUT, what="replies to malformed commands")
            assert sorted(replies) == sorted(f"corr-{key}" for key in bad)
            for key, (_, expected_reason) in bad.items():
                reply = replies[f"corr-{key}"]
                assert reply.ok is False
                assert reply.result is None
                assert reply.error is not None
                assert reply.error.code == "invalid_command"
                assert expected_reason in reply.error.message, f"{key}: {reply.error.message!r}"

            dead = await collect_dead(channel, topology, len(bad))
            assert sorted(dead) == sorted(bad)
            for key, (body, expected_reason) in bad.items():
                assert expected_reason in reason_of(dead[key])
                assert dead[key].headers["x-orch-source-queue"] == topology.commands_queue
                assert dead[key].body == body

        # The command consumer goes on: a valid command is answered.
        stats = await client.stats()
        assert stats["instances"] == {}


async def test_report_the_engine_cannot_apply_is_dead_lettered_and_counted(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """A well-formed completion whose variables PostgreSQL refuses (a NUL character in a
    jsonb string) makes the batch's transaction fail: the engine isolates it, dead-letters it
    as an engine error, and counts it and the malformed report that shared its batch."""
    topics.add(TOPIC)
    topology = Topology(settings.namespace)
    async with Client(settings) as client:
        async with running_engine(settings):
            await client.deploy(sequential_process("poison", [TOPIC]))
            started = await client.start("poison", variables={"n": 1})
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            task = await take_task(channel, topology, TOPIC)
            bodies = {
                "garbage": b"not json at all",
                "poison": completed_body(task.task_id, note="nul \u0000 char"),
            }
            # Queued while no engine runs, so the restarted engine takes both in one batch.
            await publish_all(channel, topology.reports_exchange, REPORT_ROUTING_KEY, bodies)
            async with running_engine(settings):
                dead = await collect_dead(channel, topology, len(bodies))
                assert sorted(dead) == sorted(bodies)
                assert "not JSON" in reason_of(dead["garbage"])
                assert "engine error" in reason_of(dead["poison"])
                assert dead["poison"].body == bodies["poison"]

                # Nothing of the poison report was applied or recorded.
                status = await db.fetchval("SELECT status FROM tasks WHERE id = $1", task.task_id)
                assert status == "queued"
                assert await db.fetchval("SELECT count(*) FROM report_ledger") == 0

                # The engine goes on: a valid completion of the same task is applied.
                await publish_all(
                    channel,
                    topology.reports_exchange,
                    REPORT_ROUTING_KEY,
                    {"valid": completed_body(task.task_id, note="fine")},
                )

                async def completed() -> bool:
                    return (await instance_states(db, "poison")).get("completed") == 1

                await wait_until(completed, timeout=TIMEOUT, what="the valid completion")
                instance = await client.get_instance(started.instance_id)
                assert instance["variables"] == {"n": 1, "note": "fine"}
                await nothing_more_dead(channel, topology)
                # Every report that went to the dead queue is counted.
                assert await counter(db, "reports_dead_lettered") == len(bodies)


async def test_a_bad_report_in_a_batch_is_dead_lettered_alone(
    settings: Settings, db: asyncpg.Pool, topics: set[str]
) -> None:
    """Workers send several reports as one JSON array. A bad element goes to the dead queue
    with its own JSON; the good ones in the same message are applied."""
    topics.add(TOPIC)
    topology = Topology(settings.namespace)
    async with Client(settings) as client, running_engine(settings):
        await client.deploy(sequential_process("batched", [TOPIC]))
        await client.start("batched", variables={"n": 1})
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            task = await take_task(channel, topology, TOPIC)
            bad = {"type": "completed", "task_id": task.task_id}
            batch = b"[" + completed_body(task.task_id, ok=True) + b"," + orjson.dumps(bad) + b"]"
            await publish_all(
                channel, topology.reports_exchange, REPORT_ROUTING_KEY, {"batch": batch}
            )

            async def completed() -> bool:
                return (await instance_states(db, "batched")).get("completed") == 1

            await wait_until(completed, timeout=TIMEOUT, what="the good report of the batch")
            dead = await collect_dead(channel, topology, 1)
            assert "wrong schema" in reason_of(dead["batch"])
            assert orjson.loads(dead["batch"].body) == bad
            assert await counter(db, "reports_dead_lettered") == 1
