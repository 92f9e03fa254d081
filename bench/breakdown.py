"""Where an instance's time goes, cut at moments that are already recorded, so that the parts
add up to the whole latency and no process needs extra instrumentation.

Per instance of the latency phase:
- start: the client sends the start command -> the engine's transaction that created the
  instance begins (the command's broker hop, the engine's queue, the engine reading it);
- then per step:
  - engine: that transaction begins -> the task message is published (the statement, its
    commit, and the engine's work up to the publish);
  - to worker: published -> the worker's handler is entered (the broker hop to the worker);
  - back: handler entered -> the engine's transaction applying the completion begins (the
    handler, the report's broker hop, the engine's queue). That transaction is the next
    step's "engine" stage, and the last one's start is when the instance ended.

In the parallel shape (bench/shapes.py) an instance's tasks are created together and run at
once, and the completion applied last fires the join and ends the instance: its path is start,
then that one task's engine, to worker and back. The other branches overlap it and are left
out, so the parts still add up to the whole.

Transactions are timed by PostgreSQL's now() (when each began), the rest by the workers' and
the client's clocks: one machine, one clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import percentile

STAGES = ("start", "engine", "to_worker", "back")


@dataclass(frozen=True)
class TaskTimes:
    instance_id: str
    task_id: str
    created_ms: float
    """When the transaction that created the task began."""
    closed_ms: float
    """When the transaction that applied its completion began."""


@dataclass(frozen=True)
class Entry:
    published_ms: float
    entered_ms: float


def worker_entries(files: Iterable[Path]) -> dict[str, list[Entry]]:
    """Every handler entry the workers noted, by task id (lines `<published> <entered> <id>`)."""
    entries: dict[str, list[Entry]] = defaultdict(list)
    for path in files:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                entries[parts[2]].append(Entry(float(parts[0]), float(parts[1])))
    return entries


def stage_samples(
    sent_ms: dict[str, float],
    tasks: Iterable[TaskTimes],
    entries: dict[str, list[Entry]],
    *,
    parallel: bool = False,
) -> tuple[dict[str, list[float]], list[float]]:
    """Each stage's durations (ms), and each instance's whole latency, over the instances
    whose every task was entered exactly once (a redelivered task has no single path).
    `parallel`: only the task that closed last is on the path."""
    by_instance: dict[str, list[TaskTimes]] = defaultdict(list)
    for task in tasks:
        by_instance[task.instance_id].append(task)
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals: list[float] = []
    for instance, steps in by_instance.items():
        if instance not in sent_ms or any(len(entries.get(t.task_id, ())) != 1 for t in steps):
            continue
        if parallel:
            steps = [max(steps, key=lambda t: t.closed_ms)]
        steps.sort(key=lambda t: t.created_ms)
        samples["start"].append(steps[0].created_ms - sent_ms[instance])
        for task in steps:
            entry = entries[task.task_id][0]
            samples["engine"].append(entry.published_ms - task.created_ms)
            samples["to_worker"].append(entry.entered_ms - entry.published_ms)
            samples["back"].append(task.closed_ms - entry.entered_ms)
        totals.append(steps[-1].closed_ms - sent_ms[instance])
    return samples, totals


def breakdown(
    sent_ms: dict[str, float],
    tasks: Iterable[TaskTimes],
    entries: dict[str, list[Entry]],
    *,
    parallel: bool = False,
) -> dict[str, Any]:
    """Mean and p50 of each stage, and the mean instance latency they add up to. `parallel`:
    `steps` counts the tasks on the path (one per instance), `branches` all of them."""
    tasks = list(tasks)
    samples, totals = stage_samples(sent_ms, tasks, entries, parallel=parallel)
    if not totals:
        return {"instances": 0}
    result: dict[str, Any] = {"instances": len(totals), "steps": len(samples["engine"])}
    if parallel:
        counted = {t.instance_id for t in tasks} & set(sent_ms)
        per_instance = sum(1 for t in tasks if t.instance_id in counted) / max(1, len(counted))
        result["branches"] = round(per_instance, 2)
    for stage, values in samples.items():
        result[stage] = {
            "mean": round(sum(values) / len(values), 2),
            "p50": round(percentile(values, 50), 2),
        }
    result["total_mean"] = round(sum(totals) / len(totals), 2)
    return result


def line(result: dict[str, Any]) -> str | None:
    """One line for the table: the stages' means per instance, adding up to the total."""
    instances = result.get("instances") or 0
    if not instances:
        return None
    steps = result["steps"] / instances
    per_step = " + ".join(
        f"{label} {result[stage]['mean']}"
        for stage, label in (("engine", "engine"), ("to_worker", "to worker"), ("back", "back"))
    )
    if "branches" in result:
        return (
            f"where an instance's time went, means in ms: start {result['start']['mean']} + "
            f"the last to close of {result['branches']:g} parallel tasks ({per_step}) = "
            f"{result['total_mean']} (see bench/breakdown.py)"
        )
    return (
        f"where an instance's time went, means in ms: start {result['start']['mean']} + "
        f"{steps:g} steps x ({per_step}) = {result['total_mean']} (see bench/breakdown.py)"
    )
