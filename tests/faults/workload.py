"""What every fault scenario shares: a process of a few steps, engines and recording workers as
real processes, instances started while the faults happen, and the final accounting.

The process has one of four shapes (`configure(shape=...)`):

- sequential (the default): start, 3 service tasks one after another, end;
- parallel: start, a parallel gateway forking into 3 service tasks, a parallel gateway joining
  them, one more service task after the join, end: 4 tasks per instance, and one join that
  must fire exactly once however the branches' completions race across engines;
- timer: start, a service task, a timer catch event due at the instance's `dueAt` variable
  (an ISO date the scenario chooses per instance, `due_in`), a service task, end: 2 tasks
  per instance, and one timer that must fire exactly once whichever engine fires it;
- message: start, a service task, a message catch event (`paid`, correlation key the
  instance's own `orderId`), a service task, end: 2 tasks per instance, and one message that
  must take effect exactly once, however often it was published or read. The scenario
  publishes the messages (`message_body`, `published`).

A scenario:

    workload.configure("worker kill -9", count=250)
    workload.engine()
    await workload.deploy()
    workers = [workload.worker() for _ in range(3)]
    workload.start(rate=35)                  # instances keep arriving while faults happen
    for _ in range(5):
        await workload.progressed(by=80)     # work is in flight
        ...inject a fault...; workload.fault("kill -9 worker")
    verdict = await workload.finish()        # wait, account, record the row, assert

A wait's row is also checked in `finish`: a timer's or a message's history line once per
instance and one task after the wait; for messages the ledger besides (one row per message
id, correlated to the instance of its orderId, every repeat published or read again counted
as a duplicate, nothing dead-lettered).

`finish` waits for every instance, stops the workers so nothing more is reported, and then
checks the engine's view (every instance completed once, each task completed once in
`history`, each join fired once and the task after it made once, the outbox drained), the
workers' view (each task's effect applied once, and once per instance and step) and the
ledger: the engine's counters agree with `report_ledger`, every completion the engine
received was applied once or recorded as a repeat, and it received every completion the
workers sent (counted on a tap queue bound next to the engine's).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import orjson

from orchestrator.broker.topology import REPORT_ROUTING_KEY, Topology, declare_core
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.subprocesses import stop
from tests.faults.report import ROWS, Row
from tests.support.fault_workers import SCHEMA, delay_of, recorder_name
from tests.support.harness import Processes, sequential_process, wait_until

#: The process shapes of a workload.
SEQUENTIAL = "sequential"
PARALLEL = "parallel"
TIMER = "timer"
MESSAGE = "message"
SHAPES = (SEQUENTIAL, PARALLEL, TIMER, MESSAGE)
#: The wait of the timer and message shapes (between step1 and step2), and its history line.
WAIT_NODE = "wait"
WAIT_HISTORY = {TIMER: "timer_fired", MESSAGE: "message_correlated"}
#: The engine's counter of those (it counts the firing transactions alone, as the history).
WAIT_COUNTER = {TIMER: "timers_fired", MESSAGE: "messages_correlated"}
#: The task after the wait.
AFTER_WAIT = "step2"
#: The message the message shape waits for; its variable (the instance's `i`).
MESSAGE_NAME = "paid"
MESSAGE_VARIABLE = "paid"
#: Service tasks of the sequential process, and branches of the parallel one.
STEPS = 3
#: The parallel process's task after its join (its steps are step1..step3 in the branches).
AFTER_JOIN = f"step{STEPS + 1}"
#: Message ids of reports a test injects as malformed: the tap does not count them.
MALFORMED_PREFIX = "malformed-"
FAULT_WORKER = "tests.support.fault_workers:worker"
#: Errors of a database that is being restarted: a poll treats them as "not yet".
DATABASE_AWAY = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def tolerant(check: Callable[[], Awaitable[Any]]) -> bool:
    """A poll that treats the database being away as 'not yet'."""
    try:
        return bool(await check())
    except DATABASE_AWAY:
        return False


async def exited(proc: subprocess.Popen[bytes], *, timeout: float = 30) -> int:
    """Wait (without blocking the event loop, which may run a proxy) for a process to end."""

    async def ended() -> bool:
        return proc.poll() is not None

    await wait_until(ended, timeout=timeout, what=f"process {proc.pid} to exit")
    return proc.returncode


@dataclass
class Verdict:
    """What the scenario left behind, from the engine's, the workers' and the ledger's view."""

    instances: int
    states: dict[str, int]
    tasks: int
    #: Tasks with more than one task_completed row in history.
    completed_twice: int
    #: (instance, step) pairs the engine dispatched as more than one task.
    dispatched_twice: int
    #: (instance, step) pairs whose effect was applied under more than one idempotency key.
    effects_twice: int
    #: Tasks with no effect, or more than one run that applied it.
    effects_wrong: int
    runs: int
    repeat_runs: int
    #: Runs that never finished (their worker was killed, say).
    interrupted_runs: int
    ledger_duplicates: int
    ledger_conflicts: int
    counters: dict[str, int]
    #: Completed instances whose variables are not their own start variable plus each
    #: step's result (a conflicting completion applied, say).
    variables_wrong: int
    #: Completed reports seen on the tap: what the workers (and the test) sent.
    completions_sent: int
    outbox_left: int
    #: `joined` history rows in all (the parallel shape: one per instance).
    joins: int = 0
    #: Instances whose join fired other than exactly once (never, for the sequential shape).
    joins_not_once: int = 0
    #: Instances whose join fired more than once.
    joined_twice: int = 0
    #: Instances without exactly one task for the step after the join (parallel shape).
    after_join_wrong: int = 0
    #: Timer and message shapes: `timer_fired` or `message_correlated` history rows in all,
    #: instances with other than one, with more than one, and without exactly one task after
    #: the wait.
    waits: int = 0
    waits_not_once: int = 0
    waited_twice: int = 0
    after_wait_wrong: int = 0
    #: Timers of the workload's instances still in `timers` (fired ones are deleted).
    timers_left: int = 0
    #: Message shape: the ledger's rows of the workload's message ids, those not `correlated`
    #: to the instance whose orderId they carry, and their repeats (`duplicates`).
    ledger_messages: int = 0
    messages_misplaced: int = 0
    message_duplicates: int = 0
    #: Copies the scenario published beyond the first of each message id.
    messages_republished: int = 0
    subscriptions_left: int = 0

    @property
    def completed(self) -> int:
        return self.states.get("completed", 0)

    @property
    def lost(self) -> int:
        return self.instances - self.completed

    @property
    def applied_twice(self) -> int:
        return (
            self.completed_twice
            + self.dispatched_twice
            + self.effects_twice
            + self.joined_twice
            + self.waited_twice
        )

    @property
    def ledger_repeats(self) -> int:
        return self.ledger_duplicates + self.ledger_conflicts

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)


@dataclass
class Workload:
    settings: Settings
    db: asyncpg.Pool
    processes: Processes
    topics: set[str]
    nodeid: str
    name: str = ""
    count: int = 0
    lock: str = "2s"
    #: Each task's handler takes up to this long (FAULT_MAX_DELAY_MS of the workers)...
    max_delay_ms: int = 150
    #: ...and at least this long (FAULT_MIN_DELAY_MS).
    min_delay_ms: int = 0
    shape: str = SEQUENTIAL
    #: Timer shape: when instance i's timer is due, in seconds after `start()`.
    due_in: Callable[[int], float] | None = None
    #: Message shape: copies of each message id the scenario published (`published`).
    messages_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    key: str = ""
    step_topics: list[str] = field(default_factory=list)
    engines: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    began: float = 0.0
    #: The wall clock at `began` (a timer's due date is a date).
    began_wall: float = 0.0
    _starting: asyncio.Task[list[str]] | None = None
    _runs_mark: int = 0
    _completions_sent: int = -1
    #: Processes the scenario killed or crashed on purpose.
    _killed: set[int] = field(default_factory=set)

    @property
    def tap_queue(self) -> str:
        return f"{self.settings.namespace}.test-tap"

    def configure(
        self,
        name: str,
        *,
        count: int,
        lock: str = "2s",
        max_delay_ms: int = 150,
        min_delay_ms: int = 0,
        shape: str = SEQUENTIAL,
        due_in: Callable[[int], float] | None = None,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}")
        if (shape == TIMER) != (due_in is not None):
            raise ValueError("the timer shape, and only it, takes due_in")
        self.name, self.count, self.lock, self.shape = name, count, lock, shape
        self.due_in = due_in
        self.max_delay_ms, self.min_delay_ms = max_delay_ms, min_delay_ms
        self.key = f"faults-{uuid.uuid4().hex[:6]}"
        # One topic per task of an instance: the parallel shape's 4th is the one after the join.
        self.step_topics = [f"{self.key}-step{n}" for n in range(1, self.tasks_per_instance + 1)]
        self.topics.update(self.step_topics)

    @property
    def tasks_per_instance(self) -> int:
        return {PARALLEL: STEPS + 1, TIMER: 2, MESSAGE: 2}.get(self.shape, STEPS)

    @property
    def joins_per_instance(self) -> int:
        return 1 if self.shape == PARALLEL else 0

    def definition(self) -> str:
        if self.shape == PARALLEL:
            return fork_join_process(self.key, self.step_topics, lock=self.lock)
        if self.shape == TIMER:
            timer = {"kind": "date", "value": "=dueAt"}
            return waiting_process(self.key, self.step_topics, {"timer": timer}, lock=self.lock)
        if self.shape == MESSAGE:
            message = {"name": MESSAGE_NAME, "correlation_key": "=orderId"}
            return waiting_process(self.key, self.step_topics, {"message": message}, lock=self.lock)
        return sequential_process(self.key, self.step_topics, lock=self.lock)

    def variables(self, i: int) -> dict[str, Any]:
        """Instance i's start variables."""
        variables: dict[str, Any] = {"i": i}
        if self.due_in is not None:
            due = datetime.fromtimestamp(self.began_wall + self.due_in(i), UTC)
            variables["dueAt"] = due.isoformat()
        if self.shape == MESSAGE:
            variables["orderId"] = self.order_id(i)
        return variables

    # --- messages (the message shape) ----------------------------------------------------

    def order_id(self, i: int) -> str:
        return f"{self.key}-order-{i}"

    def message_id(self, i: int) -> str:
        return f"{self.key}-paid-{i}"

    def message_body(self, i: int) -> bytes:
        """Instance i's message, as any AMQP producer publishes it to `<ns>.messages`."""
        return orjson.dumps(
            {
                "v": 1,
                "name": MESSAGE_NAME,
                "correlation_key": self.order_id(i),
                "variables": {MESSAGE_VARIABLE: i},
                "message_id": self.message_id(i),
            }
        )

    def published(self, i: int) -> None:
        """The scenario published instance i's message (once more)."""
        self.messages_sent[self.message_id(i)] += 1

    # --- processes ---------------------------------------------------------------------

    def engine(self, **env: str) -> subprocess.Popen[bytes]:
        proc = self.processes.engine(**env)
        self.engines.append(proc)
        return proc

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        proc = self.processes.worker(
            FAULT_WORKER,
            FAULT_TOPICS=",".join(self.step_topics),
            FAULT_DB_URL=self.settings.database_url,
            FAULT_MAX_DELAY_MS=str(self.max_delay_ms),
            FAULT_MIN_DELAY_MS=str(self.min_delay_ms),
            **env,
        )
        self.workers.append(proc)
        return proc

    def live(self, procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
        return [proc for proc in procs if proc.poll() is None]

    def fault(self, kind: str, times: int = 1) -> None:
        self.faults[kind] += times

    async def kill(self, proc: subprocess.Popen[bytes], kind: str) -> None:
        """kill -9, wait for the process to be gone, count the fault."""
        proc.kill()
        await exited(proc)
        self.died(proc, kind)

    def died(self, proc: subprocess.Popen[bytes], kind: str) -> None:
        """A process that ended on purpose (killed, or at a crash point)."""
        self._killed.add(proc.pid)
        self.fault(kind)

    # --- setup and load ----------------------------------------------------------------

    async def deploy(self) -> None:
        """Create the recording tables, bind the tap and deploy the process (an engine must
        be running to answer the deploy)."""
        await self.db.execute(SCHEMA)
        await self._bind_tap()
        async with Client(self.settings, name="fault-deployer") as client:
            await client.deploy(self.definition())

    async def _bind_tap(self) -> None:
        topology = Topology(self.settings.namespace)
        connection = await aio_pika.connect(self.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await declare_core(channel, topology)
            queue = await channel.declare_queue(self.tap_queue, durable=True)
            await queue.bind(topology.reports_exchange, routing_key=REPORT_ROUTING_KEY)

    def start(self, *, rate: float | None = None) -> None:
        """Start `count` instances in the background: `rate` a second, or all at once."""
        self.began = time.monotonic()
        self.began_wall = time.time()
        self._starting = asyncio.create_task(self._start_all(rate))

    async def _start_all(self, rate: float | None) -> list[str]:
        async with Client(self.settings, name="fault-starter") as client:

            async def one(i: int) -> str:
                started = await client.start(
                    self.key, idempotency_key=f"{self.key}-{i}", variables=self.variables(i)
                )
                return started.instance_id

            if rate is None:
                return await asyncio.gather(*(one(i) for i in range(self.count)))
            pending = []
            loop = asyncio.get_running_loop()
            for i in range(self.count):
                due = self.began + i / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                pending.append(asyncio.create_task(one(i)))
            return await asyncio.gather(*pending)

    async def started(self) -> list[str]:
        if self._starting is None:
            raise RuntimeError("start() was not called")
        return await self._starting

    async def cancel(self) -> None:
        """Stop starting instances (a scenario that failed half way)."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting

    async def consumers(self) -> list[int]:
        """Consumers of each task queue of the workload, as the broker counts them."""
        topology = Topology(self.settings.namespace)
        connection = await aio_pika.connect(self.settings.amqp_url)
        counts = []
        async with connection:
            channel = await connection.channel()
            for topic in self.step_topics:
                queue = await channel.declare_queue(topology.task_queue(topic), passive=True)
                counts.append(queue.declaration_result.consumer_count or 0)
        return counts

    async def engines_consuming(self, engines: int, *, timeout: float = 30) -> None:
        """Wait until `engines` engines consume the reports queue (they finished starting)."""
        topology = Topology(self.settings.namespace)

        async def ready() -> bool:
            connection = await aio_pika.connect(self.settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(topology.reports_queue, passive=True)
                return queue.declaration_result.consumer_count == engines

        await wait_until(ready, timeout=timeout, what=f"{engines} engines to consume reports")

    async def consuming(self, workers: int, *, timeout: float = 30) -> None:
        """Wait until `workers` workers consume every task queue (they finished starting)."""

        async def ready() -> bool:
            return await self.consumers() == [workers] * len(self.step_topics)

        await wait_until(ready, timeout=timeout, what=f"{workers} workers to consume")

    async def runs(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM fault_runs"))

    async def progressed(self, *, by: int, timeout: float = 60) -> None:
        """Wait until `by` more handler runs began since the last call: work is in flight."""
        target = self._runs_mark + by

        async def far_enough() -> bool:
            return await self.runs() >= target

        await wait_until(
            lambda: tolerant(far_enough),
            timeout=timeout,
            what=f"{target} handler runs\n{self.processes.logs()}",
        )
        self._runs_mark = target

    async def in_parallel(self) -> tuple[int, int]:
        """(active instances in their branches, those with a token parked at the join): a
        parallel workload's instances mid-way."""
        row = await self.db.fetchrow(
            """
            SELECT count(*) FILTER (WHERE jsonb_array_length(tokens) > 1) AS branching,
                   count(*) FILTER (WHERE EXISTS (
                       SELECT 1 FROM jsonb_array_elements(tokens) token
                       WHERE token->>1 = 'join')) AS parked
            FROM process_instances WHERE process_key = $1 AND status = 'active'
            """,
            self.key,
        )
        assert row is not None
        return int(row["branching"]), int(row["parked"])

    async def amid_joins(
        self, *, branching: int, parked: int, timeout: float = 20
    ) -> tuple[int, int]:
        """Wait until at least `branching` instances run in their branches and `parked` of
        them have a token waiting at their join; returns what `in_parallel` saw."""
        seen = (0, 0)

        async def enough() -> bool:
            nonlocal seen
            seen = await self.in_parallel()
            return seen[0] >= branching and seen[1] >= parked

        try:
            await wait_until(
                lambda: tolerant(enough),
                timeout=timeout,
                what=f"{branching} instances in branches, {parked} parked at the join",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc} (last seen {seen})\n{self.processes.logs()}") from None
        return seen

    async def timers_due(self) -> tuple[int, int]:
        """(timers of the workload due now and not yet fired, timers still to fire)."""
        row = await self.db.fetchrow(
            """
            SELECT count(*) FILTER (WHERE t.due_at <= clock_timestamp()) AS due,
                   count(*) AS waiting
            FROM timers t JOIN process_instances p ON p.id = t.instance_id
            WHERE p.process_key = $1
            """,
            self.key,
        )
        assert row is not None
        return int(row["due"]), int(row["waiting"])

    async def firing_timers(self) -> set[int]:
        """The pids of engines inside a timer pass right now: their transaction holds the
        due rows of `timers` (FOR UPDATE: a row share lock on the table) and has not ended."""
        rows = await self.db.fetch(
            """
            SELECT DISTINCT a.application_name FROM pg_locks l
            JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.relation = 'timers'::regclass AND l.mode = 'RowShareLock' AND l.granted
              AND a.datname = current_database()
            """
        )
        pids = set()
        for row in rows:
            tail = str(row["application_name"]).rsplit("-", 1)[-1]
            if tail.isdigit():
                pids.add(int(tail))
        return pids

    async def waiting_for_messages(self) -> set[int]:
        """The instances (by `i`) with a subscription open for their message."""
        rows = await self.db.fetch(
            "SELECT correlation_key FROM message_subscriptions WHERE name = $1 "
            "AND correlation_key LIKE $2",
            MESSAGE_NAME,
            f"{self.key}-order-%",
        )
        return {int(row["correlation_key"].rsplit("-", 1)[1]) for row in rows}

    async def messages_in_flight(self) -> tuple[int, int]:
        """(the workload's messages buffered, its instances waiting for theirs)."""
        row = await self.db.fetchrow(
            """
            SELECT (SELECT count(*) FROM messages WHERE status = 'buffered'
                    AND message_id LIKE $2) AS buffered,
                   (SELECT count(*) FROM message_subscriptions WHERE name = $1
                    AND correlation_key LIKE $3) AS waiting
            """,
            MESSAGE_NAME,
            f"{self.key}-paid-%",
            f"{self.key}-order-%",
        )
        assert row is not None
        return int(row["buffered"]), int(row["waiting"])

    async def busy_worker(
        self, candidates: list[subprocess.Popen[bytes]], *, left_s: float = 0.04
    ) -> int:
        """The pid of the candidate with the most handler runs in flight that still have at
        least `left_s` to go (each task's duration is known from its key); waits for one.

        On a loaded machine runs outlast their nominal duration (the handler's last statement
        waits for a core), so few look like they have `left_s` to go. After a second without
        one, a worker with several runs still unfinished will do: they cannot all finish in
        the moment between this query and the kill."""
        pids = [proc.pid for proc in candidates if proc.poll() is None]
        found: list[int] = []
        began = time.monotonic()

        async def busy() -> bool:
            rows = await self.db.fetch(
                "SELECT worker_pid, idempotency_key, "
                "extract(epoch FROM clock_timestamp() - started_at)::float AS age "
                "FROM fault_runs WHERE finished_at IS NULL AND worker_pid = ANY($1)",
                pids,
            )
            long_runs = collections.Counter(
                row["worker_pid"]
                for row in rows
                if delay_of(row["idempotency_key"], self.max_delay_ms, self.min_delay_ms)
                - row["age"]
                >= left_s
            )
            found[:] = [pid for pid, _ in long_runs.most_common(1)]
            if not found and time.monotonic() - began > 1.0:
                unfinished = collections.Counter(row["worker_pid"] for row in rows)
                found[:] = [pid for pid, n in unfinished.most_common(1) if n >= 3]
            return bool(found)

        try:
            await wait_until(busy, timeout=30, what=f"a worker of {pids} with a task in hand")
        except AssertionError as exc:
            state = await self.db.fetch(
                "SELECT worker_pid, count(*) AS runs, count(*) FILTER (WHERE finished_at IS NULL) "
                "AS unfinished, max(started_at) AS last FROM fault_runs GROUP BY worker_pid"
            )
            runs = [dict(row) for row in state]
            done = await self._all_completed()
            logs = self.processes.logs()
            raise AssertionError(f"{exc}\nall completed: {done}, runs: {runs}\n{logs}") from None
        return found[0]

    async def unfinished_runs(self, pid: int) -> int:
        """Runs a (killed) worker left unfinished. Counted once its database connections are
        gone: a statement it sent just before the kill can still commit until then, and a
        run it finished that way is not interrupted."""

        async def connections_gone() -> bool:
            left = await self.db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                recorder_name(pid),
            )
            return int(left) == 0

        await wait_until(connections_gone, timeout=10, what=f"worker {pid}'s connections to close")
        value = await self.db.fetchval(
            "SELECT count(*) FROM fault_runs WHERE worker_pid = $1 AND finished_at IS NULL", pid
        )
        return int(value)

    # --- the end -----------------------------------------------------------------------

    async def finish(
        self,
        *,
        exact_reports: bool = True,
        timeout: float = 90,
        more_faults: Callable[[], dict[str, int]] | None = None,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> Verdict:
        """Wait for every instance, account for everything, record the scenario's row, and
        assert. `exact_reports`: the engine received each report exactly as often as it was
        sent (nothing made it re-read one: no engine died, no engine connection was cut).
        `more_faults`: faults counted elsewhere, added to the row. `settle`: once the workers
        stopped, waits until whatever stands between them and the engine passed on all they
        sent."""
        ids = await self.started()
        timed_out = ""
        try:
            await wait_until(
                lambda: tolerant(self._all_completed),
                timeout=timeout,
                what="every instance to complete",
            )
        except AssertionError as exc:
            timed_out = str(exc)
        duration = time.monotonic() - self.began
        if not timed_out:
            await self._quiesce(settle)
        verdict = await self._verdict()
        if more_faults is not None:
            self.faults.update(more_faults())
        ROWS.append(
            Row(
                nodeid=self.nodeid,
                scenario=self.name,
                instances=self.count,
                faults=", ".join(f"{n} {kind}" for kind, n in self.faults.items()) or "none",
                lost=verdict.lost,
                applied_twice=verdict.applied_twice,
                repeat_runs=verdict.repeat_runs,
                ledger_repeats=verdict.ledger_repeats,
                duration_s=duration,
            )
        )
        details = self._describe(verdict)
        assert not timed_out, f"{timed_out}\n{details}"
        assert len(set(ids)) == self.count, details
        # No process died of a fault it was only meant to live through: the engines still
        # run, and the workers stopped cleanly when asked.
        survivors = [p for p in self.engines + self.workers if p.pid not in self._killed]
        assert all(p.poll() is None for p in survivors if p in self.engines), details
        unclean = [(p.pid, p.returncode) for p in survivors if p in self.workers and p.returncode]
        assert not unclean, f"workers that did not stop cleanly (pid, exit): {unclean}\n{details}"
        self._assert_verdict(verdict, exact_reports, details)
        return verdict

    async def all_completed(self, *, timeout: float) -> None:
        """Wait (at most `timeout` s) until every instance started so far is completed."""
        await self.started()
        await wait_until(
            lambda: tolerant(self._all_completed), timeout=timeout, what="every instance"
        )

    async def _all_completed(self) -> bool:
        value = await self.db.fetchval(
            "SELECT count(*) FROM process_instances WHERE process_key = $1 "
            "AND status = 'completed'",
            self.key,
        )
        return bool(value == self.count)

    async def _quiesce(self, settle: Callable[[], Awaitable[None]] | None) -> None:
        """Stop the workers (nothing more is reported) and let the engines publish and apply
        what is still on its way."""
        # In a thread: the proxies of a test run in this event loop, and carry what the
        # workers send until they are gone. One that does not stop in time is killed and
        # fails the scenario (see finish: it did not stop cleanly).
        await asyncio.to_thread(stop, self.live(self.workers), timeout_s=30)
        if settle is not None:
            await settle()

        async def outbox_drained() -> bool:
            return bool(await self.db.fetchval("SELECT count(*) FROM outbox") == 0)

        await wait_until(lambda: tolerant(outbox_drained), timeout=30, what="the outbox to drain")
        sent = self._completions_sent = await self._tap_completions()

        async def caught_up() -> bool:
            return await self._counter("reports_completed") >= sent

        await wait_until(
            lambda: tolerant(caught_up),
            timeout=30,
            what=f"the engine to apply or record all {sent} completions sent",
        )

    async def _tap_completions(self) -> int:
        """Completed reports in the messages on the tap queue (taken off it)."""
        connection = await aio_pika.connect(self.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.tap_queue, passive=True)
            total = queue.declaration_result.message_count or 0
            await channel.set_qos(prefetch_count=1000)
            completed = received = 0
            if total:
                async with queue.iterator(no_ack=True, timeout=30) as messages:
                    async for message in messages:
                        if not (message.message_id or "").startswith(MALFORMED_PREFIX):
                            completed += count_completed(message.body)
                        received += 1
                        if received == total:
                            break
        return completed

    async def delete_tap(self) -> None:
        with contextlib.suppress(Exception):  # cleanup only: the broker may be the fault
            connection = await aio_pika.connect(self.settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.tap_queue)

    async def _counter(self, name: str) -> int:
        value = await self.db.fetchval(
            "SELECT sum(value) FROM engine_counters WHERE name = $1", name
        )
        return int(value or 0)

    async def _verdict(self) -> Verdict:
        db = self.db
        states = {
            row["status"]: row["n"]
            for row in await db.fetch(
                "SELECT status, count(*) AS n FROM process_instances WHERE process_key = $1 "
                "GROUP BY status",
                self.key,
            )
        }
        tasks = await db.fetchrow(
            """
            SELECT count(*) AS tasks,
                   count(*) FILTER (WHERE completions > 1) AS completed_twice
            FROM (SELECT t.id, count(h.id) AS completions FROM tasks t
                  LEFT JOIN history h ON h.task_id = t.id AND h.kind = 'task_completed'
                  GROUP BY t.id) per_task
            """
        )
        dispatched_twice = await db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM tasks GROUP BY instance_id, node_id "
            "HAVING count(*) > 1) twice"
        )
        effects_twice = await db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM fault_effects GROUP BY instance_id, node_id "
            "HAVING count(*) > 1) twice"
        )
        effects_wrong = await db.fetchval(
            """
            SELECT count(*) FROM tasks t
            WHERE NOT EXISTS (SELECT 1 FROM fault_effects e WHERE e.idempotency_key = t.id::text)
               OR (SELECT count(*) FROM fault_runs r
                   WHERE r.idempotency_key = t.id::text AND r.applied) <> 1
            """
        )
        runs = await db.fetchrow(
            "SELECT count(*) AS runs, count(DISTINCT idempotency_key) AS keys, "
            "count(*) FILTER (WHERE finished_at IS NULL) AS interrupted FROM fault_runs"
        )
        ledger = await db.fetchrow(
            "SELECT coalesce(sum(duplicates), 0) AS duplicates, "
            "coalesce(sum(conflicts), 0) AS conflicts FROM report_ledger"
        )
        joins = await db.fetchrow(
            """
            SELECT coalesce(sum(n), 0) AS joins,
                   count(*) FILTER (WHERE n <> $2) AS not_once,
                   count(*) FILTER (WHERE n > $2) AS twice
            FROM (SELECT p.id, count(h.id) AS n FROM process_instances p
                  LEFT JOIN history h ON h.instance_id = p.id AND h.kind = 'joined'
                  WHERE p.process_key = $1 GROUP BY p.id) per_instance
            """,
            self.key,
            self.joins_per_instance,
        )
        after_join_wrong = 0
        if self.shape == PARALLEL:
            after_join_wrong = await db.fetchval(
                """
                SELECT count(*) FROM (SELECT p.id, count(t.id) AS n FROM process_instances p
                      LEFT JOIN tasks t ON t.instance_id = p.id AND t.node_id = $2
                      WHERE p.process_key = $1 GROUP BY p.id) per_instance
                WHERE n <> 1
                """,
                self.key,
                AFTER_JOIN,
            )
        waits = await self._waits() if self.shape in WAIT_HISTORY else {}
        counters = {
            row["name"]: int(row["value"])
            for row in await db.fetch(
                "SELECT name, sum(value) AS value FROM engine_counters GROUP BY name"
            )
        }
        assert tasks is not None and runs is not None and ledger is not None
        assert joins is not None
        return Verdict(
            instances=self.count,
            states=states,
            tasks=tasks["tasks"],
            completed_twice=tasks["completed_twice"],
            dispatched_twice=dispatched_twice,
            effects_twice=effects_twice,
            effects_wrong=effects_wrong,
            runs=runs["runs"],
            repeat_runs=runs["runs"] - runs["keys"],
            interrupted_runs=runs["interrupted"],
            ledger_duplicates=int(ledger["duplicates"]),
            ledger_conflicts=int(ledger["conflicts"]),
            counters=counters,
            variables_wrong=await self._variables_wrong(),
            completions_sent=self._completions_sent,
            outbox_left=await db.fetchval("SELECT count(*) FROM outbox"),
            joins=int(joins["joins"]),
            joins_not_once=joins["not_once"],
            joined_twice=joins["twice"],
            after_join_wrong=after_join_wrong,
            messages_republished=sum(self.messages_sent.values()) - len(self.messages_sent),
            **waits,
        )

    async def _variables_wrong(self) -> int:
        """Completed instances whose variables are not their start variables, each step's
        result and (message shape) their own message's variable."""
        steps = {f"step{n}": "done" for n in range(1, self.tasks_per_instance + 1)}
        if self.shape == MESSAGE:
            query = """
                SELECT count(*) FROM process_instances WHERE process_key = $1
                AND (variables - 'i' - 'orderId' - $3::text <> $2::jsonb
                     OR variables->>'orderId' IS DISTINCT FROM $4 || (variables->>'i')
                     OR variables->$3::text IS DISTINCT FROM variables->'i')
            """
            args: tuple[Any, ...] = (MESSAGE_VARIABLE, f"{self.key}-order-")
        else:
            # The timer shape's due date besides `i` (removing `i` twice changes nothing).
            query = (
                "SELECT count(*) FROM process_instances WHERE process_key = $1 "
                "AND variables - 'i' - $3::text <> $2::jsonb"
            )
            args = ("dueAt" if self.shape == TIMER else "i",)
        return int(await self.db.fetchval(query, self.key, steps, *args))

    async def _waits(self) -> dict[str, int]:
        """The timer or message shape's accounting of its waits (Verdict's fields)."""
        db = self.db
        row = await db.fetchrow(
            """
            SELECT coalesce(sum(fired), 0) AS waits,
                   count(*) FILTER (WHERE fired <> 1) AS not_once,
                   count(*) FILTER (WHERE fired > 1) AS twice,
                   count(*) FILTER (WHERE after <> 1) AS after_wrong
            FROM (SELECT p.id,
                         (SELECT count(*) FROM history h WHERE h.instance_id = p.id
                          AND h.kind = $2 AND h.node_id = $3) AS fired,
                         (SELECT count(*) FROM tasks t WHERE t.instance_id = p.id
                          AND t.node_id = $4) AS after
                  FROM process_instances p WHERE p.process_key = $1) per_instance
            """,
            self.key,
            WAIT_HISTORY[self.shape],
            WAIT_NODE,
            AFTER_WAIT,
        )
        assert row is not None
        waits = {
            "waits": int(row["waits"]),
            "waits_not_once": int(row["not_once"]),
            "waited_twice": int(row["twice"]),
            "after_wait_wrong": int(row["after_wrong"]),
            "timers_left": int(
                await db.fetchval(
                    "SELECT count(*) FROM timers t JOIN process_instances p "
                    "ON p.id = t.instance_id WHERE p.process_key = $1",
                    self.key,
                )
            ),
        }
        if self.shape == MESSAGE:
            ledger = await db.fetchrow(
                """
                SELECT count(*) AS rows,
                       count(*) FILTER (WHERE m.status <> 'correlated' OR p.id IS NULL
                           OR p.variables->>'orderId' IS DISTINCT FROM m.correlation_key)
                           AS misplaced,
                       coalesce(sum(m.duplicates), 0) AS duplicates
                FROM messages m LEFT JOIN process_instances p ON p.id = m.instance_id
                WHERE m.message_id LIKE $1
                """,
                f"{self.key}-paid-%",
            )
            assert ledger is not None
            waits["ledger_messages"] = int(ledger["rows"])
            waits["messages_misplaced"] = int(ledger["misplaced"])
            waits["message_duplicates"] = int(ledger["duplicates"])
            waits["subscriptions_left"] = int(
                await db.fetchval(
                    "SELECT count(*) FROM message_subscriptions s JOIN process_instances p "
                    "ON p.id = s.instance_id WHERE p.process_key = $1",
                    self.key,
                )
            )
        return waits

    def _assert_verdict(self, verdict: Verdict, exact_reports: bool, details: str) -> None:
        expected_tasks = self.count * self.tasks_per_instance
        # Nothing lost: every instance completed, each of its steps as exactly one task.
        assert verdict.states == {"completed": self.count}, details
        assert verdict.tasks == expected_tasks, details
        # Each join fired exactly once (none in the sequential shape), and made one task.
        assert verdict.joins_not_once == 0, details
        assert verdict.joins == self.count * self.joins_per_instance, details
        assert verdict.after_join_wrong == 0, details
        # Each timer or message took effect exactly once, and made one task after its wait.
        if self.shape in WAIT_HISTORY:
            assert verdict.waits_not_once == 0, details
            assert verdict.waits == self.count, details
            assert verdict.after_wait_wrong == 0, details
            assert verdict.timers_left == 0, details
            assert verdict.counter(WAIT_COUNTER[self.shape]) == self.count, details
        if self.shape == TIMER:
            assert verdict.counter("timers_stale") == 0, details
        if self.shape == MESSAGE:
            self._assert_messages(verdict, details)
        assert verdict.outbox_left == 0, details
        assert verdict.variables_wrong == 0, details
        # Nothing applied twice, by the engine or by the workers.
        assert verdict.completed_twice == 0, details
        assert verdict.dispatched_twice == 0, details
        assert verdict.effects_twice == 0, details
        assert verdict.effects_wrong == 0, details
        # The ledger accounts for every repeat: the counters agree with it, and every
        # completion the engine received was either applied (one per task) or recorded.
        assert verdict.counter("reports_duplicate") == verdict.ledger_duplicates, details
        assert verdict.counter("reports_conflicting") == verdict.ledger_conflicts, details
        assert verdict.counter("reports_completed") == expected_tasks + verdict.ledger_repeats, (
            details
        )
        # And it received every completion the workers sent: exactly as many, unless the
        # scenario made an engine read some twice (it died or lost its connection before
        # acking them: the ledger then recorded the second reading as a repeat).
        if exact_reports:
            assert verdict.counter("reports_completed") == verdict.completions_sent, details
        else:
            assert verdict.counter("reports_completed") >= verdict.completions_sent, details

    def _assert_messages(self, verdict: Verdict, details: str) -> None:
        """One ledger row per message, correlated to its own instance; every copy beyond the
        first (published again, or read again after an engine died before its ack) counted
        as a duplicate, in the ledger and the counter alike; nothing dead-lettered."""
        assert len(self.messages_sent) == self.count, details
        assert verdict.ledger_messages == self.count, details
        assert verdict.messages_misplaced == 0, details
        assert verdict.subscriptions_left == 0, details
        assert verdict.counter("messages_correlated") == self.count, details
        assert verdict.counter("messages_duplicate") == verdict.message_duplicates, details
        assert verdict.message_duplicates >= verdict.messages_republished, details
        assert verdict.counter("messages_dead_lettered") == 0, details
        assert verdict.counter("messages_expired") == 0, details

    def _describe(self, verdict: Verdict) -> str:
        return (
            f"scenario {self.name!r}, process {self.key}, faults {dict(self.faults)}\n"
            f"{verdict}\n{self.processes.logs()}"
        )


def fork_join_process(key: str, topics: list[str], *, lock: str) -> str:
    """A JSON definition: start -> fork -> one service task per topic but the last, in
    parallel -> join -> a service task on the last topic -> end."""
    *branches, after = topics
    nodes: list[dict[str, Any]] = [
        {"id": "start", "type": "start_event"},
        {"id": "fork", "type": "parallel_gateway"},
    ]
    flows: list[dict[str, Any]] = [{"id": "to_fork", "from": "start", "to": "fork"}]
    for index, topic in enumerate(branches):
        node = f"step{index + 1}"
        nodes.append({"id": node, "type": "service_task", "topic": topic, "lock": lock})
        flows.append({"id": f"to_{node}", "from": "fork", "to": node})
        flows.append({"id": f"{node}_to_join", "from": node, "to": "join"})
    node = f"step{len(branches) + 1}"
    nodes += [
        {"id": "join", "type": "parallel_gateway"},
        {"id": node, "type": "service_task", "topic": after, "lock": lock},
        {"id": "end", "type": "end_event"},
    ]
    flows += [
        {"id": "to_after", "from": "join", "to": node},
        {"id": "to_end", "from": node, "to": "end"},
    ]
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows}).decode()


def waiting_process(key: str, topics: list[str], event: dict[str, Any], *, lock: str) -> str:
    """A JSON definition: start -> step1 -> a catch event (`event` holds its `timer` or
    `message`) -> step2 -> end."""
    first, second = topics
    kind = "timer_catch_event" if "timer" in event else "message_catch_event"
    nodes: list[dict[str, Any]] = [
        {"id": "start", "type": "start_event"},
        {"id": "step1", "type": "service_task", "topic": first, "lock": lock},
        {"id": WAIT_NODE, "type": kind, **event},
        {"id": AFTER_WAIT, "type": "service_task", "topic": second, "lock": lock},
        {"id": "end", "type": "end_event"},
    ]
    flows = [
        {"id": "to_step1", "from": "start", "to": "step1"},
        {"id": "to_wait", "from": "step1", "to": WAIT_NODE},
        {"id": "to_step2", "from": WAIT_NODE, "to": AFTER_WAIT},
        {"id": "to_end", "from": AFTER_WAIT, "to": "end"},
    ]
    return orjson.dumps({"key": key, "nodes": nodes, "flows": flows}).decode()


def count_completed(body: bytes) -> int:
    """Completed reports in a report message (one report, or an array of them)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    items = data if isinstance(data, list) else [data]
    return sum(1 for item in items if isinstance(item, dict) and item.get("type") == "completed")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
