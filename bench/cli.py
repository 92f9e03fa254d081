"""The benchmark's command line: `python -m bench` (`./dev bench`), its options and output."""

from __future__ import annotations

import argparse
import logging
import sys

import orjson

from bench import shapes, timers
from bench.against import AgainstError, check_shape, checkout
from bench.peers import PEERS
from bench.report import table
from bench.run import BenchOptions, bench
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError

TARGET_TASKS_PER_S = 2000
#: --quick fails only on a collapse, never on noise.
QUICK_FLOOR = TARGET_TASKS_PER_S / 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure throughput and latency end to end: our engine, optionally peers.",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="tasks per instance: in a row (sequential), or at once (parallel branches)",
    )
    parser.add_argument(
        "--shape",
        choices=shapes.SHAPES,
        default=shapes.SEQUENTIAL,
        help="the process each instance runs: sequential (default) start -> the tasks one "
        "after another -> end; parallel start -> parallel fork -> the tasks at once -> "
        "parallel join -> end (not with --peers)",
    )
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--engines", type=int, default=1, help="engine processes (active-active)")
    parser.add_argument("--payload-bytes", type=int, default=0)
    parser.add_argument(
        "--rate",
        type=float,
        help="instances/s of the latency phase (default: half the measured maximum)",
    )
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument(
        "--peers",
        nargs="*",
        default=None,
        choices=sorted(PEERS),
        help="also run peers: celery, celery-noconfirm, celery-quorum, dbos; bare (the "
        "engine's messages and commits with no engine) and bare-db-start (the same, starts "
        "committed by the client) (no names: celery and dbos)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for CI: fails only below a quarter of the target",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument(
        "--timers",
        type=int,
        metavar="N",
        help="instead: N timers due in the same second, fired by two engines (or --engines): "
        "due time to last firing, lag per timer, each fired once (bench/timers.py)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="also queue this many instances with no worker, then drain them",
    )
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="run another checkout of this project (DIR) at the same time, same workload "
        "(needs --rate): the fair way to compare two versions on a machine whose speed drifts",
    )
    return parser


def options_from(args: argparse.Namespace) -> BenchOptions:
    if args.shape != shapes.SEQUENTIAL and args.peers is not None:
        raise SystemExit(
            f"--shape {args.shape} runs our engine only: the peers (--peers) have the "
            "sequential workload alone; drop --peers, or use --shape sequential"
        )
    if args.against is not None:
        _check_against(args)
    peers: tuple[str, ...] = ()
    if args.peers is not None:
        peers = tuple(args.peers) or ("celery", "dbos")
    if args.quick:
        return BenchOptions(
            instances=1000,
            steps=args.steps,
            warmup=100,
            rate_seconds=2.0,
            floor_samples=50,
            worker_processes=args.worker_processes,
            peers=peers,
            payload_bytes=args.payload_bytes,
            rate=args.rate,
            timeout_s=120,
            shape=args.shape,
        )
    return BenchOptions(
        instances=args.instances,
        steps=args.steps,
        worker_processes=args.worker_processes,
        engines=args.engines,
        payload_bytes=args.payload_bytes,
        rate=args.rate,
        rate_seconds=args.rate_seconds,
        peers=peers,
        backlog=args.backlog,
        against=args.against,
        shape=args.shape,
    )


def _check_against(args: argparse.Namespace) -> None:
    """Both sides need the same fixed arrival rate, and nothing else running beside them."""
    if args.rate is None:
        raise SystemExit("--against needs --rate: both sides run their latency phase at it")
    if args.peers is not None or args.backlog or args.quick:
        raise SystemExit("--against runs alone: no --peers, --backlog or --quick with it")
    try:
        check_shape(checkout(args.against), args.shape)
    except AgainstError as exc:
        raise SystemExit(f"--against: {exc}") from exc


def run_timer_bench(settings: Settings, args: argparse.Namespace) -> int:
    engines = args.engines if args.engines > 1 else 2
    result = timers.bench_timers(settings, args.timers, engines)
    sys.stdout.write(timers.lines(result) + "\n")
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["fired_once_each"] and result["timers_left"] == 0 else 1


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.timers:
        return run_timer_bench(settings, args)
    result = bench(settings, options_from(args))
    sys.stdout.write(table(result) + "\n")
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    if args.quick and result["tasks_per_s"] < QUICK_FLOOR:
        sys.stderr.write(f"collapse: {result['tasks_per_s']} tasks/s < {QUICK_FLOOR}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return run_bench(Settings.from_env(), args)
    except OrchestratorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
