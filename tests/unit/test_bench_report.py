"""The benchmark's floor arithmetic and the lines the table prints about it."""

from __future__ import annotations

from bench.floor import Floor
from bench.report import table


def test_floor_counts_hops_and_commits_of_an_instance() -> None:
    floor = Floor.of(steps=3, broker_hop_ms=0.5, commit_ms=0.25)
    # The start command, then a task and a report per step; a commit for the start and
    # one per step.
    assert (floor.hops, floor.commits) == (7, 4)
    assert floor.instance_ms == 4.5
    assert Floor.of(steps=1, broker_hop_ms=1.0, commit_ms=1.0).instance_ms == 5.0
    assert floor.as_dict()["instance_ms"] == 4.5


def test_table_shows_the_floor_and_the_latency_phase_cpu() -> None:
    result = {
        "name": "orchestrator",
        "tasks_per_s": 2000.0,
        "instances": 10,
        "steps": 3,
        "latency_phase": {
            "rate": 200.0,
            "cpu_s_per_1000_tasks": {"engine": 0.7, "rabbitmq": 0.8},
            "machine_busy_pct": 86,
        },
        "floor_ms": {
            "back_to_back": Floor.of(3, 0.5, 0.25).as_dict(),
            "after_idle": Floor.of(3, 1.0, 0.5).as_dict(),
        },
    }
    text = table(result)
    assert "7 broker hops + 4 commits" in text
    assert "4.5 ms back to back (hop 0.5, commit 0.25)" in text
    assert "9.0 ms after idle (hop 1.0, commit 0.5)" in text
    assert "engine 0.7, rabbitmq 0.8; the machine 86 % busy" in text
