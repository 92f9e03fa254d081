from __future__ import annotations

import asyncio

import pytest

from orchestrator.daemon.supervisor import BackgroundTaskDied, supervise


async def test_clean_stop_is_not_a_death() -> None:
    stop = asyncio.Event()

    async def loop() -> None:
        await stop.wait()

    running = asyncio.create_task(supervise({"reaper": loop(), "relay": loop()}, stop))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_a_failing_loop_stops_the_others_loudly() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def healthy() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(BackgroundTaskDied, match="'broken' died"):
        await asyncio.wait_for(
            supervise({"healthy": healthy(), "broken": broken()}, stop, grace_s=0.1), 5
        )
    assert cancelled.is_set() and stop.is_set()


async def test_a_loop_that_returns_early_is_a_death() -> None:
    async def quits() -> None:
        return None

    with pytest.raises(BackgroundTaskDied, match="'quits' died"):
        await asyncio.wait_for(supervise({"quits": quits()}, asyncio.Event()), 5)
