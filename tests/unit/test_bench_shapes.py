"""`./dev bench --shape`: each shape deploys a valid definition of the intended form, the
default is the workload it always was, the option reaches every side of a run, peers are
refused with parallel, and the result and table are labelled with a shape other than the
default."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from bench import shapes
from bench.against import AgainstError, bench_arguments, check_shape, checkout, this_checkout
from bench.breakdown import Entry, TaskTimes, breakdown, line
from bench.cli import build_parser, options_from
from bench.floor import Floor
from bench.report import table
from bench.run import BenchOptions, Run, _checked
from orchestrator.config import Settings
from orchestrator.definitions.graph import Process
from orchestrator.definitions.loader import compile_definition


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_every_shape_deploys_a_valid_definition(shape: str, steps: int) -> None:
    data = orjson.loads(orjson.dumps(shapes.definition(shape, steps)))  # as deployed
    assert isinstance(compile_definition(data), Process)
    tasks = [n for n in data["nodes"] if n["type"] == "service_task"]
    assert [t["topic"] for t in tasks] == shapes.topics(steps)


def test_the_parallel_shape_forks_into_every_task_and_joins_them() -> None:
    data = shapes.definition(shapes.PARALLEL, 3)
    types = {n["id"]: n["type"] for n in data["nodes"]}
    assert types["fork"] == types["join"] == "parallel_gateway"
    edges = {(f["from"], f["to"]) for f in data["flows"]}
    tasks = ["step1", "step2", "step3"]
    assert edges == {
        ("start", "fork"),
        *(("fork", t) for t in tasks),
        *((t, "join") for t in tasks),
        ("join", "end"),
    }
    assert shapes.path_steps(shapes.PARALLEL, 3) == 1


def test_the_default_shape_is_the_workload_it_always_was() -> None:
    # The sequential definition, exactly as the benchmark deployed it before shapes existed.
    data = shapes.definition(shapes.SEQUENTIAL, 2)
    assert data == {
        "key": "bench",
        "nodes": [
            {"id": "start", "type": "start_event"},
            {"id": "step1", "type": "service_task", "topic": "bench-step-1", "lock": "60s"},
            {"id": "step2", "type": "service_task", "topic": "bench-step-2", "lock": "60s"},
            {"id": "end", "type": "end_event"},
        ],
        "flows": [
            {"id": "to_step1", "from": "start", "to": "step1"},
            {"id": "to_step2", "from": "step1", "to": "step2"},
            {"id": "to_end", "from": "step2", "to": "end"},
        ],
    }
    assert shapes.path_steps(shapes.SEQUENTIAL, 3) == 3
    assert options_from(_args()).shape == shapes.SEQUENTIAL
    # Older benchmarks have no --shape: the default workload is asked of them without it.
    assert "--shape" not in bench_arguments(BenchOptions(rate=50.0))
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.definition("diamond", 3)


def test_the_run_deploys_its_shape(tmp_path: Path) -> None:
    settings = Settings.from_env()
    for shape in shapes.SHAPES:
        run = Run(settings, BenchOptions(steps=3, shape=shape), tmp_path)
        assert orjson.loads(run.definition()) == shapes.definition(shape, 3)
        assert run.topics == ["bench-step-1", "bench-step-2", "bench-step-3"]


def test_shape_option_parsing() -> None:
    assert options_from(_args("--shape", "parallel")).shape == shapes.PARALLEL
    assert options_from(_args("--shape", "parallel", "--quick")).shape == shapes.PARALLEL
    assert options_from(_args("--shape", "sequential")).shape == shapes.SEQUENTIAL
    with pytest.raises(SystemExit):
        _args("--shape", "diamond")  # argparse: not one of the choices


def test_peers_are_refused_with_the_parallel_shape() -> None:
    with pytest.raises(SystemExit, match="peers"):
        options_from(_args("--shape", "parallel", "--peers"))
    with pytest.raises(SystemExit, match="peers"):
        options_from(_args("--shape", "parallel", "--peers", "celery"))
    assert options_from(_args("--peers", "bare")).peers == ("bare",)


def test_the_other_side_runs_the_same_shape() -> None:
    options = BenchOptions(instances=700, steps=3, rate=80.0, shape=shapes.PARALLEL)
    again = options_from(_args(*bench_arguments(options)))
    assert again.shape == shapes.PARALLEL and again.instances == 700


def test_against_a_checkout_with_shapes_takes_the_parallel_shape() -> None:
    here = str(this_checkout())
    check_shape(this_checkout(), shapes.PARALLEL)  # asks our own --help
    options = options_from(_args("--against", here, "--rate", "50", "--shape", "parallel"))
    assert options.shape == shapes.PARALLEL and options.against == here


def _old_checkout(root: Path) -> Path:
    """A checkout whose benchmark predates --shape: its --help offers no such option."""
    (root / "orchestrator").mkdir(parents=True)
    (root / "orchestrator" / "__init__.py").write_text("")
    (root / "bench").mkdir()
    (root / "bench" / "__init__.py").write_text("")
    (root / "bench" / "__main__.py").write_text(
        "import argparse\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--steps', type=int, default=3)\n"
        "parser.parse_args()\n"
    )
    return root


def test_against_an_old_checkout_refuses_parallel_but_runs_sequential(tmp_path: Path) -> None:
    old = str(_old_checkout(tmp_path / "old"))
    check_shape(checkout(old), shapes.SEQUENTIAL)  # asks nothing: every benchmark has it
    with pytest.raises(AgainstError, match="has no --shape parallel"):
        check_shape(checkout(old), shapes.PARALLEL)
    with pytest.raises(SystemExit, match=r"--against: .*has no --shape parallel"):
        options_from(_args("--against", old, "--rate", "50", "--shape", "parallel"))
    assert options_from(_args("--against", old, "--rate", "50")).against == old


def test_a_side_that_ran_another_shape_is_an_error(tmp_path: Path) -> None:
    old = {"name": "orchestrator@abc", "tasks_per_s": 1.0, "code": str(tmp_path)}
    assert _checked(old, tmp_path) is old  # no shape: the sequential one
    assert "sequential shape" in _checked(old, tmp_path, shapes.PARALLEL)["error"]
    parallel = {**old, "shape": shapes.PARALLEL}
    assert _checked(parallel, tmp_path, shapes.PARALLEL) is parallel
    assert "error" in _checked(parallel, tmp_path)


def test_the_parallel_breakdown_follows_the_task_that_closed_last() -> None:
    # Sent at 0; the start's transaction (at 3) creates all three tasks; the one entered
    # last closes last (at 30) and ends the instance.
    times = [(4.0, 6.0, 10.0), (5.0, 9.0, 20.0), (6.0, 12.0, 30.0)]
    tasks = [TaskTimes("a", f"t{i}", 3.0, closed) for i, (_, _, closed) in enumerate(times)]
    entries = {f"t{i}": [Entry(pub, ent)] for i, (pub, ent, _) in enumerate(times)}
    result = breakdown({"a": 0.0}, tasks, entries, parallel=True)
    assert result["instances"] == 1 and result["branches"] == 3
    assert result["start"]["mean"] == 3.0 and result["engine"]["mean"] == 3.0
    assert result["to_worker"]["mean"] == 6.0 and result["back"]["mean"] == 18.0
    assert result["total_mean"] == 30.0  # start + engine + to worker + back
    assert "the last to close of 3 parallel tasks" in (line(result) or "")
    assert "branches" not in breakdown({"a": 0.0}, tasks, entries)


def test_the_table_and_json_label_only_a_shape_other_than_the_default() -> None:
    floors = {"back_to_back": Floor.of(1, 0.5, 0.25).as_dict()}
    base = {
        "name": "orchestrator",
        "tasks_per_s": 900.0,
        "instances": 1000,
        "steps": 3,
        "latency_phase": {"rate": 50.0},
        "floor_ms": floors,
    }
    sequential = table(base)
    assert "shape" not in sequential
    assert "1000 instances x 3 steps" in sequential
    parallel = table({**base, "shape": "parallel"})
    assert parallel.splitlines()[0].startswith("shape parallel: start -> parallel fork -> 3")
    assert "1000 instances x 3 tasks (parallel shape)" in parallel
    assert "3 broker hops + 2 commits on an instance's longest path" in parallel
