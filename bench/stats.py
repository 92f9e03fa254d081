"""Percentiles and the shape of one system's figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    if not values:
        return {f"p{q}": None for q in quantiles}
    return {f"p{q}": round(percentile(values, q), 2) for q in quantiles}


def dispatch_samples(files: Iterable[Path], since_ms: float, until_ms: float) -> list[float]:
    """Dispatch latencies (ms) from the workers' files, one line `<published_ms>
    <entered_ms> [<task id>]` per task, of the tasks published between `since_ms` and
    `until_ms`."""
    values: list[float] = []
    for path in files:
        for line in path.read_text().splitlines():
            sent, entered = (float(part) for part in line.split()[:2])
            if since_ms <= sent <= until_ms:
                values.append(entered - sent)
    return values
