"""The worker: takes tasks from topic queues, runs handlers, reports back with confirms.

The lease protocol (see docs/wire-protocol.md): the worker claims a task `claim_after_s` after
its handler started (a task done sooner sends only its outcome); the engine's lease in
PostgreSQL runs from that claim. The delivery itself is acked when the outcome is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from orchestrator import aio, tracing
from orchestrator.broker.connection import backoff, connect, retrying, worth_retrying
from orchestrator.broker.publisher import Outgoing, Publisher
from orchestrator.broker.topology import (
    PUBLISHED_AT_HEADER,
    REPORT_ROUTING_KEY,
    Topology,
    declare_task_queue,
)
from orchestrator.config import Settings
from orchestrator.errors import ServiceUnavailable
from orchestrator.logs import current_task
from orchestrator.metrics_http import MetricsPortInUse
from orchestrator.model.wire import (
    NOTICE_ADAPTER,
    BpmnErrorReport,
    Claimed,
    Completed,
    ExtendLock,
    Failed,
    LockAnswer,
    Released,
    Report,
    TaskMessage,
    TaskRevoked,
)
from workers._acks import AckBatcher
from workers._context import LockStatus, TaskContext
from workers._durations import from_ms
from workers._errors import LockLost
from workers._metrics import WorkerMetrics, outcome_of
from workers._outcome import Handler, info_of, run_handler
from workers._sender import ReportSender

log = logging.getLogger(__name__)


def _worth_starting_again(exc: BaseException) -> bool:
    """A start that could not connect, or lost its connection while it subscribed (the broker
    went away meanwhile), may succeed later; one the broker refused (a wrong password, an
    unknown vhost) or a worker without handlers will not."""
    if isinstance(exc, ServiceUnavailable):
        return worth_retrying(exc)
    return isinstance(exc, aio_pika.exceptions.AMQPError | OSError)


#: Reports after which the delivery is done with and can be acked.
_SETTLING = (Completed, Failed, BpmnErrorReport, Released)


@dataclass
class _Topic:
    name: str
    handler: Handler
    concurrency: int
    #: Extend the lock while the handler runs, up to this many seconds in all (None: never).
    auto_extend_max_s: float | None = None
    #: Prefetch equals concurrency, so this only matters for redeliveries after a reconnect.
    slots: asyncio.Semaphore | None = None


@dataclass
class _Running:
    task: TaskMessage
    delivery: AbstractIncomingMessage
    handler: asyncio.Task[None] | None = None
    acked: bool = False
    claim_sent: bool = False
    revoked: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    #: The trace its reports carry: the task message's, then the handler span's.
    traceparent: str | None = None


def _published_at_ms(delivery: AbstractIncomingMessage) -> float | None:
    value = (delivery.headers or {}).get(PUBLISHED_AT_HEADER)
    try:
        return float(value) if isinstance(value, str | bytes | int | float) else None
    except ValueError:
        return None


def _maybe_stale(item: _Running) -> bool:
    """A delivery another copy of which may already have been claimed: run it only once the
    engine says it is ours."""
    return item.delivery.redelivered or item.task.redispatch > 0


def _channel_open(delivery: AbstractIncomingMessage) -> bool:
    try:
        return not delivery.channel.is_closed
    except ChannelInvalidStateError:  # aio-pika's way of saying the channel is closed
        return False


class Worker:
    """Register handlers with `@worker.task("topic")`, then `worker.run()` (a process of its
    own, until SIGTERM) or `async with worker:` (beside other work in a running loop)."""

    def __init__(
        self,
        name: str = "worker",
        *,
        settings: Settings | None = None,
        claim_after_s: float = 0.02,
        shutdown_grace_s: float = 20.0,
        lock_answer_timeout_s: float = 10.0,
        start_deadline_s: float | None = 60.0,
        claim_after_ms: float | None = None,
    ) -> None:
        """Durations are in seconds. `start_deadline_s`: how long `run()` and `async with`
        keep trying to reach the broker before they raise ServiceUnavailable (None: until
        stopped). `claim_after_ms` is the older name of `claim_after_s`, in milliseconds
        (when given, it wins)."""
        self.name = name
        self.settings = settings
        self.claim_after_s = from_ms(claim_after_s, claim_after_ms)
        if self.claim_after_s < 0:
            raise ValueError("claim_after_s must not be negative")
        self.shutdown_grace_s = shutdown_grace_s
        self.lock_answer_timeout_s = lock_answer_timeout_s
        self.start_deadline_s = start_deadline_s
        self.worker_id = f"{name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._topics: dict[str, _Topic] = {}
        self._running: dict[tuple[str, int], _Running] = {}
        self._lock_answers: dict[str, asyncio.Future[LockAnswer]] = {}
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._sender: ReportSender | None = None
        self._inbox_name = ""
        self._consumers: list[tuple[Any, str]] = []
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._acks = AckBatcher()
        #: Served at /metrics when the settings name a metrics port.
        self.metrics = WorkerMetrics()
        self._metrics_served = False

    def task(
        self,
        topic: str,
        *,
        concurrency: int = 10,
        auto_extend_max_s: float | None = None,
        auto_extend_max_ms: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the handler of `topic`, running at most `concurrency` tasks at once.

        With `auto_extend_max_s` the worker extends the task's lock every third of a lock
        while the handler runs, for at most that many seconds in all: a slow handler keeps its
        task, a stuck one still loses it. If the engine answers that the task is no longer
        ours or its instance was cancelled, the handler is cancelled and nothing is reported.
        (`auto_extend_max_ms` is its older name, in milliseconds.)
        """
        extend_max_s = from_ms(auto_extend_max_s, auto_extend_max_ms)
        if extend_max_s is not None and extend_max_s <= 0:
            raise ValueError("auto_extend_max_s must be positive")

        def register(handler: Handler) -> Handler:
            if topic in self._topics:
                raise ValueError(f"topic {topic!r} already has a handler")
            self._topics[topic] = _Topic(topic, handler, concurrency, extend_max_s)
            return handler

        return register

    # --- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await self.run_until(stop)

        aio.run(main())

    async def run_until(self, stop: asyncio.Event) -> None:
        """Start (see `start_deadline_s`), run until `stop`, shut down gracefully."""
        if not await self._start_retrying(stop):
            return
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def __aenter__(self) -> Worker:
        """Start: connect and consume, trying again while the broker cannot be reached, for
        up to `start_deadline_s`. The broker pushes tasks to the worker's callbacks: nothing
        needs to run in the block for the worker to work."""
        await self._start_retrying(None)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Shut down gracefully, as on SIGTERM (see `shutdown`)."""
        await self.shutdown()

    async def _start_retrying(self, stop: asyncio.Event | None) -> bool:
        """Start; while the broker cannot be reached, try again (jittered backoff) until
        `start_deadline_s` has passed (then ServiceUnavailable) or `stop` is set (then False,
        not started). A start that failed half-way (the connection dropped between two
        subscriptions) is thrown away whole: a worker consuming some of its topics is worse
        than none."""

        async def attempt() -> None:
            try:
                await self.start()
            except BaseException:
                await self._abandon_start()
                raise

        attempts = retrying(
            retry_on=_worth_starting_again,
            first_s=0.5,
            max_s=10.0,
            deadline_s=self.start_deadline_s,
            stop=stop,
            what=f"starting worker {self.worker_id}",
        )
        try:
            await attempts(attempt)
        except RetryError as gave_up:
            if stop is not None and stop.is_set():
                return False
            last = gave_up.last_attempt.exception()
            raise ServiceUnavailable(
                f"worker {self.worker_id} could not start within {self.start_deadline_s:g} s "
                f"({gave_up.last_attempt.attempt_number} attempts): {last}"
            ) from last
        return True

    async def _abandon_start(self) -> None:
        connection, self._connection = self._connection, None
        self._publisher = self._sender = None
        self._consumers.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def start(self) -> None:
        """Connect and consume, in one attempt (`run()` and `async with` try again)."""
        if self._stopping.is_set():
            raise RuntimeError("this worker was shut down: a worker runs once, make another")
        if not self._topics:
            raise ValueError("the worker has no handlers: register one with @worker.task(topic)")
        settings = self.settings or Settings.from_env()
        self._metrics_served = settings.metrics_port is not None
        if settings.metrics_port is not None:
            self._serve_metrics(settings.metrics_port)
        topology = Topology(settings.namespace)
        self._topology = topology
        self._connection = await connect(settings.amqp_url, name=self.worker_id, deadline_s=0)
        self._publisher = await Publisher.open(self._connection)
        self._sender = ReportSender(self._publish_body)
        inbox_channel = await self._connection.channel()
        self._inbox_name = topology.worker_inbox(self.worker_id)
        inbox = await inbox_channel.declare_queue(
            self._inbox_name, exclusive=True, auto_delete=True
        )
        await inbox.consume(self._on_notice, no_ack=True)
        for topic in self._topics.values():
            topic.slots = asyncio.Semaphore(topic.concurrency)
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=topic.concurrency)
            queue = await declare_task_queue(channel, topology, topic.name)
            tag = await queue.consume(self._on_task, no_ack=False)
            self._consumers.append((queue, tag))
        log.info("worker %s consuming %s", self.worker_id, ", ".join(self._topics))

    async def shutdown(self) -> None:
        """Stop taking tasks; let running ones finish for a grace period; give back the rest."""
        self._stopping.set()
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception:  # connection already gone: the broker requeued everything
                log.debug("could not cancel consumer %s", tag)
        running = [r.settled.wait() for r in self._running.values()]
        if running:
            try:
                await asyncio.wait_for(asyncio.gather(*running), self.shutdown_grace_s)
            except TimeoutError:
                log.warning(
                    "%d tasks still running after the grace period: giving them back",
                    len(self._running),
                )
        for item in list(self._running.values()):
            await self._give_back(item)
        await self._acks.flush()
        if self._connection is not None:
            await self._connection.close()
        await self.metrics.server.stop()

    def _serve_metrics(self, port: int) -> None:
        try:
            self.metrics.server.start(port)
        except MetricsPortInUse as exc:  # another worker of this process has it: work on
            log.warning("worker %s: %s; serving no metrics", self.worker_id, exc)

    def _stop_handler(self, item: _Running, why: str) -> None:
        """Cancel a running handler whose task is not ours to finish; nothing is reported."""
        if item.handler is not None and not item.handler.done():
            log.info("stopping task %s attempt %d: %s", item.task.task_id, item.task.attempt, why)
            item.revoked = True
            item.handler.cancel()

    async def _give_back(self, item: _Running) -> None:
        self._stop_handler(item, "shutting down")
        if item.claim_sent:
            # The engine holds a lease for us: release it so a new attempt goes out at once.
            await self._send(item, Released(**self._ids(item)))
        elif not item.acked:
            self._acks.settled_elsewhere(item.delivery)
            try:
                await item.delivery.nack(requeue=True)
            except Exception:
                log.debug("nack failed; the broker requeues on close")

    # --- deliveries --------------------------------------------------------------------

    async def _on_task(self, delivery: AbstractIncomingMessage) -> None:
        try:
            task = TaskMessage.model_validate_json(delivery.body)
        except ValidationError as exc:
            log.error("malformed task message %s dead-lettered: %s", delivery.message_id, exc)
            self._acks.settled_elsewhere(delivery)
            await delivery.reject(requeue=False)
            return
        key = (task.task_id, task.attempt)
        if self._stopping.is_set():
            self._acks.settled_elsewhere(delivery)
            await delivery.nack(requeue=True)
            return
        existing = self._running.get(key)
        if existing is not None:
            if existing.acked or _channel_open(existing.delivery):
                # A second copy of a task running here (the engine may publish one twice):
                # settle it now, or it would hold a prefetch slot for as long as we run.
                self._acks.ack(delivery)
            else:
                # Redelivered after a reconnect: the first delivery's tag died with its
                # channel, so this is the one to ack when the outcome is confirmed.
                existing.delivery = delivery
            return
        item = _Running(task, delivery, traceparent=tracing.header_traceparent(delivery.headers))
        self._running[key] = item
        item.handler = asyncio.create_task(self._execute(item))

    async def _execute(self, item: _Running) -> None:
        task = item.task  # this asyncio task's log lines carry its ids (JSON logs)
        current_task.set({"instance_id": task.instance_id, "topic": task.topic, **self._ids(item)})
        topic = self._topics[item.task.topic]
        report: Report | None = None
        if topic.slots is None:
            raise RuntimeError("worker is not started")
        try:
            async with topic.slots:
                if _maybe_stale(item) and not await self._still_ours(item):
                    item.revoked = True
                    raise asyncio.CancelledError
                # A task that finishes within claim_after_s sends its outcome only; a longer
                # one claims first, so its lease starts about when its handler did.
                claim = asyncio.get_running_loop().call_later(
                    self.claim_after_s, lambda: self._spawn(self._claim(item))
                )
                extender = None
                if topic.auto_extend_max_s is not None:
                    extender = asyncio.create_task(
                        self._keep_extending(item, topic.auto_extend_max_s)
                    )
                try:
                    report = await self._timed_handler(topic, item)
                finally:
                    claim.cancel()
                    if extender is not None:
                        extender.cancel()
        except asyncio.CancelledError:
            report = None
        try:
            if report is not None and not item.revoked:
                await self._send(item, report)
            elif item.revoked and not item.acked and not self._stopping.is_set():
                await self._ack(item)
        finally:
            item.settled.set()
            self._running.pop((item.task.task_id, item.task.attempt), None)

    async def _timed_handler(self, topic: _Topic, item: _Running) -> Report:
        """The handler's report, counted and timed for the metrics (when they are served:
        otherwise the handler alone, as the metrics cost a task a few microseconds)."""
        if not self._metrics_served:
            return await self._call_handler(topic.handler, item)
        metrics, name = self.metrics, topic.name
        in_flight = metrics.in_flight.labels(name)
        in_flight.inc()
        began = time.perf_counter()
        report: Report | None = None
        try:
            report = await self._call_handler(topic.handler, item)
            return report
        finally:
            in_flight.dec()
            metrics.seconds.labels(name).observe(time.perf_counter() - began)
            metrics.tasks.labels(name, outcome_of(report)).inc()

    async def _call_handler(self, handler: Handler, item: _Running) -> Report:
        task = item.task
        published_at_ms = _published_at_ms(item.delivery)
        context = TaskContext(
            info_of(task, published_at_ms, item.traceparent),
            dict(task.variables),
            lambda lock_ms: self._extend(item, lock_ms),
        )
        if not tracing.enabled():
            return await run_handler(handler, context, self.worker_id)
        return await self._handler_in_span(handler, item, context, published_at_ms)

    async def _handler_in_span(
        self, handler: Handler, item: _Running, context: TaskContext, published_at_ms: float | None
    ) -> Report:
        """With OpenTelemetry: the task's wait in its queue (from the engine's publish to
        now, as a span after the fact) and a span around its handler, both in the task's
        trace; the reports from here on carry the handler span's id."""
        task = item.task
        attributes: dict[str, str | int] = {
            "messaging.system": "rabbitmq",
            "messaging.destination.name": self._topology.task_queue(task.topic),
            "orchestrator.topic": task.topic,
            "orchestrator.task_id": task.task_id,
            "orchestrator.attempt": task.attempt,
            "orchestrator.instance_id": task.instance_id,
            "orchestrator.process_key": task.process_key,
            "orchestrator.worker_id": self.worker_id,
        }
        if published_at_ms is not None:
            tracing.record_span(
                f"orchestrator queue wait {task.topic}",
                parent=item.traceparent,
                start_ns=int(published_at_ms * 1_000_000),
                end_ns=time.time_ns(),
                attributes=attributes,
            )
        with tracing.span(
            f"orchestrator handle {task.topic}",
            parent=item.traceparent,
            kind="consumer",
            attributes=attributes,
        ) as span:
            if span is not None:
                item.traceparent = tracing.traceparent_of(span) or item.traceparent
            report = await run_handler(handler, context, self.worker_id, item.traceparent)
            if span is not None:
                tracing.set_outcome(span, report.type, getattr(report, "error_message", None))
            return report

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ids(self, item: _Running) -> dict[str, Any]:
        return {
            "task_id": item.task.task_id,
            "attempt": item.task.attempt,
            "worker_id": self.worker_id,
            "traceparent": item.traceparent,
        }

    async def _claim(self, item: _Running) -> None:
        if item.claim_sent or item.settled.is_set():
            return
        await self._send(item, Claimed(**self._ids(item)))

    async def _still_ours(self, item: _Running) -> bool:
        """A redelivery may be stale (its lease expired and a newer attempt went out while the
        first holder was away), and so may a re-sent message (the engine published the
        attempt again when nobody claimed it in time, and the first copy turned up after
        all): claim it and wait for the engine's word before running it."""
        request_id = uuid.uuid4().hex
        try:
            answer = await self._ask(item, Claimed(**self._ids(item), request_id=request_id))
        except LockLost:
            return True  # no answer: run it; the ledger keeps the effect single
        if not answer.held:
            log.info(
                "skipping stale redelivery of task %s attempt %d",
                item.task.task_id,
                item.task.attempt,
            )
        return answer.held

    async def _send(self, item: _Running, report: Report) -> None:
        """Publish a report until the broker confirms it. Only an outcome (or a release)
        settles the delivery: until then it stays unacked, so the worker's prefetch window
        (= its concurrency) stays full and RabbitMQ sends it no task it has no room for."""
        if isinstance(report, Claimed | ExtendLock | Completed | Failed | BpmnErrorReport):
            item.claim_sent = True  # the engine holds (or held) a lease for us
        try:
            await self._publish(report)
        except Exception as exc:
            log.warning("report for %s not confirmed (%s); retrying", item.task.task_id, exc)
            if not await self._publish_again(item, report):
                return
        if isinstance(report, _SETTLING) and not item.acked:
            await self._ack(item)

    async def _publish_again(self, item: _Running, report: Report) -> bool:
        """Publish a report the broker did not confirm again, with jittered backoff (its
        robust connection reconnects meanwhile), until it is confirmed: it carries the task's
        work, so there is no deadline, but once the worker is shutting down it gives up after
        a second (False) and the engine dispatches the task again when its lease expires."""
        task_id = item.task.task_id

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning("report for %s not confirmed (%s); retrying", task_id, error)

        attempts = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=backoff(0.1, 5.0),
            stop=lambda state: self._stopping.is_set() and (state.seconds_since_start or 0) > 1,
            before_sleep=log_retry,
        )
        try:
            await attempts(self._publish, report)
        except RetryError as gave_up:
            log.error("giving up on report for %s: %s", task_id, gave_up.last_attempt.exception())
            return False
        return True

    async def _publish(self, report: Report) -> None:
        if self._sender is None:
            raise RuntimeError("worker is not started")
        await self._sender.send(report)

    async def _publish_body(self, body: bytes, message_id: str) -> None:
        if self._publisher is None:
            raise RuntimeError("worker is not started")
        await self._publisher.publish(
            Outgoing(
                self._topology.reports_exchange,
                REPORT_ROUTING_KEY,
                body,
                message_id=message_id,
                reply_to=self._inbox_name,
            )
        )

    async def _ack(self, item: _Running) -> None:
        item.acked = True
        self._acks.ack(item.delivery)

    async def _keep_extending(self, item: _Running, max_s: float) -> None:
        """Extend the lock every third of a lock until the handler ends or max_s is used up.

        The cadence is kept from the start, not from each answer: waiting a lock's third
        after every answer let the answers' delays add up, and on a busy machine a short
        lock lapsed between two extensions."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        lock_ms = item.task.lock_ms
        every_s = max(lock_ms / 3000, 0.05)
        due = started
        while True:
            due += every_s
            await asyncio.sleep(max(due - loop.time(), 0))
            left_ms = (max_s - (loop.time() - started)) * 1000
            if left_ms <= 0:
                log.warning(
                    "task %s ran past its auto-extension limit of %g s; its lock will lapse",
                    item.task.task_id,
                    max_s,
                )
                return
            try:
                status = await self._extend(item, int(min(lock_ms, left_ms)) or 1)
            except LockLost:
                continue  # no answer in time: the lease still runs; try again
            if not status.held or status.cancelled:
                why = "its instance was cancelled" if status.cancelled else "the lock is lost"
                self._stop_handler(item, why)
                return

    # --- engine answers ----------------------------------------------------------------

    async def _extend(self, item: _Running, lock_ms: int) -> LockStatus:
        request = ExtendLock(**self._ids(item), lock_ms=lock_ms, request_id=uuid.uuid4().hex)
        answer = await self._ask(item, request)
        return LockStatus(held=answer.held, cancelled=answer.cancelled)

    async def _ask(self, item: _Running, request: Claimed | ExtendLock) -> LockAnswer:
        """Send a report that the engine answers with a LockAnswer, and wait for it."""
        request_id = request.request_id or ""
        future: asyncio.Future[LockAnswer] = asyncio.get_running_loop().create_future()
        self._lock_answers[request_id] = future
        try:
            await self._send(item, request)
            return await asyncio.wait_for(future, self.lock_answer_timeout_s)
        except TimeoutError:
            raise LockLost(f"no answer about the lock of task {item.task.task_id}") from None
        finally:
            self._lock_answers.pop(request_id, None)

    async def _on_notice(self, message: AbstractIncomingMessage) -> None:
        try:
            notice = NOTICE_ADAPTER.validate_json(message.body)
        except ValidationError:
            log.warning("ignoring a malformed notice")
            return
        if isinstance(notice, LockAnswer):
            future = self._lock_answers.get(notice.request_id)
            if future is not None and not future.done():
                future.set_result(notice)
        elif isinstance(notice, TaskRevoked):
            item = self._running.get((notice.task_id, notice.attempt))
            if item is not None:
                self._stop_handler(item, f"revoked ({notice.reason})")
        else:
            log.info(
                "engine answered task %s attempt %d: %s",
                notice.task_id,
                notice.attempt,
                notice.status,
            )
