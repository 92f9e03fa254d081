"""CPU seconds and peak memory of process groups, read from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def pids_named(*names: str) -> list[int]:
    """Processes whose command name is one of `names` (e.g. postgres, beam.smp)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def group_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _status_mb(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmHWM:")


def current_rss_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmRSS:")


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
