"""Durations in the SDK: seconds, as floats, in parameters whose names end in `_s`.

Seconds are what Python's own APIs take (`asyncio.sleep`, `wait_for`, socket timeouts) and
what the rest of the SDK already used (`shutdown_grace_s`). Parameters that took milliseconds
keep their old `_ms` names as aliases: when one is given, it wins. The wire protocol stays in
milliseconds (`lock_ms`, `retry_delay_ms`): these helpers convert at the edge.
"""

from __future__ import annotations

from typing import overload


@overload
def from_ms(seconds: float, milliseconds: float | None) -> float: ...
@overload
def from_ms(seconds: float | None, milliseconds: float | None) -> float | None: ...
def from_ms(seconds: float | None, milliseconds: float | None) -> float | None:
    """The duration in seconds, given in seconds or (by an older name) in milliseconds."""
    return seconds if milliseconds is None else milliseconds / 1000


def to_ms(seconds: float) -> int:
    """Whole milliseconds, as the wire carries them."""
    return round(seconds * 1000)
