"""The benchmark's worker: completes every step at once and notes its dispatch latency.

Run by the benchmark as `orchestrator worker bench.noop_worker:worker`
with BENCH_TOPICS (comma-separated) and BENCH_LATENCY_FILE (where to write, at exit, one
line `<published_at_ms> <entered_at_ms> <task_id>` per task).
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

from workers import TaskContext, Worker

worker = Worker("bench", shutdown_grace_s=2.0)
_entries: list[tuple[float, float, str]] = []
_PAYLOAD = "x" * int(os.environ.get("BENCH_PAYLOAD_BYTES", "0"))


def _register(topic: str) -> None:
    @worker.task(topic, concurrency=int(os.environ.get("BENCH_CONCURRENCY", "64")))
    async def step(task: TaskContext) -> dict[str, Any]:
        published = task.info.published_at_ms or task.info.created_at_ms
        _entries.append((published, time.time() * 1000, task.info.task_id))
        return {"payload": _PAYLOAD} if _PAYLOAD else {}


def _write_latencies() -> None:
    path = os.environ.get("BENCH_LATENCY_FILE")
    if path:
        with open(path, "w", encoding="ascii") as sink:
            sink.writelines(
                f"{sent:.3f} {entered:.3f} {task}\n" for sent, entered, task in _entries
            )


for _topic in filter(None, os.environ.get("BENCH_TOPICS", "").split(",")):
    _register(_topic)
atexit.register(_write_latencies)
