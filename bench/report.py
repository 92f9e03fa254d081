"""The benchmark's table: our figures, each peer's, and our ratio to each."""

from __future__ import annotations

from typing import Any

from bench import breakdown

COLUMNS = (
    ("tasks/s", ("tasks_per_s",)),
    ("instances/s", ("instances_per_s",)),
    ("inst p50 ms", ("instance_latency_ms", "p50")),
    ("inst p95 ms", ("instance_latency_ms", "p95")),
    ("inst p99 ms", ("instance_latency_ms", "p99")),
    ("disp p50 ms", ("dispatch_latency_ms", "p50")),
    ("disp p99 ms", ("dispatch_latency_ms", "p99")),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(result: dict[str, Any]) -> str:
    against = [result["against"]] if result.get("against") else []
    rows = [result, *result.get("peers", {}).values(), *against]
    header = ["system", *(name for name, _ in COLUMNS), "ours/this (tasks/s)"]
    lines = [header]
    ours = result.get("tasks_per_s")
    for row in rows:
        if "error" in row:
            lines.append([row["name"], f"failed: {row['error'][:60]}"])
            continue
        theirs = row.get("tasks_per_s")
        ratio = f"{ours / theirs:.2f}x" if ours and theirs and row is not result else "-"
        lines.append([row["name"], *(_cell(_get(row, path)) for _, path in COLUMNS), ratio])
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in lines]
    shape = result.get("shape")  # none: the sequential workload, as before shapes existed
    if shape is not None:
        out.insert(0, _shape_line(shape, result.get("steps")))
    latency = result.get("latency_phase", {})
    work = (
        f"{result.get('steps')} steps"
        if shape is None
        else f"{result.get('steps')} tasks ({shape} shape)"
    )
    out.append(
        f"latency columns: open-loop phase at {latency.get('rate')} instances/s; "
        f"throughput: {result.get('instances')} instances x {work}"
    )
    cpu = result.get("cpu_s_per_1000_tasks")
    if cpu:
        out.append("CPU s per 1000 tasks: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    for row in [result, *against]:
        line = _latency_cpu_line(row.get("latency_phase") or {})
        if line:
            out.append(line if row is result else f"{row['name']}, {line}")
        stages = breakdown.line((row.get("latency_phase") or {}).get("breakdown") or {})
        if stages:
            out.append(stages if row is result else f"{row['name']}, {stages}")
    out.append(
        f"engine peak RSS: {result.get('engine_peak_rss_mb')} MB; at full load, instance "
        f"latency {result.get('instance_latency_ms_full_load')} and dispatch "
        f"{result.get('dispatch_latency_ms_full_load')}"
    )
    floors = result.get("floor_ms")
    if floors:
        out.append(_floor_line(floors, longest_path=shape is not None))
    backlog = result.get("backlog")
    if backlog:
        out.append(
            f"backlog of {backlog['instances']} instances: engine RSS "
            f"{backlog['engine_rss_mb_while_waiting']} MB while they wait; drained at "
            f"{backlog['drain_tasks_per_s']} tasks/s ({backlog['ratio_to_empty_queue']}x the "
            f"empty-queue rate); tasks sent again meanwhile: {backlog.get('tasks_redispatched')}"
        )
    return "\n".join(out)


def _latency_cpu_line(latency: dict[str, Any]) -> str | None:
    cpu = latency.get("cpu_s_per_1000_tasks")
    if not cpu:
        return None
    return (
        "in the latency phase: CPU s per 1000 tasks "
        + ", ".join(f"{k} {v}" for k, v in cpu.items())
        + f"; the machine {latency.get('machine_busy_pct')} % busy"
    )


def _shape_line(shape: str, steps: Any) -> str:
    if shape == "parallel":
        return (
            f"shape parallel: start -> parallel fork -> {steps} service tasks at once -> "
            "parallel join -> end (every figure below is of this shape)"
        )
    return f"shape {shape} (every figure below is of this shape)"


def _floor_line(floors: dict[str, dict[str, Any]], longest_path: bool = False) -> str:
    """What the broker and the database alone cost an instance here (see bench/floor.py)."""
    some = next(iter(floors.values()))
    where = "on an instance's longest path" if longest_path else "per instance"
    parts = [
        f"{floor['instance_ms']} ms {name.replace('_', ' ')} "
        f"(hop {floor['broker_hop_ms']}, commit {floor['commit_ms']})"
        for name, floor in floors.items()
    ]
    return (
        f"latency floor here, {some['hops']} broker hops + {some['commits']} commits {where}: "
        + "; ".join(parts)
    )
