"""The benchmark's process, by shape (`--shape`): the definition it deploys.

- sequential (the default, the workload every earlier figure measured): start, then S service
  tasks one after another, then end: an instance's S tasks run one at a time.
- parallel: start, a parallel gateway forking into S service tasks, a parallel gateway joining
  them, end: an instance's S tasks run at once and its last completion fires the join.

Both make S tasks per instance (`--steps`, default 3) on the same topics, served by the same
no-op workers, so tasks/s, instances/s and CPU per 1,000 tasks mean the same in both.
"""

from __future__ import annotations

from typing import Any, Final

SEQUENTIAL: Final = "sequential"
PARALLEL: Final = "parallel"
SHAPES: Final = (SEQUENTIAL, PARALLEL)

#: The key the benchmark deploys its process under (each run has its own database).
KEY: Final = "bench"


def topics(steps: int) -> list[str]:
    """The task topics of an instance of `steps` tasks, in either shape."""
    return [f"bench-step-{i + 1}" for i in range(steps)]


def definition(shape: str, steps: int) -> dict[str, Any]:
    """The process definition (the YAML/JSON form: `nodes` and `flows`) of `shape`."""
    if shape == SEQUENTIAL:
        return _sequential(topics(steps))
    if shape == PARALLEL:
        return _parallel(topics(steps))
    raise ValueError(f"unknown shape {shape!r} (one of {', '.join(SHAPES)})")


def path_steps(shape: str, steps: int) -> int:
    """Tasks one after another on an instance's longest path: what its latency floor counts
    (bench/floor.py). A parallel instance's tasks overlap, so its path holds one."""
    return 1 if shape == PARALLEL else steps


def _task(node: str, topic: str) -> dict[str, Any]:
    return {"id": node, "type": "service_task", "topic": topic, "lock": "60s"}


def _sequential(names: list[str]) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start_event"}]
    flows: list[dict[str, Any]] = []
    previous = "start"
    for index, topic in enumerate(names):
        node = f"step{index + 1}"
        nodes.append(_task(node, topic))
        flows.append({"id": f"to_{node}", "from": previous, "to": node})
        previous = node
    nodes.append({"id": "end", "type": "end_event"})
    flows.append({"id": "to_end", "from": previous, "to": "end"})
    return {"key": KEY, "nodes": nodes, "flows": flows}


def _parallel(names: list[str]) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": "start", "type": "start_event"},
        {"id": "fork", "type": "parallel_gateway"},
    ]
    flows: list[dict[str, Any]] = [{"id": "to_fork", "from": "start", "to": "fork"}]
    for index, topic in enumerate(names):
        node = f"step{index + 1}"
        nodes.append(_task(node, topic))
        flows.append({"id": f"to_{node}", "from": "fork", "to": node})
        flows.append({"id": f"{node}_to_join", "from": node, "to": "join"})
    nodes += [{"id": "join", "type": "parallel_gateway"}, {"id": "end", "type": "end_event"}]
    flows.append({"id": "to_end", "from": "join", "to": "end"})
    return {"key": KEY, "nodes": nodes, "flows": flows}
