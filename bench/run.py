"""The benchmark (`./dev bench`): the fixed workload end to end, on our engine and optionally
on peers.

Workload: N instances of a process of S no-op external tasks, one after another (the default
shape) or all at once between a parallel fork and join (`--shape parallel`, bench/shapes.py);
durable queues, persistent messages, publisher confirms, synchronous_commit on. Phases:
1. warm-up (a few hundred instances);
2. throughput: start N instances as fast as possible; first start to last completion;
3. latency: open-loop arrivals at a fixed rate (default half the measured maximum).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench import child_env, shapes
from bench.against import OtherSide, this_checkout
from bench.breakdown import Entry, TaskTimes, breakdown, worker_entries
from bench.floor import measure_floors
from bench.peers import PEERS
from bench.procstats import CpuMeter, PeakRss, rss_mb
from bench.queries import query
from bench.stats import dispatch_samples, summary
from orchestrator import aio
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.store.migrate import ensure_database
from orchestrator.subprocesses import spawn, stop

WORKER_SPEC = "bench.noop_worker:worker"
CODE = this_checkout()


@dataclass(frozen=True)
class BenchOptions:
    instances: int = 5000
    steps: int = 3
    worker_processes: int = 2
    engines: int = 1
    payload_bytes: int = 0
    rate: float | None = None  # instances/s of the latency phase; default half the maximum
    rate_seconds: float = 5.0
    warmup: int = 300
    peers: tuple[str, ...] = ()
    timeout_s: float = 600.0
    #: With a backlog of this many instances queued first, compare the drain rate.
    backlog: int = 0
    #: Samples of each part of the latency floor (see bench/floor.py).
    floor_samples: int = 200
    #: Another checkout of the project to run the same workload at the same time (against.py).
    against: str | None = None
    #: The process each instance runs (bench/shapes.py): S tasks in a row, or S at once.
    shape: str = shapes.SEQUENTIAL


@dataclass
class Run:
    """One benchmark run: its database, namespace, processes and files."""

    settings: Settings
    options: BenchOptions
    workdir: Path
    engines: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: Instances started by every phase waited for so far.
    started: int = 0

    @property
    def topics(self) -> list[str]:
        return shapes.topics(self.options.steps)

    def definition(self) -> str:
        return orjson.dumps(shapes.definition(self.options.shape, self.options.steps)).decode()

    def _env(self, **extra: str) -> dict[str, str]:
        return child_env(
            {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")},
            ORCH_DATABASE_URL=self.settings.database_url,
            ORCH_AMQP_URL=self.settings.amqp_url,
            ORCH_NAMESPACE=self.settings.namespace,
            **extra,
        )

    def _spawn(self, log_name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        level = os.environ.get("ORCH_BENCH_LOG_LEVEL", "WARNING")
        return spawn(
            [sys.executable, "-m", "orchestrator", "--log-level", level, *args],
            output=self.workdir / log_name,
            env=self._env(**env),
        )

    def start_processes(self) -> None:
        for index in range(self.options.engines):
            self.engines.append(self._spawn(f"engine-{index}.log", "engine"))
        self.start_workers()

    def start_workers(self, label: str = "") -> None:
        for index in range(self.options.worker_processes):
            self.workers.append(
                self._spawn(
                    f"worker-{label}{index}.log",
                    "worker",
                    WORKER_SPEC,
                    BENCH_TOPICS=",".join(self.topics),
                    BENCH_LATENCY_FILE=str(self.workdir / f"latency-{label}{index}.txt"),
                    BENCH_PAYLOAD_BYTES=str(self.options.payload_bytes),
                )
            )

    def stop_workers(self) -> None:
        stop(self.workers)
        self.workers = []

    def stop_processes(self) -> None:
        stop([*self.workers, *self.engines])

    def check_alive(self) -> None:
        for proc in [*self.engines, *self.workers]:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(
                    f"a benchmark process exited ({proc.args!r}); logs in {self.workdir}"
                )

    def dispatch_latencies(self, since_ms: float, until_ms: float) -> list[float]:
        return dispatch_samples(self.workdir.glob("latency-*.txt"), since_ms, until_ms)

    def worker_entries(self) -> dict[str, list[Entry]]:
        return worker_entries(self.workdir.glob("latency-*.txt"))


async def _completed_so_far(pool: asyncpg.Pool) -> int:
    """Instances completed in this run's database, from the engines' own counters: a poll
    that costs nothing, where counting the instances themselves every few milliseconds
    competed with the engine for the database (and slowed the drain it measured)."""
    return int(await pool.fetchval(query("counter_total"), "instances_completed"))


async def _wait_completed(run: Run, pool: asyncpg.Pool, ids: list[str], deadline: float) -> None:
    """Wait until the instances in `ids` are complete. Each phase waits for all it started
    before the next starts, so the counter reaching the count of every instance started
    so far means all of these are done."""
    run.started += len(ids)
    target = run.started
    while True:
        done = await _completed_so_far(pool)
        if done >= target:
            return
        run.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark timed out: {done}/{target} completed")
        await asyncio.sleep(0.02)


async def _start_all(
    client: Client, count: int, payload: dict[str, Any], sent: dict[str, float] | None = None
) -> list[str]:
    """Start `count` instances as fast as the client sends; note in `sent` (if given) when
    each start call was made, by instance id."""

    async def one() -> str:
        at = time.time()
        started = await client.start("bench", variables=payload, timeout=60)
        if sent is not None:
            sent[started.instance_id] = at
        return started.instance_id

    ids: list[str] = []
    for chunk in range(0, count, 1000):
        ids += await asyncio.gather(*(one() for _ in range(chunk, min(chunk + 1000, count))))
    return ids


async def _ended_at(pool: asyncpg.Pool, ids: list[str]) -> dict[str, float]:
    """When each instance completed (epoch seconds), as the database recorded it."""
    rows = await pool.fetch(query("instances_ended"), ids)
    return {str(row["id"]): float(row["ended"]) for row in rows}


async def _task_times(pool: asyncpg.Pool, ids: list[str]) -> list[TaskTimes]:
    """When each task's creating and completing transactions began (see bench/breakdown.py)."""
    rows = await pool.fetch(query("task_times"), ids)
    return [
        TaskTimes(str(r["instance_id"]), str(r["id"]), float(r["created"]), float(r["closed"]))
        for r in rows
    ]


def _per_1000_tasks(cpu_s: dict[str, float], tasks: int) -> dict[str, float]:
    return {group: round(seconds * 1000 / tasks, 3) for group, seconds in cpu_s.items()}


def _latencies_ms(sent: dict[str, float], ended: dict[str, float]) -> list[float]:
    return [(ended[instance] - at) * 1000 for instance, at in sent.items()]


async def _throughput(run: Run, client: Client, pool: asyncpg.Pool) -> dict[str, Any]:
    options = run.options
    payload = {"payload": "x" * options.payload_bytes} if options.payload_bytes else {}
    meter = CpuMeter.for_run([e.pid for e in run.engines], [w.pid for w in run.workers])
    meter.start()
    began_wall = time.time()
    began = time.monotonic()
    sent: dict[str, float] = {}
    ids = await _start_all(client, options.instances, payload, sent)
    await _wait_completed(run, pool, ids, began + options.timeout_s)
    cpu = meter.stop()
    ended = await _ended_at(pool, ids)
    last_end = max(ended.values())
    elapsed = last_end - began_wall
    tasks = options.instances * options.steps
    return {
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(tasks / elapsed, 1),
        "instances_per_s": round(options.instances / elapsed, 1),
        # Every instance started as fast as the client sends: mostly time spent queued.
        "instance_latency_ms_full_load": summary(_latencies_ms(sent, ended)),
        "cpu_s_per_1000_tasks": _per_1000_tasks(cpu, tasks),
        "_window_ms": (began_wall * 1000, last_end * 1000),
    }


async def _latency(run: Run, client: Client, pool: asyncpg.Pool, rate: float) -> dict[str, Any]:
    """Open loop: a start every 1/rate seconds, whether or not earlier ones finished."""
    count = max(1, int(rate * run.options.rate_seconds))
    sent: dict[str, float] = {}
    interval = 1.0 / rate
    began = time.monotonic()
    window_start = time.time() * 1000

    meter = CpuMeter.for_run([e.pid for e in run.engines], [w.pid for w in run.workers])
    meter.groups["bench client"] = [os.getpid()]
    meter.start()
    pending = []
    for index in range(count):
        delay = began + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(_start_all(client, 1, {}, sent)))
    await asyncio.gather(*pending)
    ids = list(sent)
    await _wait_completed(run, pool, ids, time.monotonic() + run.options.timeout_s)
    latencies = _latencies_ms(sent, await _ended_at(pool, ids))
    elapsed = time.monotonic() - began
    cpu = meter.stop()
    task_times = await _task_times(pool, ids)
    tasks = count * run.options.steps
    return {
        "rate": round(rate, 1),
        "instances": count,
        "achieved_rate": round(count / elapsed, 1),
        "instance_latency_ms": summary(latencies),
        "cpu_s_per_1000_tasks": _per_1000_tasks(cpu, tasks),
        # How busy these processes kept the machine: latency under load is mostly queueing
        # for a core once this nears 100.
        "machine_busy_pct": round(sum(cpu.values()) / (elapsed * (os.cpu_count() or 1)) * 100),
        "_window_ms": (window_start, time.time() * 1000),
        "_sent_ms": {instance: at * 1000 for instance, at in sent.items()},
        "_task_times": task_times,
    }


async def _bench_database(settings: Settings, tag: str) -> tuple[str, str]:
    """A fresh database on the configured server, so a run never touches real data."""
    base = settings.database_url.rsplit("/", 1)[0]
    name = f"orch_bench_{tag}"
    url = f"{base}/{name}"
    await ensure_database(url)
    return url, name


async def _drop_database(settings: Settings, name: str) -> None:
    base = settings.database_url.rsplit("/", 1)[0]
    conn = await asyncpg.connect(f"{base}/postgres", timeout=5)
    try:
        await conn.execute(query("drop_database", database=name))
    finally:
        await conn.close()


async def _delete_topology(settings: Settings, topics: list[str]) -> None:
    import aio_pika

    from orchestrator.broker.topology import Topology

    topology = Topology(settings.namespace)
    connection = await aio_pika.connect(settings.amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        queues = [topology.reports_queue, topology.commands_queue, topology.dead_queue]
        for queue in queues + [topology.task_queue(t) for t in topics]:
            await channel.queue_delete(queue)
        for exchange in (
            topology.tasks_exchange,
            topology.reports_exchange,
            topology.commands_exchange,
            topology.dead_exchange,
        ):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def run_ours(settings: Settings, options: BenchOptions, workdir: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    url, db_name = await _bench_database(settings, tag)
    run = Run(replace(settings, database_url=url, namespace=f"bench{tag}"), options, workdir)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        run.start_processes()
        peak = PeakRss([e.pid for e in run.engines])
        async with peak.sampling(), Client(run.settings, name="bench") as client:
            await client.deploy(run.definition())
            warm = await _start_all(client, options.warmup, {})
            await _wait_completed(run, pool, warm, time.monotonic() + 60)
            _status(f"warm-up done ({options.warmup} instances); throughput phase...")
            full = await _throughput(run, client, pool)
            _status(f"{full['tasks_per_s']} tasks/s; latency phase...")
            rate = options.rate or max(1.0, full["instances_per_s"] / 2)
            half = await _latency(run, client, pool, rate)
            _status("measuring the floor (broker hop, commit)...")
            floors = await measure_floors(
                run.settings.amqp_url,
                url,
                f"{run.settings.namespace}.floor",
                steps=shapes.path_steps(options.shape, options.steps),
                samples=options.floor_samples,
            )
            backlog = await _backlog(run, client, pool, full) if options.backlog else None
    finally:
        run.stop_processes()
        await pool.close()
        await _drop_database(settings, db_name)
        await _delete_topology(run.settings, run.topics)
    full_window = full.pop("_window_ms")
    half_window = half.pop("_window_ms")
    # The workers wrote their files as they exited.
    half["breakdown"] = breakdown(
        half.pop("_sent_ms"),
        half.pop("_task_times"),
        run.worker_entries(),
        parallel=options.shape == shapes.PARALLEL,
    )
    # The default shape's result is what it was before shapes existed (no key): only another
    # shape is labelled.
    shape = {} if options.shape == shapes.SEQUENTIAL else {"shape": options.shape}
    return {
        "name": "orchestrator",
        "variant": f"{options.engines} engine(s), {options.worker_processes} worker processes, "
        "confirms, durable, "
        "synchronous_commit on",
        "instances": options.instances,
        "steps": options.steps,
        **shape,
        **full,
        "dispatch_latency_ms_full_load": summary(run.dispatch_latencies(*full_window), (50, 99)),
        "dispatch_latency_ms": summary(run.dispatch_latencies(*half_window), (50, 99)),
        "instance_latency_ms": half["instance_latency_ms"],
        "latency_phase": {k: v for k, v in half.items() if k != "instance_latency_ms"},
        # Sampled every 50 ms from warm-up to the end (see procstats.PeakRss).
        "engine_peak_rss_mb": peak.mb,
        "floor_ms": {name: floor.as_dict() for name, floor in floors.items()},
        "backlog": backlog,
        # Which checkout this was (a comparison with --against checks it).
        "code": str(CODE),
    }


async def _backlog(
    run: Run, client: Client, pool: asyncpg.Pool, full: dict[str, Any]
) -> dict[str, Any]:
    """Queue a large backlog with no worker running, then drain it: the rate must not
    collapse (compared with the throughput phase), and the engine must not grow with it."""
    count = run.options.backlog
    run.stop_workers()
    _status(f"backlog: starting {count} instances with no worker running...")
    ids = await _start_all(client, count, {})
    deadline = time.monotonic() + run.options.timeout_s
    while await pool.fetchval(query("outbox_left")) > 0:
        if time.monotonic() > deadline:
            raise SystemExit("backlog: the outbox did not drain")
        await asyncio.sleep(0.2)
    rss_waiting = max((rss_mb(e.pid) or 0.0 for e in run.engines), default=None)
    _status(f"backlog queued (engine RSS {rss_waiting} MB); draining...")
    began = time.time()
    run.start_workers(label="b")
    await _wait_completed(run, pool, ids, time.monotonic() + run.options.timeout_s)
    last_end = await pool.fetchval(query("last_instance_ended"), ids)
    elapsed = float(last_end) - began
    tasks_per_s = count * run.options.steps / elapsed
    # A backlog is not a lost message: its tasks must not be sent again (dispatch deadline).
    redispatched = await pool.fetchval(query("counter_total"), "tasks_redispatched")
    return {
        "instances": count,
        "tasks_redispatched": int(redispatched),
        "engine_rss_mb_while_waiting": rss_waiting,
        "drain_tasks_per_s": round(tasks_per_s, 1),
        "ratio_to_empty_queue": round(tasks_per_s / full["tasks_per_s"], 2),
    }


def _status(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_peer(
    name: str, settings: Settings, options: BenchOptions, rate: float, workdir: Path
) -> dict[str, Any]:
    """Run one peer's benchmark in its own process; its last stdout line is its JSON."""
    module, services, extra = PEERS[name]
    urls = {
        "amqp": ("--amqp-url", settings.amqp_url),
        "database": ("--database-url", settings.database_url),
    }
    args = [
        sys.executable,
        "-m",
        module,
        *(part for service in services for part in urls[service]),
        "--instances",
        str(options.instances),
        "--steps",
        str(options.steps),
        "--workers",
        str(options.worker_processes),
        "--payload-bytes",
        str(options.payload_bytes),
        "--rate",
        f"{rate:.1f}",
        "--rate-instances",
        str(max(1, int(rate * options.rate_seconds))),
        *extra,
    ]
    _status(f"peer {name}...")
    output, errors = workdir / f"peer-{name}.out", workdir / f"peer-{name}.err"
    proc = spawn(args, output=output, errors=errors, env=child_env())
    try:
        code = proc.wait(timeout=options.timeout_s)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {options.timeout_s}s"}
    finally:
        stop([proc])  # a timed-out peer cleans up on SIGTERM; one that ended has nothing to do
    lines = output.read_text(errors="replace").strip().splitlines()
    if code != 0 or not lines:
        return {"name": name, "error": f"exit {code}: {errors.read_text(errors='replace')[-2000:]}"}
    result: dict[str, Any] = orjson.loads(lines[-1])
    result["name"] = name
    return result


def bench(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    other = OtherSide.start(options.against, options, workdir) if options.against else None
    try:
        ours = aio.run(run_ours(settings, options, workdir))
    except BaseException:  # our side failed: the other side must not run on alone
        if other is not None:
            other.stop()
        raise
    result: dict[str, Any] = {**ours, "machine": _machine()}
    if other is not None:
        theirs = other.result(options.timeout_s * 2)
        result["against"] = _checked(theirs, other.path, options.shape)
    if options.peers:
        rate = ours["latency_phase"]["rate"]
        result["peers"] = {
            name: run_peer(name, settings, options, rate, workdir) for name in options.peers
        }
    return result


def _checked(theirs: dict[str, Any], path: Path, shape: str = shapes.SEQUENTIAL) -> dict[str, Any]:
    """An error instead of figures if the other side did not run the other checkout's code,
    or not the same shape (a result with no shape is the sequential one: older benchmarks)."""
    if "error" in theirs:
        return theirs
    code = theirs.get("code")
    if code is not None and Path(code) != path:
        return {"name": theirs["name"], "error": f"it ran the code in {code}, not {path}"}
    ran = theirs.get("shape", shapes.SEQUENTIAL)
    if ran != shape:
        return {"name": theirs["name"], "error": f"it ran the {ran} shape, not the {shape} one"}
    return theirs


def _machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
    }
