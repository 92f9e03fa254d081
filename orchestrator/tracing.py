"""W3C trace context for the engine, the client and the worker SDK; OpenTelemetry spans when
the optional extra is installed (`pip install 'orchestrator[otel]'`).

Propagation needs nothing installed: a `traceparent` (W3C Trace Context, version 00) travels
as an AMQP header and, on starts and reports, as a JSON field; each instance keeps one in
PostgreSQL. Spans are made only when OpenTelemetry is installed and a tracer provider is set
(`enabled`); every span helper here is a cheap no-op otherwise, so the hot path pays a header
entry and a column and nothing more.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider

log = logging.getLogger(__name__)

#: The header name of OpenTelemetry's messaging conventions (and of W3C Trace Context).
TRACEPARENT = "traceparent"

_TRACEPARENT_FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def valid_traceparent(value: object) -> str | None:
    """`value` if it is a version-00 traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
    zero), else None: a bad one is ignored, never an error. Bytes (an AMQP header) are
    decoded; upper-case hex is refused, as the W3C format requires."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or _TRACEPARENT_FORMAT.fullmatch(value) is None:
        return None
    if value[3:35] == _ZERO_TRACE or value[36:52] == _ZERO_SPAN:
        return None
    return value


def new_traceparent(sampled: bool = True) -> str:
    """A traceparent of a new trace, for a start that came without one. Sampled by default:
    a worker with OpenTelemetry then records its spans even when the engine does not."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{'01' if sampled else '00'}"


def trace_id_of(traceparent: str) -> str:
    """The 32 hex digits of a valid traceparent's trace id."""
    return traceparent[3:35]


def header_traceparent(headers: Mapping[str, Any] | None) -> str | None:
    """The valid `traceparent` among an AMQP message's headers, or None."""
    if not headers:
        return None
    return valid_traceparent(headers.get(TRACEPARENT))


def trace_headers(traceparent: str | None) -> dict[str, str]:
    """The headers that carry `traceparent` (none when there is none)."""
    return {TRACEPARENT: traceparent} if traceparent is not None else {}


# --- OpenTelemetry, when installed ------------------------------------------------------------

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel_trace

    INSTALLED = True
except ImportError:  # the extra is not installed: propagation only
    INSTALLED = False

_SCOPE = "orchestrator"
_global_provider_seen = False
#: Without a provider, the global one is looked at again at most once a second (per task,
#: the look cost a worker more than the rest of the trace context did).
_LOOK_EVERY_S = 1.0
_next_look_s = 0.0
#: A provider given to `use_provider`, used instead of OpenTelemetry's global one.
_provider: TracerProvider | None = None


def use_provider(provider: TracerProvider | None) -> None:
    """Emit spans through `provider` rather than OpenTelemetry's global provider (None: the
    global one again). For an application that keeps its provider to itself, and for
    tests, which cannot unset a global provider."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """Whether spans are worth making: OpenTelemetry is installed and a tracer provider was
    set (the application's global one, `use_provider`, or `configure_from_environment`).
    Checked once per round or message before any span work, so that without one the cost
    is this call. A global provider, once set, stays: the answer is cached then; one set
    later is noticed within a second."""
    global _global_provider_seen, _next_look_s
    if _provider is not None or _global_provider_seen:
        return True
    if not INSTALLED:
        return False
    now = time.monotonic()
    if now < _next_look_s:
        return False
    _next_look_s = now + _LOOK_EVERY_S
    provider = _otel_trace.get_tracer_provider()
    _global_provider_seen = not isinstance(
        provider, _otel_trace.ProxyTracerProvider | _otel_trace.NoOpTracerProvider
    )
    return _global_provider_seen


def _tracer() -> Tracer:
    if _provider is not None:
        return _provider.get_tracer(_SCOPE)
    return _otel_trace.get_tracer(_SCOPE)


def _span_context(traceparent: str) -> Any:
    """The remote span a valid traceparent names (sliced, not parsed again)."""
    return _otel_trace.SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=_otel_trace.TraceFlags(int(traceparent[53:], 16)),
    )


def _context_of(traceparent: str | None) -> Any:
    """An OpenTelemetry context whose current span is the remote one `traceparent` names."""
    if traceparent is None:
        return None
    remote = _otel_trace.NonRecordingSpan(_span_context(traceparent))
    return _otel_trace.set_span_in_context(remote)


def traceparent_of(span: Span) -> str | None:
    """The traceparent naming `span` (None for a span with no valid context)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The traceparent of the application's current span, if OpenTelemetry has one."""
    if not INSTALLED:
        return None
    return traceparent_of(_otel_trace.get_current_span())


def links_to(traceparents: Iterable[object]) -> list[Link]:
    """Span links to the spans these traceparents name (anything that is not one is left
    out): a round serves many instances, so it links to their traces rather than pretending
    to belong to one."""
    if not INSTALLED:
        return []
    valid = {t for t in map(valid_traceparent, traceparents) if t is not None}
    return [_otel_trace.Link(_span_context(traceparent)) for traceparent in sorted(valid)]


def _kind(name: str) -> SpanKind:
    return _otel_trace.SpanKind[name.upper()]


def start_span(
    name: str,
    *,
    parent: str | None = None,
    kind: str = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
    start_ns: int | None = None,
    links: list[Link] | None = None,
) -> Span | None:
    """A started span (the caller ends it), child of the span `parent` names (a new trace
    without one); None when spans are not made (see `enabled`)."""
    if not enabled():
        return None
    return _tracer().start_span(
        name,
        context=_context_of(parent),
        kind=_kind(kind),
        attributes=attributes,
        links=links,
        start_time=start_ns,
    )


def record_span(
    name: str,
    *,
    parent: str | None,
    start_ns: int,
    end_ns: int,
    kind: str = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """A span of something that already happened (a task's wait in its queue)."""
    span = start_span(name, parent=parent, kind=kind, attributes=attributes, start_ns=start_ns)
    if span is not None:
        span.end(end_time=max(end_ns, start_ns))


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: str = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
    links: list[Link] | None = None,
) -> Iterator[Span | None]:
    """A span around a block, current inside it (so an application's own spans in a handler
    nest under it); an exception is recorded on it. Yields None when spans are not made."""
    if not enabled():
        yield None
        return
    started = start_span(name, parent=parent, kind=kind, attributes=attributes, links=links)
    assert started is not None  # enabled()
    token = _otel_context.attach(_otel_trace.set_span_in_context(started))
    try:
        yield started
    except BaseException as exc:
        started.record_exception(exc)
        started.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, repr(exc)[:200]))
        raise
    finally:
        _otel_context.detach(token)
        started.end()


def set_outcome(span: Span, outcome: str, error: str | None = None) -> None:
    """How a handler ended, on its span: a failure is an error, a business error is not."""
    span.set_attribute("orchestrator.outcome", outcome)
    if error is not None:
        span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, error[:200]))


# --- the SDK's provider, for the CLI's processes --------------------------------------------


def configure_from_environment(service_name: str) -> bool:
    """Install an SDK TracerProvider with an exporter chosen by the standard `OTEL_*`
    variables, for the processes the CLI runs (`orchestrator engine`, `orchestrator
    worker`). Only when OpenTelemetry's SDK is installed, `OTEL_SDK_DISABLED` is not true,
    an exporter is asked for (`OTEL_TRACES_EXPORTER` other than `none`, or an
    `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`), and no provider was set before: an
    application that configures OpenTelemetry itself keeps its own. True if it installed
    one."""
    if not INSTALLED or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or not (exporter_name or endpoint):
        return False
    if not isinstance(_otel_trace.get_tracer_provider(), _otel_trace.ProxyTracerProvider):
        return False  # the application set one
    try:
        return _install_provider(service_name, exporter_name or "otlp")
    except ImportError as exc:
        log.warning("traces: OTEL_* asks for an exporter but %s is not installed", exc.name)
        return False


def _install_provider(service_name: str, exporter_name: str) -> bool:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_* itself
    else:
        log.warning("traces: OTEL_TRACES_EXPORTER=%s is not supported here", exporter_name)
        return False
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default service name.
    resource = Resource.create({"service.name": service_name}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER and span limits too
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _otel_trace.set_tracer_provider(provider)
    global _next_look_s
    _next_look_s = 0.0  # noticed at the next look, not a second later
    return True
