"""CPU seconds and memory of the processes a benchmark run measures (through psutil)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

import psutil

#: A process that ended (or was never ours to read) counts as nothing.
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process (0 if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except _GONE:
        return 0.0
    return float(times.user + times.system)


def pids_named(*names: str) -> list[int]:
    """Processes whose name is one of `names` (e.g. postgres, beam.smp)."""
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in names:
            found.append(process.pid)
    return found


def descendants(pid: int) -> list[int]:
    """The children of a process, theirs, and so on (none if it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except _GONE:
        return []


def group_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_mb(pid: int) -> float | None:
    """The resident set of one process now, in MB (None if it is gone)."""
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except _GONE:
        return None


class PeakRss:
    """The largest resident set of any of some processes over a stretch of a run, in MB.

    psutil reads no high-water mark on Linux, so the processes are sampled every
    `interval_s`: a peak that lasts longer than that is caught (a process's memory grows
    with what it holds, which changes more slowly than that).
    """

    def __init__(self, pids: list[int], interval_s: float = 0.05) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.mb: float | None = None

    def sample(self) -> None:
        for pid in self.pids:
            now = rss_mb(pid)
            if now is not None and (self.mb is None or now > self.mb):
                self.mb = now

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[PeakRss]:
        """Sample in the background while the block runs."""

        async def every_interval() -> None:
            while True:
                self.sample()
                await asyncio.sleep(self.interval_s)

        task = asyncio.create_task(every_interval())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()


class CpuMeter:
    """CPU seconds per group between `start()` and `stop()`. Server groups (PostgreSQL,
    RabbitMQ) are found by name, so they include whatever else those servers were doing."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[str, float] = {}

    @classmethod
    def for_run(cls, engine: list[int], workers: list[int]) -> CpuMeter:
        return cls(
            {
                "engine": engine,
                "workers": workers,
                "postgres": pids_named("postgres"),
                "rabbitmq": pids_named("beam.smp"),
            }
        )

    def start(self) -> None:
        self._before = {name: group_cpu(pids) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        return {
            name: round(group_cpu(pids) - self._before.get(name, 0.0), 3)
            for name, pids in self.groups.items()
        }
