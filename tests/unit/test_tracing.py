"""W3C trace context: what counts as a traceparent, what the wire models make of a bad one,
and the spans helpers against OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator import tracing
from orchestrator.broker.topology import Topology
from orchestrator.cli import _traceparent, build_parser
from orchestrator.daemon.calls import start_child
from orchestrator.daemon.effects import InstanceInfo, task_message
from orchestrator.daemon.parsing import parse_command, parse_reports
from orchestrator.daemon.relay import Relay
from orchestrator.daemon.start_rounds import _traced
from orchestrator.engine.state import CalledBy, StartChild
from orchestrator.model.wire import Completed, StartCommand
from orchestrator.store.unit_of_work import OutboxMessage, TaskRow
from workers import TaskContext
from workers.testing import run_task

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "value",
    [
        VALID,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        VALID.encode(),  # an AMQP header may arrive as bytes
    ],
)
def test_a_version_00_traceparent_is_accepted(value: str | bytes) -> None:
    expected = value.decode() if isinstance(value, bytes) else value
    assert tracing.valid_traceparent(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "garbage",
        VALID.upper(),  # hex is lower case
        "01" + VALID[2:],  # only version 00 is understood
        "ff" + VALID[2:],
        VALID + "-extra",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero span id
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        b"\xff" * 55,
    ],
)
def test_anything_else_is_no_traceparent(value: object) -> None:
    assert tracing.valid_traceparent(value) is None


def test_a_new_traceparent_is_valid_sampled_and_new_each_time() -> None:
    made = {tracing.new_traceparent() for _ in range(100)}
    assert len({tracing.trace_id_of(t) for t in made}) == 100
    assert all(tracing.valid_traceparent(t) == t and t.endswith("-01") for t in made)
    assert tracing.new_traceparent(sampled=False).endswith("-00")


def test_headers_give_their_traceparent_only_when_it_is_valid() -> None:
    assert tracing.header_traceparent({"traceparent": VALID}) == VALID
    assert tracing.header_traceparent({"traceparent": "nope"}) is None
    assert tracing.header_traceparent(None) is None
    assert tracing.trace_headers(VALID) == {"traceparent": VALID}
    assert tracing.trace_headers(None) == {}


def test_a_bad_traceparent_on_the_wire_is_ignored_not_refused() -> None:
    start = {"v": 1, "type": "start", "process_key": "p", "idempotency_key": "k"}
    for bad in ("nope", 42, {"a": 1}, None):
        command = parse_command(orjson.dumps({**start, "traceparent": bad}), 1 << 20)
        assert isinstance(command, StartCommand) and command.traceparent is None
    good = parse_command(orjson.dumps({**start, "traceparent": VALID}), 1 << 20)
    assert isinstance(good, StartCommand) and good.traceparent == VALID
    report = {
        "v": 1,
        "type": "completed",
        "task_id": "e2174e48-ab27-471a-a696-4be84aa1685e",
        "attempt": 1,
        "worker_id": "w",
    }
    # A report's is taken as it comes (checked only where used: the span links), so
    # nothing in it can refuse the report.
    bad = ["00-zz", 42, {"a": 1}, None]
    body = orjson.dumps([{**report, "traceparent": value} for value in [*bad, VALID]])
    parsed = parse_reports(body, 1 << 20)
    assert [p.reason for p in parsed] == [None] * 5
    assert [p.report.traceparent for p in parsed if p.report] == [*bad, VALID]


def test_a_start_takes_the_header_when_its_body_has_no_traceparent() -> None:
    command = StartCommand(process_key="p", idempotency_key="k")
    with_header = SimpleNamespace(headers={"traceparent": VALID})
    assert _traced(with_header, command).traceparent == VALID  # type: ignore[arg-type]
    other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    own = command.model_copy(update={"traceparent": other})
    assert _traced(with_header, own).traceparent == other  # type: ignore[arg-type]
    bad_header = SimpleNamespace(headers={"traceparent": "bad"})
    assert _traced(bad_header, command).traceparent is None  # type: ignore[arg-type]


def test_task_messages_and_a_childs_start_carry_the_instances_trace() -> None:
    task = TaskRow("t1", "i1", "n1", "topic", "queued", 1, 2, 30_000, None, None, 0)
    message = task_message(task, InstanceInfo("i1", "p", None, VALID), {})
    assert message.traceparent == VALID
    assert "traceparent" not in orjson.loads(message.body)  # a header, not a field
    child = StartChild("c1", "child", None, {}, CalledBy("i1", "t1", ()))
    start = start_child(child, traceparent=VALID)
    assert start.traceparent == VALID
    assert orjson.loads(start.body)["traceparent"] == VALID


async def test_a_handler_sees_the_trace_and_its_report_carries_it_on() -> None:
    seen: list[str | None] = []

    async def handler(task: TaskContext) -> dict[str, Any]:
        seen.append(task.traceparent)
        return {}

    report = await run_task(handler, traceparent=VALID)
    assert seen == [VALID]
    assert isinstance(report, Completed) and report.traceparent == VALID
    assert (await run_task(handler)).traceparent is None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def test_spans_join_the_trace_they_are_given(spans: InMemorySpanExporter) -> None:
    assert tracing.enabled()
    with tracing.span("outer", parent=VALID, kind="consumer") as outer:
        assert outer is not None
        inner = tracing.start_span("inner")  # the current span is its parent
        assert inner is not None
        inner.end()
        current = tracing.current_traceparent()
    tracing.record_span("waited", parent=VALID, start_ns=1_000, end_ns=2_000)
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert {f"{s.context.trace_id:032x}" for s in finished.values()} == {TRACE_ID}
    assert finished["outer"].parent is not None
    assert finished["outer"].parent.span_id == int(VALID[36:52], 16)
    assert finished["inner"].parent is not None
    assert finished["inner"].parent.span_id == finished["outer"].context.span_id
    assert current == tracing.traceparent_of(outer)
    assert (finished["waited"].start_time, finished["waited"].end_time) == (1_000, 2_000)


def test_a_failing_block_marks_its_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.span("failing"):
        raise RuntimeError("boom")
    (failed,) = spans.get_finished_spans()
    assert not failed.status.is_ok
    assert failed.events[0].name == "exception"


def test_links_name_each_trace_once(spans: InMemorySpanExporter) -> None:
    other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    links = tracing.links_to([VALID, None, other, VALID, "00-zz", 42])
    assert sorted(f"{link.context.trace_id:032x}" for link in links) == ["1" * 32, TRACE_ID]


def test_without_a_provider_no_spans_are_made() -> None:
    assert not tracing.enabled()  # the tests never set OpenTelemetry's global provider
    assert tracing.start_span("nothing") is None
    with tracing.span("nothing") as nothing:
        assert nothing is None


def test_the_environment_installs_a_provider_only_when_it_asks_for_an_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.configure_from_environment("test") is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.configure_from_environment("test") is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_from_environment("test") is False


def test_the_relay_publishes_an_outbox_rows_traceparent_as_its_header() -> None:
    relay = Relay(None, None, None, Topology("orch"))  # type: ignore[arg-type]
    traced = relay._outgoing(OutboxMessage("topic", "t1:1", b"{}", VALID), "1.000")
    assert traced.headers == {"x-orch-published-at-ms": "1.000", "traceparent": VALID}
    untraced = relay._outgoing(OutboxMessage("topic", "t1:1", b"{}"), "1.000")
    assert "traceparent" not in untraced.headers


def test_everything_works_without_opentelemetry_installed() -> None:
    """The extra is optional: with `opentelemetry` not importable, propagation still works
    and every span helper is a no-op (run in a fresh interpreter that cannot import it)."""
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # import opentelemetry now raises ImportError
from orchestrator import tracing
import orchestrator.client, orchestrator.daemon.report_rounds, orchestrator.daemon.start_rounds
import workers
assert not tracing.INSTALLED and not tracing.enabled()
assert tracing.start_span("x") is None and tracing.links_to([{VALID!r}]) == []
with tracing.span("x") as nothing:
    assert nothing is None
assert tracing.current_traceparent() is None
assert tracing.configure_from_environment("x") is False
assert tracing.valid_traceparent({VALID!r}) == {VALID!r}
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_command_line_start_takes_a_traceparent() -> None:
    args = build_parser().parse_args(["start", "order", "--traceparent", VALID])
    assert _traceparent(args.traceparent) == VALID
    assert _traceparent(None) is None and _traceparent("") is None
    with pytest.raises(SystemExit, match="not a W3C traceparent"):
        _traceparent("nope")


def test_without_a_provider_the_current_remote_context_is_still_passed_on() -> None:
    """An application that extracted a caller's context (with no tracer provider of its
    own) still has it as the current span: the client sends that on."""
    from opentelemetry import context, trace

    remote = trace.NonRecordingSpan(tracing._span_context(VALID))
    token = context.attach(trace.set_span_in_context(remote))
    try:
        assert not tracing.enabled()
        assert tracing.current_traceparent() == VALID
    finally:
        context.detach(token)
    assert tracing.current_traceparent() is None
