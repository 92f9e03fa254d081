"""Run named background loops; if one dies, stop them all and fail loudly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTaskDied(RuntimeError):
    """A background loop of the engine stopped unexpectedly."""


async def supervise(
    loops: dict[str, Coroutine[Any, Any, None]], stop: asyncio.Event, *, grace_s: float = 5.0
) -> None:
    """Loops watch `stop` and return after their current batch; stragglers are cancelled."""
    tasks = {asyncio.create_task(coro, name=name): name for name, coro in loops.items()}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper:
                continue
            error = task.exception()
            if error is None and stop.is_set():
                continue  # a loop that saw the stop and returned: a clean shutdown
            name = tasks[task]  # type: ignore[index]
            log.critical("background task %r died: %r", name, error)
            raise BackgroundTaskDied(f"background task {name!r} died: {error!r}") from error
    finally:
        stop.set()
        stopper.cancel()
        await asyncio.wait([*tasks], timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)


async def wait_for_any(
    stop: asyncio.Event, seconds: float | None, event: asyncio.Event | None = None
) -> None:
    """Until `stop`, `event` (if given) or `seconds` (if given), whichever comes first."""
    waits = [asyncio.ensure_future(stop.wait())]
    if event is not None:
        waits.append(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """A loop's pause, cut short when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
