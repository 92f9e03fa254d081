"""Options and output of `orchestrator bench`."""

from __future__ import annotations

import argparse
import sys

import orjson

from orchestrator.bench.against import AgainstError, checkout
from orchestrator.bench.report import table
from orchestrator.bench.run import BenchOptions, bench
from orchestrator.config import Settings

TARGET_TASKS_PER_S = 2000
#: --quick fails only on a collapse, never on noise.
QUICK_FLOOR = TARGET_TASKS_PER_S / 4


def options_from(args: argparse.Namespace) -> BenchOptions:
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
    )


def _check_against(args: argparse.Namespace) -> None:
    """Both sides need the same fixed arrival rate, and nothing else running beside them."""
    if args.rate is None:
        raise SystemExit("--against needs --rate: both sides run their latency phase at it")
    if args.peers is not None or args.backlog or args.quick:
        raise SystemExit("--against runs alone: no --peers, --backlog or --quick with it")
    try:
        checkout(args.against)
    except AgainstError as exc:
        raise SystemExit(f"--against: {exc}") from exc


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    result = bench(settings, options_from(args))
    sys.stdout.write(table(result) + "\n")
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    if args.quick and result["tasks_per_s"] < QUICK_FLOOR:
        sys.stderr.write(f"collapse: {result['tasks_per_s']} tasks/s < {QUICK_FLOOR}\n")
        return 1
    return 0
