"""The Celery side of the peer benchmark: one app and one no-op step task.

Configured entirely from environment variables, which `celery_chain` sets both for itself and
for the worker processes it starts, so client and workers always agree:

- BENCH_CELERY_BROKER_URL: the RabbitMQ URL (`amqp://` selects the py-amqp transport).
- BENCH_CELERY_PREFIX: unique per run; every queue and exchange declared is named after it.
- BENCH_CELERY_QUORUM: "1" for a quorum task queue, else a classic durable queue.
- BENCH_CELERY_CONFIRMS: "0" turns publisher confirms off, else they are on.

Durability matches the engine's: durable queue, persistent messages, acks after the task ran
(`task_acks_late`), a task whose process died goes back to the queue, publisher confirms.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery  # type: ignore[import-untyped]
from kombu.entity import Queue

STEP_TASK = "bench.step"

BROKER_URL_ENV = "BENCH_CELERY_BROKER_URL"
PREFIX_ENV = "BENCH_CELERY_PREFIX"
QUORUM_ENV = "BENCH_CELERY_QUORUM"
CONFIRMS_ENV = "BENCH_CELERY_CONFIRMS"

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_PREFIX = "bench-celery"

#: Payload keys besides the data: when the previous hop handed the payload on (epoch seconds)
#: and the dispatch latencies seen so far along the chain (seconds).
SENT_AT = "t"
DISPATCH = "d"


def task_queue_name(prefix: str) -> str:
    return f"{prefix}.tasks"


def event_exchange_name(prefix: str) -> str:
    return f"{prefix}.events"


def control_exchange_names(prefix: str) -> tuple[str, str]:
    """The remote-control (ping) exchanges Celery names after `control_exchange`."""
    return f"{prefix}.pidbox", f"reply.{prefix}.pidbox"


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("", "0", "false", "no")


def _skip_native_delayed_delivery() -> None:
    """With a quorum queue, Celery's workers declare 28 shared, unprefixed `celery_delayed_*`
    quorum queues and exchanges for ETA/countdown tasks. This workload sends none, and a run
    must leave nothing behind, so the bootstep is left out (it only runs at worker start)."""
    from celery.worker.consumer import delayed_delivery  # type: ignore[import-untyped]

    def never(_step: object, _consumer: object) -> bool:
        return False

    delayed_delivery.DelayedDelivery.include_if = never


def make_app() -> Any:
    url = os.environ.get(BROKER_URL_ENV, DEFAULT_BROKER_URL)
    prefix = os.environ.get(PREFIX_ENV, DEFAULT_PREFIX)
    quorum = _flag(QUORUM_ENV, False)
    confirms = _flag(CONFIRMS_ENV, True)
    name = task_queue_name(prefix)
    # No x-expires as a safety net for killed runs: on RabbitMQ 3.10 it cost ~30% throughput.
    queue_arguments = {"x-queue-type": "quorum"} if quorum else None
    # A direct, durable exchange of the same name; messages are persistent (delivery mode 2).
    queue = Queue(  # type: ignore[no-untyped-call]
        name,
        exchange=name,
        routing_key=name,
        durable=True,
        auto_delete=False,
        queue_arguments=queue_arguments,
    )
    if quorum:
        _skip_native_delayed_delivery()
    app = Celery("bench", broker=url, backend="rpc://")
    app.conf.update(
        broker_transport_options={"confirm_publish": confirms},
        broker_connection_timeout=4,
        broker_connection_retry_on_startup=True,
        task_queues=[queue],
        task_default_queue=name,
        task_default_exchange=name,
        task_default_routing_key=name,
        task_create_missing_queues=False,
        task_default_delivery_mode="persistent",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_detect_quorum_queues=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        control_exchange=prefix,
        event_exchange=event_exchange_name(prefix),
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
    )
    app.task(name=STEP_TASK)(step)
    return app


def step(payload: dict[str, Any]) -> dict[str, Any]:
    """The no-op step: hands its payload on, noting how long the hand-over took.

    `payload[SENT_AT]` is when the submitter or the previous step let go of the payload; the
    next step's message is published right after this function returns, so the difference to
    the next step's start covers publish (and confirm), routing, delivery and pool hand-off."""
    started = time.time()
    sent_at = payload.get(SENT_AT)
    if isinstance(sent_at, int | float):
        payload.setdefault(DISPATCH, []).append(started - sent_at)
    payload[SENT_AT] = time.time()
    return payload


app = make_app()
