"""Options and output of `orchestrator bench`."""

from __future__ import annotations

import argparse
import sys

import orjson

from orchestrator.bench.report import table
from orchestrator.bench.run import BenchOptions, bench
from orchestrator.config import Settings

TARGET_TASKS_PER_S = 2000
#: --quick fails only on a collapse, never on noise.
QUICK_FLOOR = TARGET_TASKS_PER_S / 4


def options_from(args: argparse.Namespace) -> BenchOptions:
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
    )


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    result = bench(settings, options_from(args))
    sys.stdout.write(table(result) + "\n")
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    if args.quick and result["tasks_per_s"] < QUICK_FLOOR:
        sys.stderr.write(f"collapse: {result['tasks_per_s']} tasks/s < {QUICK_FLOOR}\n")
        return 1
    return 0
