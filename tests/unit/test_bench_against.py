"""`./dev bench --against DIR`: the other side gets the same workload, a directory
that is not a checkout is refused, a side that ran the wrong code is reported as an error,
and the table shows the other side's row and its CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.against import (
    AgainstError,
    bench_arguments,
    bench_command,
    checkout,
    this_checkout,
)
from bench.cli import build_parser, options_from
from bench.report import table
from bench.run import BenchOptions, _checked


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_other_side_runs_the_same_workload() -> None:
    options = BenchOptions(
        instances=700, steps=4, worker_processes=3, payload_bytes=64, rate=80.0, rate_seconds=3
    )
    args = _args(*bench_arguments(options))

    again = options_from(args)
    for name in ("instances", "steps", "worker_processes", "payload_bytes", "rate"):
        assert getattr(again, name) == getattr(options, name)
    assert again.rate_seconds == 3 and args.json and again.against is None


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgainstError, match="not a checkout"):
        checkout(str(tmp_path))
    assert checkout(str(this_checkout())) == this_checkout()


def _tree(root: Path, *files: str) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_the_other_side_runs_the_benchmark_of_its_own_layout(tmp_path: Path) -> None:
    # Before the benchmark left the package it ran as `orchestrator bench`.
    old = _tree(tmp_path / "old", "orchestrator/__init__.py", "orchestrator/bench/__init__.py")
    new = _tree(tmp_path / "new", "orchestrator/__init__.py", "bench/__main__.py")
    assert bench_command(checkout(str(old))) == ["-m", "orchestrator", "bench"]
    assert bench_command(checkout(str(new))) == ["-m", "bench"]
    assert bench_command(this_checkout()) == ["-m", "bench"]
    neither = _tree(tmp_path / "neither", "orchestrator/__init__.py")
    with pytest.raises(AgainstError, match="no benchmark"):
        checkout(str(neither))


def test_against_needs_a_rate_and_runs_alone() -> None:
    here = str(this_checkout())
    with pytest.raises(SystemExit, match="needs --rate"):
        options_from(_args("--against", here))
    with pytest.raises(SystemExit, match="runs alone"):
        options_from(_args("--against", here, "--rate", "50", "--peers", "bare"))
    assert options_from(_args("--against", here, "--rate", "50")).against == here


def test_a_side_that_ran_other_code_is_an_error(tmp_path: Path) -> None:
    theirs = {"name": "orchestrator@abc", "tasks_per_s": 1.0, "code": "/somewhere/else"}
    assert "error" in _checked(theirs, tmp_path)
    fine = {**theirs, "code": str(tmp_path)}
    assert _checked(fine, tmp_path) is fine


def test_the_table_shows_the_other_side() -> None:
    phase = {"rate": 50.0, "cpu_s_per_1000_tasks": {"engine": 1.5}, "machine_busy_pct": 60}
    result = {
        "name": "orchestrator",
        "tasks_per_s": 1000.0,
        "latency_phase": phase,
        "against": {
            "name": "orchestrator@abc1234",
            "tasks_per_s": 800.0,
            "latency_phase": {**phase, "cpu_s_per_1000_tasks": {"engine": 1.9}},
        },
    }
    text = table(result)
    assert "orchestrator@abc1234" in text and "1.25x" in text
    assert "orchestrator@abc1234, in the latency phase: CPU s per 1000 tasks engine 1.9" in text
