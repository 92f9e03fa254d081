"""The timer benchmark (`./dev bench --timers N`): N timers due in the same second.

Deploys start -> a timer catch event (one date a few seconds ahead, the same for every
instance) -> end, starts N instances against two engine processes (`--engines`), and
measures from the due time to the last firing, and each timer's lag after its due time
(p50, p99; the firing transaction's start by the database's clock, against the due time the
engine computed). Checks that each timer fired exactly once and that none is left.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.queries import query
from bench.run import BenchOptions, Run, _bench_database, _delete_topology, _drop_database, _status
from bench.stats import summary
from orchestrator import aio
from orchestrator.client import Client
from orchestrator.config import Settings

KEY = "bench-timers"
#: Starts in flight at once.
START_WINDOW = 200


def definition(due: datetime) -> str:
    nodes = [
        {"id": "start", "type": "start_event"},
        {
            "id": "wait",
            "type": "timer_catch_event",
            "timer": {"kind": "date", "value": due.isoformat()},
        },
        {"id": "end", "type": "end_event"},
    ]
    flows = [
        {"id": "to_wait", "from": "start", "to": "wait"},
        {"id": "to_end", "from": "wait", "to": "end"},
    ]
    return orjson.dumps({"key": KEY, "nodes": nodes, "flows": flows}).decode()


async def _start_all(client: Client, count: int) -> None:
    pending: set[asyncio.Task[Any]] = set()
    for _ in range(count):
        if len(pending) >= START_WINDOW:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.create_task(client.start(KEY)))
    await asyncio.gather(*pending)


async def _wait_fired(pool: asyncpg.Pool, count: int, timeout_s: float) -> float:
    """Poll until `count` firings are recorded; the wall time (epoch s) it was first seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pool.fetchval(query("timers_fired_count")) >= count:
            return time.time()
        await asyncio.sleep(0.02)
    raise SystemExit(f"not every timer fired within {timeout_s:.0f} s")


async def run_timers(settings: Settings, count: int, engines: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    url, db_name = await _bench_database(settings, tag)
    options = BenchOptions(instances=count, engines=engines, worker_processes=0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-timers-"))
    run = Run(replace(settings, database_url=url, namespace=f"bench{tag}"), options, workdir)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    lead_s = 8 + count / 1000
    due = (datetime.now(UTC) + timedelta(seconds=lead_s)).replace(microsecond=0)
    try:
        run.start_processes()
        async with Client(run.settings, name="bench") as client:
            await client.deploy(definition(due))
            began = time.monotonic()
            await _start_all(client, count)
            started_s = time.monotonic() - began
            _status(f"{count} instances started in {started_s:.1f} s; due at {due.isoformat()}")
            if datetime.now(UTC) >= due:
                raise SystemExit(
                    "the starts took past the due time: the figures would mean nothing"
                )
            seen = await _wait_fired(pool, count, timeout_s=lead_s + 120)
            await asyncio.sleep(0.5)  # a firing beyond `count` (a repeat) would show by now
            lags = await pool.fetch(query("timer_lags"))
            left = await pool.fetchval(query("timers_left"))
            per_engine = [r["value"] for r in await pool.fetch(query("timers_fired_per_engine"))]
    finally:
        run.stop_processes()
        await pool.close()
        await _drop_database(settings, db_name)
        await _delete_topology(run.settings, [])
    instances = {r["instance_id"] for r in lags}
    lag_ms = [float(r["at_ms"] - r["due_ms"]) for r in lags]
    return {
        "timers": count,
        "engines": engines,
        "starts_s": round(started_s, 2),
        "firings": len(lags),
        "fired_once_each": len(lags) == count and len(instances) == count,
        "timers_left": left,
        "fired_per_engine": per_engine,
        "last_fired_after_due_ms": round(max(lag_ms), 1),
        "all_seen_after_due_ms": round((seen - due.timestamp()) * 1000, 1),
        "lag_ms": summary(lag_ms, (50, 99)),
    }


def bench_timers(settings: Settings, count: int, engines: int) -> dict[str, Any]:
    result: dict[str, Any] = aio.run(run_timers(settings, count, engines))
    return result


def lines(result: dict[str, Any]) -> str:
    lag = result["lag_ms"]
    return "\n".join(
        [
            f"timers: {result['timers']} due in the same second, {result['engines']} engines "
            f"(started in {result['starts_s']} s)",
            f"  fired: {result['firings']} (once each: {result['fired_once_each']}, "
            f"left: {result['timers_left']}, per engine: {result['fired_per_engine']})",
            f"  due -> last firing: {result['last_fired_after_due_ms']} ms "
            f"(all seen by the client {result['all_seen_after_due_ms']} ms after due)",
            f"  lag per timer: p50 {lag.get('p50')} ms, p99 {lag.get('p99')} ms",
        ]
    )
