"""The latency breakdown: its stages cut each instance's latency at recorded moments and add
up to it; an instance with a redelivered task has no single path and is left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.breakdown import Entry, TaskTimes, breakdown, line, worker_entries


def _instance(
    name: str, sent: float, steps: list[tuple[float, float, float, float]]
) -> tuple[dict[str, float], list[TaskTimes], dict[str, list[Entry]]]:
    """steps: (created, published, entered, closed) of each task, in ms."""
    tasks = [
        TaskTimes(name, f"{name}-t{i}", created, closed)
        for i, (created, _, _, closed) in enumerate(steps)
    ]
    entries = {
        f"{name}-t{i}": [Entry(published, entered)]
        for i, (_, published, entered, _) in enumerate(steps)
    }
    return {name: sent}, tasks, entries


def test_the_stages_add_up_to_each_instance_latency() -> None:
    # Sent at 0; the start's transaction began at 3; each next task is created by the
    # transaction that closed the one before (same begin time).
    sent, tasks, entries = _instance(
        "a", 0.0, [(3.0, 4.0, 6.0, 10.0), (10.0, 12.0, 13.0, 20.0), (20.0, 21.0, 22.0, 30.0)]
    )
    result = breakdown(sent, list(reversed(tasks)), entries)  # order of rows does not matter
    assert result["instances"] == 1
    assert result["start"] == {"mean": 3.0, "p50": 3.0}
    assert result["engine"]["mean"] == pytest.approx((1 + 2 + 1) / 3, abs=0.01)
    assert result["to_worker"]["mean"] == pytest.approx((2 + 1 + 1) / 3, abs=0.01)
    assert result["back"]["mean"] == pytest.approx((4 + 7 + 8) / 3, abs=0.01)
    assert result["total_mean"] == 30.0
    steps = result["steps"] / result["instances"]
    parts = result["start"]["mean"] + steps * sum(
        result[s]["mean"] for s in ("engine", "to_worker", "back")
    )
    assert parts == pytest.approx(result["total_mean"], abs=0.06)
    assert "= 30.0" in (line(result) or "")


def test_an_instance_with_a_redelivered_task_is_left_out() -> None:
    sent_a, tasks_a, entries_a = _instance("a", 0.0, [(1.0, 2.0, 3.0, 4.0)])
    sent_b, tasks_b, entries_b = _instance("b", 0.0, [(1.0, 2.0, 3.0, 9.0)])
    entries_b["b-t0"].append(Entry(2.0, 5.0))  # the worker entered it twice
    result = breakdown({**sent_a, **sent_b}, tasks_a + tasks_b, {**entries_a, **entries_b})
    assert result["instances"] == 1
    assert result["total_mean"] == 4.0


def test_nothing_to_break_down_prints_nothing() -> None:
    assert breakdown({}, [], {}) == {"instances": 0}
    assert line({"instances": 0}) is None


def test_worker_files_are_read_by_task_id(tmp_path: Path) -> None:
    (tmp_path / "latency-0.txt").write_text("1.5 2.5 t1\n3.0 4.0 t2\n")
    (tmp_path / "latency-1.txt").write_text("5.0 6.0 t1\n7.0 8.0\n")  # no id: not used
    entries = worker_entries(sorted(tmp_path.glob("latency-*.txt")))
    assert entries == {"t1": [Entry(1.5, 2.5), Entry(5.0, 6.0)], "t2": [Entry(3.0, 4.0)]}
