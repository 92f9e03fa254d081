"""Counters travel in every batch statement. Two statements of one engine that run at once
(an operator's command beside the rounds, or two loops with ORCH_CONSUMERS_PER_QUEUE=2) meet
on the same counter rows: they must wait for each other, never deadlock (a deadlock costs the
losing statement PostgreSQL's deadlock_timeout, a second, before it fails)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from orchestrator.store.unit_of_work import UnitOfWork

pytestmark = pytest.mark.integration

_NAMES = [f"test_counter_{n}" for n in range(8)]


def _counting(names: list[str]) -> UnitOfWork:
    uow = UnitOfWork()
    for name in names:  # counted in this order: the order the statement would lock them in
        uow.count(name)
    return uow


async def _hammer(db: asyncpg.Pool, names: list[str], times: int) -> None:
    async with db.acquire() as conn:
        for _ in range(times):
            await _counting(names).write(conn, 1000, "test")


async def test_statements_counting_in_opposite_orders_do_not_deadlock(db: asyncpg.Pool) -> None:
    times = 300
    await asyncio.gather(
        _hammer(db, _NAMES, times),
        _hammer(db, list(reversed(_NAMES)), times),
        _hammer(db, _NAMES[::2] + _NAMES[1::2], times),
    )
    totals = await db.fetch(
        "SELECT name, sum(value) AS value FROM engine_counters WHERE name = ANY($1::text[]) "
        "GROUP BY name",
        _NAMES,
    )
    assert {row["name"]: row["value"] for row in totals} == {name: 3 * times for name in _NAMES}
