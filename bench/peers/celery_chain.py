"""Peer benchmark: the engine's workload as Celery chains over the same RabbitMQ.

    python -m bench.peers.celery_chain --amqp-url URL --instances N --steps S \
        --workers W --payload-bytes B [--rate R --rate-instances M] [--quorum] [--no-confirms]

One instance is a chain of S no-op `bench.step` tasks, each receiving and returning a payload
dict whose string field has B bytes. Durability as in the engine: durable queue, persistent
messages, `task_acks_late`, publisher confirms (unless --no-confirms), optionally a quorum queue.

Workers: W `celery worker` nodes (separate processes, each with its own broker connection, as
the engine's W worker processes), each with a prefork pool of --concurrency processes (default
1, so W processes run tasks) and prefetch multiplier 1.

Completion: the chain's last task alone stores its result (`rpc://`: one message to this
process's reply queue, consumed by a collector thread); the others ignore theirs. A chain is
complete when that message arrives here.

Phases: warm-up (--warmup chains); throughput (N chains submitted as fast as one synchronous
client can, first submit to last completion); with --rate, latency (M chains submitted open loop
at R chains/s; latency = completion - submit). Dispatch latency: from when the submitter or the
previous step let go of the payload to when the next step starts (all S hops of every chain).

Progress goes to stderr; the last stdout line is one JSON object. Every queue and exchange is
named after a per-run prefix and deleted at the end (should the runner be killed with SIGKILL,
its worker nodes still get SIGTERM, but its queue and exchanges stay behind).
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import child_env
from bench.peers import celery_app as bench_app
from bench.procstats import CpuMeter, descendants, pids_named
from bench.stats import summary
from orchestrator.subprocesses import spawn, stop

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 3.0
#: Quorum queues came with RabbitMQ 3.8.
QUORUM_MIN_VERSION = (3, 8)


class BenchError(Exception):
    """A failure with a message for the person running the benchmark."""


@dataclass(frozen=True)
class Options:
    amqp_url: str
    instances: int
    steps: int
    workers: int
    concurrency: int
    payload_bytes: int
    rate: float | None
    rate_instances: int
    quorum: bool
    confirms: bool
    warmup: int
    timeout_s: float


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.celery_chain",
        description="Celery chains of no-op steps over RabbitMQ, equally durable as the engine.",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--instances", type=int, default=2000, help="chains (N)")
    parser.add_argument("--steps", type=int, default=3, help="tasks per chain (S)")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (W)")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="prefork processes per worker node"
    )
    parser.add_argument("--payload-bytes", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="chains/s of the latency phase")
    parser.add_argument(
        "--rate-instances", type=int, default=None, help="chains of the latency phase (M)"
    )
    parser.add_argument("--quorum", action="store_true", help="quorum task queue")
    parser.add_argument("--no-confirms", action="store_true", help="publisher confirms off")
    parser.add_argument("--warmup", type=int, default=300, help="chains before measuring")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    args = parser.parse_args(argv)
    for name in ("instances", "steps", "workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.payload_bytes < 0 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--payload-bytes and --warmup must be >= 0, --timeout > 0")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be > 0")
    rate_instances = args.rate_instances
    if rate_instances is None:
        rate_instances = max(1, int((args.rate or 0) * 5))
    if rate_instances < 1:
        parser.error("--rate-instances must be at least 1")
    return Options(
        amqp_url=args.amqp_url,
        instances=args.instances,
        steps=args.steps,
        workers=args.workers,
        concurrency=args.concurrency,
        payload_bytes=args.payload_bytes,
        rate=args.rate,
        rate_instances=rate_instances,
        quorum=args.quorum,
        confirms=not args.no_confirms,
        warmup=args.warmup,
        timeout_s=args.timeout,
    )


def _status(line: str) -> None:
    sys.stderr.write(f"[celery] {line}\n")
    sys.stderr.flush()


def variant(options: Options) -> str:
    parts = [
        "prefork",
        "acks_late",
        "persistent",
        "confirms" if options.confirms else "no confirms",
    ]
    if options.quorum:
        parts.append("quorum")
    parts.append(f"{options.workers} nodes x {options.concurrency} procs")
    return ", ".join(parts)


# --- the broker ------------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers: list[int] = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def preflight(app: Any, quorum: bool) -> str:
    """Connect once with a short timeout; return RabbitMQ's version. Fails within seconds."""
    conn = app.connection_for_write(connect_timeout=CONNECT_TIMEOUT_S)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)
        raw = conn.connection.server_properties.get("version", "")
    except Exception as exc:
        raise BenchError(f"RabbitMQ unreachable at {conn.as_uri()}: {exc!r}") from exc
    finally:
        conn.release()
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    if quorum and _version_tuple(version) < QUORUM_MIN_VERSION:
        raise BenchError(f"--quorum needs RabbitMQ >= 3.8, the broker is {version}")
    return version


def delete_topology(app: Any, queues: Iterable[str], exchanges: Iterable[str]) -> None:
    """Delete what the run declared; deleting what is not there is fine in RabbitMQ."""
    conn = app.connection_for_write(connect_timeout=CONNECT_TIMEOUT_S)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    except Exception as exc:
        _status(f"warning: could not delete the run's queues and exchanges: {exc!r}")
    finally:
        conn.release()


# --- worker processes ------------------------------------------------------------------------


@dataclass
class WorkerGroup:
    """W `celery worker` nodes, each in its own process group so that a kill reaches its pool."""

    prefix: str
    count: int
    concurrency: int
    env: dict[str, str]
    logdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        host = socket.gethostname()
        return [f"{self.prefix}-w{index}@{host}" for index in range(self.count)]

    def start(self) -> None:
        for index, name in enumerate(self.names):
            command = [
                sys.executable, "-m", "celery",
                "-A", "bench.peers.celery_app",
                "worker",
                "--pool", "prefork",
                "--concurrency", str(self.concurrency),
                "--prefetch-multiplier", "1",
                "--hostname", name,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ]  # fmt: skip
            self.procs.append(
                spawn(command, output=self.logdir / f"worker-{index}.log", env=self.env)
            )

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise BenchError(
                    f"celery worker {index} exited with {proc.returncode}:\n{self.log_tail(index)}"
                )

    def log_tail(self, index: int, chars: int = 2000) -> str:
        try:
            return (self.logdir / f"worker-{index}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def wait_ready(self, app: Any, timeout: float) -> float:
        """Ping until every node answers (a node answers once it consumes its task queue)."""
        began = time.monotonic()
        wanted = set(self.names)
        while True:
            self.check_alive()
            replies = app.control.ping(destination=sorted(wanted), timeout=0.5) or []
            answered = {name for reply in replies for name in reply}
            if wanted <= answered:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                missing = ", ".join(sorted(wanted - answered))
                raise BenchError(f"celery workers not ready after {timeout:.0f}s: {missing}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after `timeout`; either way each node's
        process group goes too, so none of its pool processes outlives it."""
        for ended in stop(self.procs, timeout_s=timeout):
            if ended.killed:
                _status(f"worker {ended.pid} did not stop within {timeout:.0f}s; killed it")

    def pids(self) -> list[int]:
        """The nodes and their pool processes."""
        found: list[int] = []
        for proc in self.procs:
            found.append(proc.pid)
            found += descendants(proc.pid)
        return found


# --- completions -----------------------------------------------------------------------------


class Collector:
    """Consumes this client's `rpc://` reply queue in a thread and notes when each final result
    arrived. Only the last task of each chain stores a result, so that is one message a chain."""

    def __init__(self, app: Any) -> None:
        #: The client thread's reply queue (named after it), as the `rpc://` backend declares it.
        self.queue: Any = app.backend.binding
        self._consumer_class: Any = app.amqp.Consumer
        self._conn: Any = app.connection_for_read(connect_timeout=CONNECT_TIMEOUT_S)
        self._lock = threading.Lock()
        #: task id -> (arrival time, result message); `order` lists the ids as they arrived.
        self.arrived: dict[str, tuple[float, dict[str, Any]]] = {}
        self.order: list[str] = []
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="celery-results", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BenchError("the result consumer did not start in time")
        self._raise_if_failed()

    def _run(self) -> None:
        try:
            self._conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_S)
            channel = self._conn.channel()
            queue = self.queue(channel)
            queue.declare()
            consumer = self._consumer_class(
                channel, [queue], callbacks=[self._on_message], no_ack=True, accept=["json"]
            )
            with consumer:
                self._ready.set()
                while not self._stopping.is_set():
                    try:
                        self._conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        continue
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            self._conn.release()

    def _on_message(self, body: Any, message: Any) -> None:
        now = time.time()
        task_id = message.properties.get("correlation_id") or body.get("task_id")
        with self._lock:
            self.arrived[str(task_id)] = (now, body)
            self.order.append(str(task_id))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BenchError(f"the result consumer failed: {self._error!r}") from self._error

    def wait_for(
        self, ids: Sequence[str], timeout: float, check: Callable[[], None], label: str
    ) -> dict[str, tuple[float, dict[str, Any]]]:
        """Wait until a result arrived for each id; progress to stderr every few seconds.

        Arrival times are taken by the consumer thread, so this polls (every 20 ms, looking only
        at what arrived since) without affecting them."""
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 5
        pending = set(ids)
        seen = 0
        while True:
            with self._lock:
                new, seen = self.order[seen:], len(self.order)
            pending.difference_update(new)
            if not pending:
                with self._lock:
                    return {task_id: self.arrived[task_id] for task_id in ids}
            self._raise_if_failed()
            check()
            now = time.monotonic()
            done = len(ids) - len(pending)
            if now > deadline:
                raise BenchError(f"{label}: timed out with {done}/{len(ids)} chains complete")
            if now > next_report:
                _status(f"{label}: {done}/{len(ids)} chains complete")
                next_report = now + 5
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# --- submitting ------------------------------------------------------------------------------


@dataclass
class Submitter:
    app: Any
    task: str
    steps: int
    data: str

    def submit(self) -> tuple[str, float]:
        """Publish one chain (the client publishes its first task); return the id of its last
        task and the submit time. Only the last task stores a result."""
        payload: dict[str, Any] = {"data": self.data}
        last = self.steps - 1
        sigs = [
            self.app.signature(self.task, args=() if i else (payload,), ignore_result=i < last)
            for i in range(self.steps)
        ]
        sent_at = time.time()
        payload[bench_app.SENT_AT] = sent_at
        work = sigs[0] if self.steps == 1 else functools.reduce(operator.or_, sigs)
        result = work.apply_async()
        return str(result.id), sent_at


def _failures(
    results: dict[str, tuple[float, dict[str, Any]]], steps: int, payload_bytes: int
) -> list[str]:
    """What is wrong with each chain that did not run all its steps on the whole payload."""
    wrong: list[str] = []
    for _, body in results.values():
        value = body.get("result")
        if body.get("status") != "SUCCESS" or not isinstance(value, dict):
            wrong.append(f"{body.get('status')}: {str(value)[:200]}")
            continue
        ran = len(value.get(bench_app.DISPATCH, []))
        size = len(value.get("data", ""))
        if ran != steps or size != payload_bytes:
            wrong.append(f"ran {ran} of {steps} steps, payload {size} of {payload_bytes} B")
    return wrong


def _dispatch_samples(results: dict[str, tuple[float, dict[str, Any]]]) -> list[float]:
    samples: list[float] = []
    for _, body in results.values():
        value = body.get("result")
        if isinstance(value, dict):
            samples += [
                s * 1000 for s in value.get(bench_app.DISPATCH, []) if isinstance(s, int | float)
            ]
    return samples


@dataclass
class Bench:
    options: Options
    submitter: Submitter
    collector: Collector
    workers: WorkerGroup

    def _complete(self, ids: Sequence[str], label: str) -> dict[str, tuple[float, dict[str, Any]]]:
        results = self.collector.wait_for(
            ids, self.options.timeout_s, self.workers.check_alive, label
        )
        failed = _failures(results, self.options.steps, self.options.payload_bytes)
        if failed:
            raise BenchError(f"{label}: {len(failed)} chains did not succeed: {failed[:5]}")
        return results

    def warmup(self) -> None:
        if self.options.warmup:
            ids = [self.submitter.submit()[0] for _ in range(self.options.warmup)]
            self._complete(ids, "warm-up")
            _status(f"warm-up done ({self.options.warmup} chains)")

    def throughput(self) -> dict[str, Any]:
        n, s = self.options.instances, self.options.steps
        meter = CpuMeter(
            {
                "workers": self.workers.pids(),
                "rabbitmq": pids_named("beam.smp"),
                "client": [os.getpid()],
            }
        )
        meter.start()
        began = time.time()
        ids = [self.submitter.submit()[0] for _ in range(n)]
        _status(f"throughput: {n} chains submitted in {time.time() - began:.2f}s")
        results = self._complete(ids, "throughput")
        elapsed = max(arrived for arrived, _ in results.values()) - began
        cpu = meter.stop()
        _status(f"throughput: {n * s / elapsed:.1f} tasks/s ({elapsed:.2f}s)")
        return {
            "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(n * s / elapsed, 1),
            "instances_per_s": round(n / elapsed, 1),
            "cpu_s_per_1000_tasks": {k: round(v * 1000 / (n * s), 3) for k, v in cpu.items()},
            "dispatch_latency_ms_full_load": summary(_dispatch_samples(results), (50, 99)),
        }

    def latency(self, rate: float) -> dict[str, Any]:
        """Open loop: a chain every 1/rate s on a fixed schedule, whatever is still running."""
        count = self.options.rate_instances
        interval = 1.0 / rate
        sent: dict[str, float] = {}
        worst_lag = 0.0
        began = time.monotonic()
        for index in range(count):
            delay = began + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                worst_lag = max(worst_lag, -delay)
            task_id, at = self.submitter.submit()
            sent[task_id] = at
        achieved = count / max(time.monotonic() - began, 1e-9)
        _status(
            f"latency: {count} chains at {achieved:.1f}/s (target {rate:g}/s, "
            f"worst schedule lag {worst_lag * 1000:.1f} ms)"
        )
        results = self._complete(list(sent), "latency")
        latencies = [(results[task_id][0] - at) * 1000 for task_id, at in sent.items()]
        return {
            "instance_latency_ms": summary(latencies, (50, 95, 99)),
            "dispatch_latency_ms": summary(_dispatch_samples(results), (50, 99)),
            "latency_phase": {
                "rate": rate,
                "instances": count,
                "achieved_rate": round(achieved, 1),
                "worst_schedule_lag_ms": round(worst_lag * 1000, 2),
            },
        }


def _versions(rabbitmq: str) -> dict[str, str]:
    versions = {name: metadata.version(name) for name in ("celery", "kombu", "amqp", "billiard")}
    versions["rabbitmq"] = rabbitmq
    return versions


def run(options: Options) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    _status(f"run prefix {prefix}; variant: {variant(options)}")
    # The workers build the same app from the same environment (they inherit it).
    os.environ.update(
        {
            bench_app.BROKER_URL_ENV: options.amqp_url,
            bench_app.PREFIX_ENV: prefix,
            bench_app.QUORUM_ENV: "1" if options.quorum else "0",
            bench_app.CONFIRMS_ENV: "1" if options.confirms else "0",
        }
    )
    app: Any = bench_app.make_app()
    rabbitmq = preflight(app, options.quorum)
    task_queue: str = bench_app.task_queue_name(prefix)
    exchanges = [task_queue, bench_app.event_exchange_name(prefix)]
    exchanges += bench_app.control_exchange_names(prefix)
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as logdir:
        workers = WorkerGroup(
            prefix, options.workers, options.concurrency, child_env(), Path(logdir)
        )
        collector = Collector(app)
        try:
            with app.connection_for_write(connect_timeout=CONNECT_TIMEOUT_S) as conn:
                app.amqp.queues[task_queue](conn.default_channel).declare()
            workers.start()
            ready_s = workers.wait_ready(app, STARTUP_TIMEOUT_S)
            _status(f"{options.workers} worker nodes ready in {ready_s:.1f}s")
            collector.start()
            data = "x" * options.payload_bytes
            submitter = Submitter(app, bench_app.STEP_TASK, options.steps, data)
            bench = Bench(options, submitter, collector, workers)
            bench.warmup()
            result = _result(options, bench, rabbitmq)
        finally:
            collector.stop()
            workers.stop()
            app.pool.force_close_all()
            reply_queue = str(collector.queue.name)
            delete_topology(app, [task_queue, reply_queue], exchanges)
    return result


def _result(options: Options, bench: Bench, rabbitmq: str) -> dict[str, Any]:
    full = bench.throughput()
    latency: dict[str, Any] = {"instance_latency_ms": None, "dispatch_latency_ms": None}
    if options.rate is not None:
        latency = bench.latency(options.rate)
    return {
        "name": "celery",
        "variant": variant(options),
        "instances": options.instances,
        "steps": options.steps,
        "elapsed_s": full["elapsed_s"],
        "tasks_per_s": full["tasks_per_s"],
        "instances_per_s": full["instances_per_s"],
        "instance_latency_ms": latency["instance_latency_ms"],
        "dispatch_latency_ms": latency["dispatch_latency_ms"],
        "rate": options.rate,
        "versions": _versions(rabbitmq),
        "dispatch_latency_ms_full_load": full["dispatch_latency_ms_full_load"],
        "cpu_s_per_1000_tasks": full["cpu_s_per_1000_tasks"],
        "latency_phase": latency.get("latency_phase"),
        "payload_bytes": options.payload_bytes,
        "workers": options.workers,
        "concurrency": options.concurrency,
    }


def _terminate(signum: int, _frame: object) -> None:
    raise BenchError(f"terminated by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # so the workers are stopped and the queue deleted
    try:
        result = run(options)
    except BenchError as exc:
        _status(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _status("interrupted")
        return 130
    except Exception as exc:  # a broker or Celery error mid-run: one clear line, no traceback
        _status(f"failed: {type(exc).__module__}.{type(exc).__name__}: {exc}")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
