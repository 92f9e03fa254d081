"""Peer benchmark: the same workload on DBOS Transact (durable workflows in PostgreSQL).

Workload: N workflows, each a sequence of S no-op `@DBOS.step()` functions passing a payload
of B bytes along. DBOS's defaults for durability: the workflow's start, each step's output
and its end are written to DBOS's system database before it goes on; synchronous_commit
stays as the server has it (on). A fresh database `dbos_bench_<hex>` on the server of
`--database-url` holds the run and is dropped at the end.

Modes (`--mode`):
- `queue` (default): the way to spread DBOS workflows over several processes. W worker
  processes launch DBOS and listen to one queue; this process enqueues every workflow with
  a `DBOSClient` (one transaction each, from `--start-threads` threads). Each worker's queue
  thread polls every `--poll-interval` seconds and claims what is enqueued, up to
  `--worker-concurrency` running workflows in that process; each runs on its own executor
  thread. Tuned for throughput: 50 per worker and 0.1 s did best on a 2-core machine with
  2 workers (about 600 tasks/s against about 460 with DBOS's defaults of no limit and 1 s,
  which `--worker-concurrency 0 --poll-interval 1` restores).
- `direct`: `DBOS.start_workflow` in this one process (W is ignored); each workflow runs at
  once on a DBOS executor thread, with no queue and no polling.

Phases: a warm-up (`--warmup` workflows), then throughput (start N as fast as possible; first
start to last completion), then, with `--rate`, latency (open-loop starts at R/s for M
workflows; completion - start per workflow). Start times are this process's clock just
before the start call; completion and first-step times are read back from DBOS's tables.

Progress goes to stderr; the last line of stdout is one JSON object. Exit 0 on success,
1 on a failed run, 2 on bad arguments or an unreachable PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import orjson
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bench import child_env
from bench.procstats import cpu_seconds, pids_named
from bench.queries import query
from bench.stats import summary
from orchestrator.subprocesses import spawn, stop

_CONNECT_TIMEOUT_S = 5
_POLL_S = 0.05
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0


class BenchError(Exception):
    """A failed run, with a short message for the user and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Options:
    database_url: str
    instances: int
    steps: int
    workers: int
    payload_bytes: int
    rate: float | None
    rate_instances: int
    mode: str
    worker_concurrency: int | None
    poll_interval: float
    start_threads: int
    warmup: int
    timeout: float
    log_level: str


@dataclass
class Phase:
    """Starts of one phase: when each workflow's start call began (this process's clock)."""

    sent_at: dict[str, float] = field(default_factory=dict)
    lag_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, workflow_id: str, at: float, scheduled: float | None = None) -> None:
        with self.lock:
            self.sent_at[workflow_id] = at
            if scheduled is not None:
                self.lag_s.append(at - scheduled)


class CpuGroups:
    """CPU seconds per group of processes between `start()` and `stop()`.

    Groups are listed again at `stop()`, so processes started in between (PostgreSQL
    backends of connections opened during the phase) count too; processes that ended in
    between are lost. `postgres` is every PostgreSQL process, whatever else it served.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self._before = {
            name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()
        }

    def stop(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self._before.get(name, {})
            used[name] = round(sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids()), 3)
        return used


class Starter(Protocol):
    """Starts one benchmark workflow; how depends on the mode."""

    def __call__(self, workflow_id: str, payload: str) -> None: ...


def _status(line: str) -> None:
    sys.stderr.write(f"[dbos] {line}\n")
    sys.stderr.flush()


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("dbos", "sqlalchemy", "psycopg"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


# --- the database server -------------------------------------------------------------------


def _url_for(database_url: str, database: str) -> str:
    """`database_url` pointing at another database of the same server, in libpq URI form."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise BenchError(f"invalid --database-url: {exc}", 2) from exc
    if not url.drivername.startswith("postgres"):
        raise BenchError("--database-url must be a postgresql:// URL", 2)
    return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _where(database_url: str) -> str:
    url = make_url(database_url)
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def _connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(
        url,
        autocommit=autocommit,
        connect_timeout=_CONNECT_TIMEOUT_S,
        options="-c statement_timeout=60000",
    )


def _create_database(database_url: str) -> tuple[str, str]:
    name = f"dbos_bench_{secrets.token_hex(4)}"
    try:
        with _connect(_url_for(database_url, "postgres")) as conn:
            conn.execute(query("dbos_create_database", database=name))
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"PostgreSQL unreachable at {_where(database_url)}: {first}", 2) from exc
    return name, _url_for(database_url, name)


def _drop_database(database_url: str, name: str) -> None:
    try:
        with _connect(_url_for(database_url, "postgres")) as conn:
            conn.execute(query("dbos_drop_database", database=name))
    except psycopg.Error as exc:
        _status(f"could not drop database {name}: {exc}")


# --- worker processes (queue mode) ---------------------------------------------------------


class Workers:
    """The W DBOS worker processes; each stops when its standard input closes."""

    def __init__(self, options: Options, bench_url: str) -> None:
        self.options = options
        self.bench_url = bench_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, deadline: float) -> None:
        ready: queue.Queue[int] = queue.Queue()
        for index in range(self.options.workers):
            proc = spawn(
                [
                    sys.executable,
                    "-m",
                    "bench.peers.dbos_worker",
                    "--database-url",
                    self.bench_url,
                    "--steps",
                    str(self.options.steps),
                    "--index",
                    str(index),
                    "--log-level",
                    self.options.log_level,
                ],
                stdin=subprocess.PIPE,
                output=subprocess.PIPE,
                errors=None,
                env=child_env(),
            )
            self.procs.append(proc)
            threading.Thread(
                target=self._await_ready, args=(proc, index, ready), daemon=True
            ).start()
        waiting = set(range(len(self.procs)))
        while waiting:
            try:
                waiting.discard(ready.get(timeout=0.5))
            except queue.Empty:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(waiting)} DBOS worker(s) not ready in time") from None

    @staticmethod
    def _await_ready(proc: subprocess.Popen[bytes], index: int, ready: queue.Queue[int]) -> None:
        assert proc.stdout is not None
        from bench.peers.dbos_app import READY_LINE

        for line in proc.stdout:
            if line.decode(errors="replace").strip() == READY_LINE:
                ready.put(index)
        # Read to the end, so a chatty worker never blocks on a full pipe.

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                raise BenchError(f"DBOS worker {index} exited with code {code}")

    def stop(self) -> None:
        """Close each worker's stdin (its signal to stop), then wait; SIGKILL a straggler."""
        for proc in self.procs:
            if proc.stdin is not None:
                with suppress(OSError):
                    proc.stdin.close()
        stop(self.procs, timeout_s=_STOP_TIMEOUT_S, signum=None)

    def kill(self) -> None:
        for proc in self.procs:
            with suppress(OSError):
                proc.kill()


# --- starting and watching workflows -------------------------------------------------------


@contextmanager
def _queue_starter(options: Options, bench_url: str) -> Iterator[Starter]:
    from dbos import DBOSClient, EnqueueOptions

    from bench.peers.dbos_app import APP_NAME, QUEUE_NAME, WORKFLOW_NAME

    client = DBOSClient(
        system_database_url=bench_url,
        application_name=APP_NAME,
        system_database_pool_size=options.start_threads + 1,
        retry_connection_errors=False,
    )
    try:
        client.register_queue(
            QUEUE_NAME,
            worker_concurrency=options.worker_concurrency,
            polling_interval_sec=options.poll_interval,
        )

        def start(workflow_id: str, payload: str) -> None:
            enqueue: EnqueueOptions = {
                "workflow_name": WORKFLOW_NAME,
                "queue_name": QUEUE_NAME,
                "workflow_id": workflow_id,
            }
            client.enqueue(enqueue, payload)

        yield start
    finally:
        client.destroy()


@contextmanager
def _direct_starter(options: Options, bench_url: str) -> Iterator[Starter]:
    from dbos import DBOS, SetWorkflowID

    from bench.peers.dbos_app import dbos_config, define_workflow

    workflow = define_workflow(options.steps)
    DBOS(config=dbos_config(bench_url, executor_id="bench-direct", log_level=options.log_level))
    try:
        DBOS.launch()

        def start(workflow_id: str, payload: str) -> None:
            with SetWorkflowID(workflow_id):
                DBOS.start_workflow(workflow, payload)

        yield start
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=0)


def _start_all(start: Starter, pool: ThreadPoolExecutor, ids: Sequence[str], payload: str) -> Phase:
    phase = Phase()

    def one(workflow_id: str) -> None:
        phase.note(workflow_id, time.time())
        start(workflow_id, payload)

    for _ in pool.map(one, ids):
        pass
    return phase


def _start_open_loop(
    start: Starter,
    pool: ThreadPoolExecutor,
    ids: Sequence[str],
    payload: str,
    rate: float,
    deadline: float,
) -> Phase:
    """A start every 1/rate seconds, whether or not earlier ones have finished."""
    phase = Phase()
    began_wall = time.time()
    began = time.monotonic()

    def one(workflow_id: str, scheduled: float) -> None:
        phase.note(workflow_id, time.time(), scheduled)
        start(workflow_id, payload)

    futures = []
    for index, workflow_id in enumerate(ids):
        delay = began + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() > deadline:
            raise BenchError("latency phase: deadline passed while starting workflows")
        futures.append(pool.submit(one, workflow_id, began_wall + index / rate))
    for future in futures:
        future.result(timeout=max(0.0, deadline - time.monotonic()))
    return phase


def _wait_finished(
    observer: psycopg.Connection[Any],
    ids: Sequence[str],
    deadline: float,
    check_alive: Callable[[], None],
    label: str,
) -> None:
    remaining = set(ids)
    last_report = time.monotonic()
    while remaining:
        rows = observer.execute(query("dbos_finished"), (list(remaining),)).fetchall()
        for workflow_id, status in rows:
            if status != "SUCCESS":
                raise BenchError(f"workflow {workflow_id} ended {status}")
            remaining.discard(workflow_id)
        if not remaining:
            return
        check_alive()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(
                f"{label}: timed out with {len(ids) - len(remaining)}/{len(ids)} finished"
            )
        if now - last_report > 5:
            _status(f"{label}: {len(ids) - len(remaining)}/{len(ids)} finished")
            last_report = now
        time.sleep(_POLL_S)


def _times(
    observer: psycopg.Connection[Any], ids: Sequence[str]
) -> dict[str, tuple[float, float | None]]:
    """Completion and first-step-entered times (epoch ms) per workflow."""
    rows = observer.execute(query("dbos_times"), (list(ids),)).fetchall()
    return {
        wid: (float(done), float(first) if first is not None else None) for wid, done, first in rows
    }


def _dispatch_ms(phase: Phase, times: dict[str, tuple[float, float | None]]) -> list[float]:
    return [
        first - phase.sent_at[wid] * 1000 for wid, (_, first) in times.items() if first is not None
    ]


# --- the run --------------------------------------------------------------------------------


@dataclass
class Context:
    options: Options
    start: Starter
    pool: ThreadPoolExecutor
    observer: psycopg.Connection[Any]
    check_alive: Callable[[], None]
    deadline: float
    payload: str


def _warm_up(ctx: Context) -> None:
    if ctx.options.warmup <= 0:
        return
    ids = [f"warm-{index}" for index in range(ctx.options.warmup)]
    _start_all(ctx.start, ctx.pool, ids, ctx.payload)
    _wait_finished(ctx.observer, ids, ctx.deadline, ctx.check_alive, "warm-up")
    _status(f"warm-up done ({len(ids)} workflows)")


def _throughput(ctx: Context, meter: CpuGroups) -> dict[str, Any]:
    options = ctx.options
    ids = [f"tp-{index}" for index in range(options.instances)]
    meter.start()
    began_wall = time.time()
    phase = _start_all(ctx.start, ctx.pool, ids, ctx.payload)
    started_s = time.time() - began_wall
    _wait_finished(ctx.observer, ids, ctx.deadline, ctx.check_alive, "throughput")
    cpu = meter.stop()
    times = _times(ctx.observer, ids)
    last_end_ms = max(done for done, _ in times.values())
    elapsed = last_end_ms / 1000 - began_wall
    tasks = options.instances * options.steps
    return {
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(tasks / elapsed, 1),
        "instances_per_s": round(options.instances / elapsed, 1),
        "start_phase_s": round(started_s, 3),
        "cpu_s_per_1000_tasks": {k: round(v * 1000 / tasks, 3) for k, v in cpu.items()},
        "dispatch_latency_ms_full_load": summary(_dispatch_ms(phase, times), (50, 99)),
    }


def _latency(ctx: Context, rate: float) -> dict[str, Any]:
    ids = [f"lat-{index}" for index in range(ctx.options.rate_instances)]
    began = time.monotonic()
    phase = _start_open_loop(ctx.start, ctx.pool, ids, ctx.payload, rate, ctx.deadline)
    achieved = len(ids) / max(1e-9, time.monotonic() - began)
    _wait_finished(ctx.observer, ids, ctx.deadline, ctx.check_alive, "latency")
    times = _times(ctx.observer, ids)
    latencies = [done - phase.sent_at[wid] * 1000 for wid, (done, _) in times.items()]
    return {
        "instance_latency_ms": summary(latencies),
        "dispatch_latency_ms": summary(_dispatch_ms(phase, times), (50, 99)),
        "latency_phase": {
            "rate": rate,
            "instances": len(ids),
            "achieved_rate": round(achieved, 1),
            "start_lag_ms": summary([lag * 1000 for lag in phase.lag_s], (50, 99, 100)),
        },
    }


def _variant(options: Options) -> str:
    if options.mode == "direct":
        return (
            f"direct: DBOS.start_workflow in 1 process ({options.start_threads} starting "
            "threads), DBOS defaults, every step checkpointed, synchronous_commit on"
        )
    concurrency = options.worker_concurrency or "unlimited"
    return (
        f"queue: {options.workers} worker processes, worker_concurrency {concurrency}, "
        f"polling {options.poll_interval:g}s, enqueue by DBOSClient ({options.start_threads} "
        "threads), DBOS defaults, every step checkpointed, synchronous_commit on"
    )


def run(options: Options) -> dict[str, Any]:
    from dbos import DBOS

    name, bench_url = _create_database(options.database_url)
    _status(f"database {name} created; mode {options.mode}")
    deadline = time.monotonic() + options.timeout
    workers = Workers(options, bench_url)
    watchdog = threading.Timer(options.timeout + 60, _give_up, args=(workers,))
    watchdog.daemon = True
    watchdog.start()
    try:
        DBOS.migrate(bench_url)
        with _connect(bench_url) as observer:
            sync_commit = observer.execute(query("dbos_synchronous_commit")).fetchone()
            if sync_commit is None or sync_commit[0] != "on":
                _status(f"warning: synchronous_commit is {sync_commit}")
            opener = _queue_starter if options.mode == "queue" else _direct_starter
            with (
                opener(options, bench_url) as start,
                ThreadPoolExecutor(options.start_threads, thread_name_prefix="start") as pool,
            ):
                if options.mode == "queue":
                    workers.start(min(deadline, time.monotonic() + _READY_TIMEOUT_S))
                    _status(f"{options.workers} worker processes ready")
                check_alive = workers.check_alive
                ctx = Context(
                    options,
                    start,
                    pool,
                    observer,
                    check_alive,
                    deadline,
                    "x" * options.payload_bytes,
                )
                _warm_up(ctx)
                # After the warm-up, so the connections it opened are counted.
                meter = CpuGroups(
                    {"client": lambda: [os.getpid()], "workers": lambda: workers.pids}
                    if options.mode == "queue"
                    else {"dbos_process": lambda: [os.getpid()]}
                )
                meter.groups["postgres"] = lambda: pids_named("postgres")
                _status(f"throughput phase: {options.instances} workflows x {options.steps} steps")
                full = _throughput(ctx, meter)
                _status(f"{full['tasks_per_s']} tasks/s, {full['instances_per_s']} workflows/s")
                latency: dict[str, Any] = {
                    "instance_latency_ms": None,
                    "dispatch_latency_ms": None,
                }
                if options.rate is not None:
                    _status(
                        f"latency phase: {options.rate_instances} workflows at {options.rate}/s"
                    )
                    latency = _latency(ctx, options.rate)
                    _status(f"latency {latency['instance_latency_ms']}")
    finally:
        workers.stop()
        _drop_database(options.database_url, name)
        watchdog.cancel()
    return {
        "name": "dbos",
        "variant": _variant(options),
        "instances": options.instances,
        "steps": options.steps,
        "elapsed_s": full["elapsed_s"],
        "tasks_per_s": full["tasks_per_s"],
        "instances_per_s": full["instances_per_s"],
        "instance_latency_ms": latency["instance_latency_ms"],
        "dispatch_latency_ms": latency["dispatch_latency_ms"],
        "rate": options.rate,
        "versions": _versions(),
        "workers": options.workers if options.mode == "queue" else 1,
        "payload_bytes": options.payload_bytes,
        **{
            k: v
            for k, v in full.items()
            if k not in ("elapsed_s", "tasks_per_s", "instances_per_s")
        },
        **({"latency_phase": latency["latency_phase"]} if "latency_phase" in latency else {}),
    }


def _give_up(workers: Workers) -> None:
    _status("global deadline passed; giving up")
    workers.kill()
    os._exit(3)


# --- command line --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.dbos_workflow",
        description="The benchmark workload on DBOS Transact; last stdout line is JSON.",
    )
    parser.add_argument(
        "--database-url", required=True, help="server to create the run's database on"
    )
    parser.add_argument("--instances", type=_positive_int, default=2000)
    parser.add_argument("--steps", type=_positive_int, default=3)
    parser.add_argument(
        "--workers", type=_positive_int, default=2, help="worker processes (queue mode)"
    )
    parser.add_argument("--payload-bytes", type=_non_negative_int, default=0)
    parser.add_argument(
        "--rate", type=_positive_float, default=None, help="latency phase: starts/s"
    )
    parser.add_argument(
        "--rate-instances",
        type=_positive_int,
        default=None,
        help="latency phase: workflows (default 5 s worth)",
    )
    parser.add_argument("--mode", choices=("queue", "direct"), default="queue")
    parser.add_argument(
        "--worker-concurrency",
        type=_non_negative_int,
        default=50,
        help="queue mode: running workflows per worker process, 0 for no limit (DBOS's default)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=0.1,
        help="queue mode: seconds between a worker's queue polls (DBOS's default is 1.0)",
    )
    parser.add_argument(
        "--start-threads", type=_positive_int, default=8, help="threads issuing the start calls"
    )
    parser.add_argument("--warmup", type=_non_negative_int, default=300)
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=600.0,
        help="deadline in seconds for the whole run",
    )
    parser.add_argument("--log-level", default="WARNING", help="DBOS log level")
    args = parser.parse_args(argv)
    rate_instances = args.rate_instances
    if rate_instances is None:
        rate_instances = max(1, int((args.rate or 0) * 5))
    return Options(
        database_url=args.database_url,
        instances=args.instances,
        steps=args.steps,
        workers=args.workers,
        payload_bytes=args.payload_bytes,
        rate=args.rate,
        rate_instances=rate_instances,
        mode=args.mode,
        worker_concurrency=args.worker_concurrency or None,
        poll_interval=args.poll_interval,
        start_threads=args.start_threads,
        warmup=args.warmup,
        timeout=args.timeout,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        result = run(options)
    except BenchError as exc:
        _status(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:
        _status(f"error: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        _status("interrupted")
        return 130
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
