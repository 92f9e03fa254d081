"""Messages: parsing a producer's body, the names deployed definitions wait for, the
subscription parts of a unit of work, the CLI's durations."""

from __future__ import annotations

import argparse

import orjson
import pytest

from orchestrator.cli import _duration
from orchestrator.daemon import calls
from orchestrator.daemon.messages import Incoming, message_names_in
from orchestrator.daemon.parsing import Malformed, parse_message
from orchestrator.store.unit_of_work import NewSubscription, UnitOfWork

MAX = 1_048_576


def test_the_amqp_message_id_stands_in_for_the_bodys() -> None:
    body = orjson.dumps({"v": 1, "name": "paid", "correlation_key": "A", "variables": {"x": 1}})
    parsed = parse_message(body, MAX, "amqp-id")
    assert (parsed.message_id, parsed.name, parsed.correlation_key) == ("amqp-id", "paid", "A")
    own = parse_message(orjson.dumps({"v": 1, "name": "paid", "message_id": "own"}), MAX, "x")
    assert own.message_id == "own"
    with pytest.raises(Malformed, match="wrong schema: message_id"):
        parse_message(orjson.dumps({"v": 1, "name": "paid"}), MAX, None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"nope", "not JSON"),
        (b'{"name": "paid", "message_id": "m"}', "wrong schema: v"),
        (b'{"v": 2, "name": "paid", "message_id": "m"}', "wrong schema: v"),
        (b'{"v": 1, "message_id": "m"}', "wrong schema: name"),
        (b'{"v": 1, "name": "paid", "message_id": "m", "ttl_ms": -1}', "wrong schema: ttl_ms"),
        (b'{"v": 1, "name": "paid", "message_id": "m", "variables": []}', "wrong schema"),
    ],
)
def test_a_malformed_message_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_message(body, MAX, "amqp-id")


def test_the_payload_hash_ignores_the_id_and_the_order_of_keys() -> None:
    one = Incoming("paid", "A", {"a": 1, "b": 2}, "m-1")
    assert one.payload_hash == Incoming("paid", "A", {"b": 2, "a": 1}, "m-2", 0).payload_hash
    assert one.payload_hash != Incoming("paid", "B", {"a": 1, "b": 2}, "m-1").payload_hash
    assert one.payload_hash != Incoming("paid", None, {"a": 1, "b": 2}, "m-1").payload_hash


def test_message_names_are_read_from_every_waiting_node() -> None:
    graph = {
        "nodes": [
            {"id": "s", "type": "start_event"},
            {"id": "a", "type": "message_catch_event", "message": {"name": "paid"}},
            {"id": "b", "type": "receive_task", "message": {"name": "shipped"}},
            {"id": "c", "type": "message_boundary_event", "message": {"name": "cancel"}},
        ]
    }
    assert message_names_in(graph) == {"paid", "shipped", "cancel"}


def test_a_subscription_opened_and_closed_in_one_unit_is_neither() -> None:
    uow = UnitOfWork()
    uow.new_subscriptions += [
        NewSubscription("w1", "i", "n1", "paid", "A"),
        NewSubscription("w2", "i", "n2", "paid", None),
    ]
    uow.closed_waits += [("w2", "message"), ("w0", "message"), ("t1", "timer")]
    parts = uow._subscription_parts()
    assert parts["new_subscriptions"] == [["w1"], ["i"], ["n1"], ["paid"], ["A"]]
    assert parts["closed_subscriptions"] == [["w0"]]
    assert UnitOfWork()._subscription_parts() == {}


def test_a_new_subscription_asks_the_engines_to_look_in_the_buffer() -> None:
    message = calls.deliver_buffered("w1", "paid", "A")
    assert message.routing_key == "~commands" and message.message_id == "deliver:w1"
    body = orjson.loads(message.body)
    assert body == {"v": 1, "type": "deliver_buffered", "name": "paid", "correlation_key": "A"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600.0), ("30s", 30.0), ("500ms", 0.5), ("2d", 172800.0), ("0", 0.0), ("1.5", 1.5)],
)
def test_cli_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1s", "1w", "nan"])
def test_cli_refuses_what_is_no_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)
