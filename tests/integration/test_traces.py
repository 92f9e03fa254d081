"""W3C trace context end to end: a start's traceparent reaches every task and every report of
its instance (and of the instances it calls), and with OpenTelemetry one instance reads as one
trace: the start, each task's wait in its queue, each handler, and the rounds linked to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from orchestrator import tracing
from orchestrator.broker.topology import REPORT_ROUTING_KEY, Topology
from orchestrator.client import Client
from orchestrator.config import Settings
from tests.support.harness import (
    publish_raw,
    running_engine,
    running_worker,
    sequential_process,
    wait_until,
)
from workers import TaskContext, TaskFailure, Worker

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "bpmn"
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TOPICS = ["trace-a", "trace-b"]


def tracing_worker(
    settings: Settings, seen: dict[str, list[str | None]], fail_first: str | None = None
) -> Worker:
    """Handlers that note the traceparent each task arrived with, by instance; the first
    attempt of `fail_first` fails, to be retried at once."""
    worker = Worker("traced", settings=settings)

    async def note(task: TaskContext) -> dict[str, Any]:
        seen.setdefault(task.info.instance_id, []).append(task.traceparent)
        if task.info.topic == fail_first and task.attempt == 1:
            raise TaskFailure("once", retries=1, retry_delay_s=0)
        return {}

    for topic in [*TOPICS, "child-work"]:
        worker.task(topic)(note)
    return worker


async def trace_of(db: Any, instance_id: str) -> str | None:
    value = await db.fetchval(
        "SELECT traceparent FROM process_instances WHERE id = $1", instance_id
    )
    return str(value) if value is not None else None


async def completed(db: Any, *instance_ids: str) -> bool:
    states = await db.fetch(
        "SELECT status FROM process_instances WHERE id = ANY($1::uuid[])", list(instance_ids)
    )
    return len(states) == len(instance_ids) and all(s["status"] == "completed" for s in states)


class ReportTap:
    """A queue of its own bound beside the engines' to the reports exchange: a copy of every
    report message, as workers sent it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.reports: list[dict[str, Any]] = []

    async def __aenter__(self) -> ReportTap:
        self._connection = await aio_pika.connect(self._settings.amqp_url)
        channel = await self._connection.channel()
        topology = Topology(self._settings.namespace)
        self._queue = await channel.declare_queue(exclusive=True)
        await self._queue.bind(topology.reports_exchange, REPORT_ROUTING_KEY)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._connection.close()

    async def drain(self) -> list[dict[str, Any]]:
        while (message := await self._queue.get(no_ack=True, fail=False)) is not None:
            body = orjson.loads(message.body)
            self.reports += body if isinstance(body, list) else [body]
        return self.reports


@pytest.fixture
async def deployed(settings: Settings, topics: set[str]) -> AsyncIterator[Client]:
    topics.update([*TOPICS, "child-work"])
    async with running_engine(settings), Client(settings) as client:
        await client.deploy(sequential_process("traced", TOPICS))
        yield client


async def test_the_callers_trace_reaches_every_task_and_report_of_its_instance(
    settings: Settings, db: Any, deployed: Client
) -> None:
    seen: dict[str, list[str | None]] = {}
    worker = tracing_worker(settings, seen, fail_first="trace-b")
    async with ReportTap(settings) as tap, running_worker(worker):
        given = (await deployed.start("traced", traceparent=CALLER)).instance_id
        untraced = (await deployed.start("traced")).instance_id
        await wait_until(
            lambda: completed(db, given, untraced), timeout=20, what="both instances to complete"
        )

        async def all_reports_tapped() -> bool:
            done = [r for r in await tap.drain() if r["type"] == "completed"]
            return len(done) >= 4

        await wait_until(all_reports_tapped, timeout=10, what="the four completions")
    assert await trace_of(db, given) == CALLER
    # Every task message carried it: both tasks', and the retry's of the one that failed.
    assert seen[given] == [CALLER, CALLER, CALLER]
    # A start without one gets a new trace of its own, the same for all of its tasks.
    made = await trace_of(db, untraced)
    assert made is not None and tracing.valid_traceparent(made) == made
    assert tracing.trace_id_of(made) != CALLER_TRACE
    assert seen[untraced] == [made, made, made]
    tasks = await db.fetch(
        "SELECT id, instance_id FROM tasks WHERE instance_id = ANY($1::uuid[])",
        [given, untraced],
    )
    expected = {str(t["id"]): CALLER if str(t["instance_id"]) == given else made for t in tasks}
    # Every report (claims, the failure, the completions) carried its task's trace on.
    assert {r["task_id"] for r in tap.reports} == set(expected)
    assert [r.get("traceparent") for r in tap.reports] == [
        expected[r["task_id"]] for r in tap.reports
    ]
    assert "failed" in {r["type"] for r in tap.reports}


async def test_a_called_instance_shares_its_callers_trace(
    settings: Settings, db: Any, deployed: Client
) -> None:
    seen: dict[str, list[str | None]] = {}
    async with running_worker(tracing_worker(settings, seen)):
        await deployed.deploy_file(DATA / "call_activity_c8.bpmn")
        parent = (await deployed.start("parent-c8", traceparent=CALLER)).instance_id
        await wait_until(lambda: completed(db, parent), timeout=30, what="the parent to finish")
    children = await db.fetch(
        "SELECT id, traceparent FROM process_instances WHERE parent_id = $1", parent
    )
    assert len(children) == 2
    assert {tracing.trace_id_of(c["traceparent"]) for c in children} == {CALLER_TRACE}
    for child in children:
        handled = seen[str(child["id"])]
        assert handled and {tracing.trace_id_of(t or "") for t in handled} == {CALLER_TRACE}


async def test_a_message_that_starts_an_instance_brings_its_trace(
    settings: Settings, db: Any, deployed: Client
) -> None:
    on_message = {
        "key": "traced-by-message",
        "nodes": [
            {"id": "s", "type": "start_event", "message": {"name": "order-placed"}},
            {"id": "work", "type": "service_task", "topic": "trace-a"},
            {"id": "e", "type": "end_event"},
        ],
        "flows": [{"id": "f1", "from": "s", "to": "work"}, {"id": "f2", "from": "work", "to": "e"}],
    }
    seen: dict[str, list[str | None]] = {}
    async with running_worker(tracing_worker(settings, seen)):
        await deployed.deploy(orjson.dumps(on_message).decode())
        body = orjson.dumps({"v": 1, "name": "order-placed", "correlation_key": "A-1"})
        exchange = Topology(settings.namespace).messages_exchange
        await publish_raw(
            settings, exchange, "", body, message_id="m1", headers={"traceparent": CALLER}
        )

        async def handled() -> bool:
            return bool(seen)

        await wait_until(handled, timeout=20, what="the started instance's task")
    ((instance_id, traces),) = seen.items()
    assert traces == [CALLER]
    assert await trace_of(db, instance_id) == CALLER


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield provider, exporter
    finally:
        tracing.use_provider(None)


def _named(finished: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def _id(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


async def test_one_instance_reads_as_one_trace(
    settings: Settings,
    db: Any,
    deployed: Client,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    seen: dict[str, list[str | None]] = {}
    async with running_worker(tracing_worker(settings, seen)):
        with provider.get_tracer("test").start_as_current_span("application request") as app:
            instance = (await deployed.start("traced")).instance_id
        await wait_until(lambda: completed(db, instance), timeout=20, what="the instance")

        def handler_ids() -> set[tuple[int, int]]:
            handlers = [s for s in exporter.get_finished_spans() if s.name.startswith("orch")]
            return {_id(s) for s in handlers if s.name.startswith("orchestrator handle")}

        async def rounds_linked_to_both_handlers() -> bool:
            linked = {
                (link.context.trace_id, link.context.span_id)
                for span in _named(list(exporter.get_finished_spans()), "orchestrator report round")
                for link in span.links
            }
            handlers = handler_ids()
            return len(handlers) == 2 and handlers <= linked

        await wait_until(rounds_linked_to_both_handlers, timeout=10, what="the report rounds")
    finished = list(exporter.get_finished_spans())
    trace = app.get_span_context().trace_id
    by_kind = {s.kind: s for s in _named(finished, "orchestrator start traced")}
    client_start, engine_start = by_kind[SpanKind.PRODUCER], by_kind[SpanKind.CONSUMER]
    assert client_start.parent is not None and engine_start.parent is not None
    assert client_start.parent.span_id == app.get_span_context().span_id
    assert engine_start.parent.span_id == _id(client_start)[1]
    assert engine_start.attributes is not None
    assert engine_start.attributes["orchestrator.instance_id"] == instance
    # The instance keeps the engine's start span as its trace context: its tasks hang there.
    assert await trace_of(db, instance) == tracing.traceparent_of(engine_start)  # type: ignore[arg-type]
    waits = [s for s in finished if s.name.startswith("orchestrator queue wait")]
    handlers = [s for s in finished if s.name.startswith("orchestrator handle")]
    assert sorted(s.name for s in waits) == [f"orchestrator queue wait {t}" for t in TOPICS]
    assert sorted(s.name for s in handlers) == [f"orchestrator handle {t}" for t in TOPICS]
    for span in [client_start, engine_start, *waits, *handlers]:
        assert _id(span)[0] == trace
    for span in [*waits, *handlers]:
        assert span.parent is not None and span.parent.span_id == _id(engine_start)[1]
        assert span.attributes is not None
        assert span.attributes["orchestrator.instance_id"] == instance
        assert span.attributes["orchestrator.attempt"] == 1
        assert span.attributes["orchestrator.worker_id"]
        assert span.attributes["orchestrator.task_id"]
    for wait in waits:
        assert wait.start_time is not None and wait.end_time is not None
        assert wait.start_time <= wait.end_time
    assert all(h.kind == SpanKind.CONSUMER for h in handlers)
    # Rounds serve many instances: linked to the traces they served, never their parent.
    start_rounds = _named(finished, "orchestrator start round")
    assert any(_id(engine_start) in _links(s) for s in start_rounds)
    for round_span in [*start_rounds, *_named(finished, "orchestrator report round")]:
        assert round_span.parent is None


def _links(span: ReadableSpan) -> set[tuple[int, int]]:
    return {(link.context.trace_id, link.context.span_id) for link in span.links}
