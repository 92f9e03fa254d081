"""The benchmark's latency floor is measured against the real broker and database, and leaves
nothing behind: its queue and its table are gone afterwards."""

from __future__ import annotations

import pytest

from bench.floor import measure_floors
from orchestrator.config import Settings
from tests.support import harness

pytestmark = pytest.mark.integration


async def test_floor_measures_both_parts_and_cleans_up(settings: Settings) -> None:
    queue = f"{settings.namespace}.floor"
    floors = await measure_floors(
        settings.amqp_url, settings.database_url, queue, steps=3, samples=20
    )

    assert set(floors) == {"back_to_back", "after_idle"}
    for floor in floors.values():
        assert floor.hops == 7 and floor.commits == 4
        # A persistent, confirmed hop and a committed insert each take real time, but far
        # less than a second on any machine this runs on.
        assert 0 < floor.broker_hop_ms < 1000
        assert 0 < floor.commit_ms < 1000
        assert floor.instance_ms == pytest.approx(
            7 * floor.broker_hop_ms + 4 * floor.commit_ms, abs=0.01
        )

    assert not await harness.queue_exists(settings.amqp_url, queue)
    assert not await harness.table_exists(settings.database_url, "bench_floor")
