"""A command's deadline on the wire (docs/wire-protocol.md, "Deadlines").

The client stamps every command it sends with the moment after which the command must not
take effect, twice: as the header `x-orch-deadline-ms` (Unix ms), which the engine checks when
the command arrives, and as the AMQP `expiration` (the time left), so the broker drops the
command while it waits. Neither is enough alone. RabbitMQ expires a message only when it
reaches the head of its queue, and never one it has already delivered: a command in an
engine's prefetch, or requeued when that engine died and redelivered to another, arrives late
all the same. And an engine of an older version does not read the header, while the broker's
expiry holds for every engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

DEADLINE_HEADER = "x-orch-deadline-ms"


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, Any] | None: ...


def stamp(ttl_ms: int) -> tuple[dict[str, str], str]:
    """The header and the AMQP `expiration` of a command that must take effect within
    `ttl_ms` from now, or never."""
    if ttl_ms < 1:
        raise ValueError(f"a command's time to live must be at least 1 ms, not {ttl_ms}")
    deadline_ms = int(time.time() * 1000) + ttl_ms
    return {DEADLINE_HEADER: str(deadline_ms)}, str(ttl_ms)


def lapsed(headers: Mapping[str, Any] | None, now_ms: float) -> str | None:
    """Why a command must be dropped without effect, or None: it has no deadline (an older
    client, or a producer that sets none), or its deadline has not passed."""
    if not headers:
        return None
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    deadline_ms = _milliseconds(raw)
    if deadline_ms is None:
        return f"dropped: its {DEADLINE_HEADER} header {raw!r} is not a time in Unix ms"
    late_ms = now_ms - deadline_ms
    if late_ms < 0:
        return None
    return (
        f"dropped: its deadline had passed {late_ms:.0f} ms before an engine took it "
        "(by the engine's clock)"
    )


M = TypeVar("M", bound=_HasHeaders)


def split_lapsed(messages: Sequence[M], now_ms: float) -> tuple[list[M], list[tuple[M, str]]]:
    """The messages to process, and those to drop with the reason."""
    keep: list[M] = []
    dropped: list[tuple[M, str]] = []
    for message in messages:
        reason = lapsed(message.headers, now_ms)
        if reason is None:
            keep.append(message)
        else:
            dropped.append((message, reason))
    return keep, dropped


def _milliseconds(raw: object) -> float | None:
    """A header value as a finite number: an integer (or float), or its decimal text."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return None
    if isinstance(raw, int | float) and math.isfinite(raw):
        return float(raw)
    return None
