"""An engine that stalls inside a transaction must not stall the others.

Two engines share the work. One of them stops answering while one of its transactions holds
instance row locks (it has locked or written rows: it has an xid), for 30 s:

- frozen: SIGSTOP, caught when pg_stat_activity shows its session idle in a transaction;
- cut off from PostgreSQL: its database connections go through a TCP proxy that turns into a
  blackhole (no reset, no FIN: nothing reaches either side) while it is inside a transaction
  (the proxy holds every byte while the test looks, so the cut lands exactly there);
- its host gone: the same, with its RabbitMQ connection silenced too.

Meanwhile the other engine must keep completing instances and answering commands; afterwards
every instance completes, each step once, and the stalled engine carries on.

How progress is judged: completed steps (and instances) are counted at 2 s boundaries from
6 s into the stall (PostgreSQL may take about 5 s to end the stalled session; the healthy
engine should not wait on it at all), and every window must have completed steps: during the
stall only the healthy engine can complete any. `orchestrator stats` is asked every few
seconds from then on and must answer within 5 s. Each window also notes the healthy engine's
sessions waiting on a lock, and who holds it, so a failure says why. The engines' sessions
are found by their application_name, which carries the engine id (host and pid).

Why steps and not instances: while an engine is frozen, RabbitMQ goes on handing it starts
and reports until it drops the connection (two missed heartbeats, about 10 s); the instances
those belong to wait for that, however well the healthy engine does, and early in the stall a
window can pass without a completed instance (seen once in six runs in which the healthy
engine never waited). Then RabbitMQ hands them to the other engine: among them the reports of
the frozen transaction, for the very instances it holds locked. A host gone is the same. An
engine cut off from PostgreSQL alone keeps its broker connection, and what it was handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from orchestrator.broker.topology import Topology
from orchestrator.client import Client
from orchestrator.errors import CommandTimeout
from tests.faults.workload import Workload
from tests.support.harness import wait_until
from tests.support.proxy import Proxies, TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

STALL_S = 30.0
#: Not judged: the time PostgreSQL may take to end a stalled session.
GRACE_S = 6.0
WINDOW_S = 2.0
#: How long `orchestrator stats` may take to answer, and how often it is asked.
STATS_WITHIN_S = 5.0
STATS_EVERY_S = 4.0
#: Stats commands sent at once: commands go round-robin to the engines' consumers and the
#: stalled engine may still be one of them (RabbitMQ drops a frozen engine only after two
#: missed heartbeats; a cut-off engine keeps its broker connection), so a burst makes sure
#: one reaches the healthy engine. The first answer counts.
STATS_BURST = 4
#: Catching an engine inside a transaction: how many times, and how fast to look.
CATCH_TRIES = 20
CATCH_POLL_S = 0.002
#: Instances arrive all through the stall (count / rate > the time to the end of it).
COUNT = 400
RATE = 10.0
#: Every instance completes within this after the stall ends (leases expire, reports that
#: the stalled engine held come back, the ledger answers the repeats).
FINISH_S = 45.0

LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


# --- the engine's sessions ---------------------------------------------------------------


def session_name(pid: int) -> str:
    """The application_name of an engine process's database sessions (its engine id, as the
    engine builds it, with PostgreSQL's 63-byte limit)."""
    return f"orchestrator engine-{socket.gethostname()}-{pid}"[:63]


@dataclass(frozen=True)
class Session:
    """A backend of an engine, inside a transaction that holds rows (it has an xid)."""

    backend: int
    xid: str
    xact_start: Any
    query: str


_SESSIONS = """
SELECT pid, state, backend_xid::text AS xid, xact_start, wait_event_type, wait_event,
       left(query, 120) AS query
FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()
"""


async def in_transaction(workload: Workload, pid: int) -> Session | None:
    """One of the engine's backends idle inside a transaction that holds rows, if any."""
    for row in await workload.db.fetch(_SESSIONS, session_name(pid)):
        if row["state"] == "idle in transaction" and row["xid"] is not None:
            return Session(row["pid"], row["xid"], row["xact_start"], row["query"])
    return None


async def still_in(workload: Workload, session: Session, *, settle_s: float = 2.0) -> bool:
    """Whether `session`'s transaction is still open (its engine can no longer send: it is
    stopped or cut off) once the statement it may have sent just before has run. A COMMIT
    that slipped through shows as 'idle' or a new xid."""
    row: dict[str, Any] = {}

    async def settled() -> bool:
        found = await workload.db.fetchrow(
            "SELECT state, backend_xid::text AS xid, xact_start FROM pg_stat_activity "
            "WHERE pid = $1",
            session.backend,
        )
        row.clear()
        row.update(found or {})
        return found is None or found["state"] != "active"

    with contextlib.suppress(AssertionError):  # still active: a lock wait, say; not ours
        await wait_until(settled, timeout=settle_s, what="the session to settle")
    return (
        row.get("state") == "idle in transaction"
        and row.get("xid") == session.xid
        and row.get("xact_start") == session.xact_start
    )


async def catch_in_transaction(workload: Workload, pid: int) -> Session:
    """Wait for engine `pid` to be inside a transaction that holds rows."""
    found: list[Session] = []

    async def caught() -> bool:
        session = await in_transaction(workload, pid)
        found[:] = [session] if session else []
        return bool(found)

    await wait_until(
        caught, timeout=20, interval=CATCH_POLL_S, what=f"engine {pid} inside a transaction"
    )
    return found[0]


def process_state(pid: int) -> str:
    """The state letter of a live process (Linux /proc): 'T' when stopped."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)

    async def stopped() -> bool:
        return process_state(pid) == "T"

    await wait_until(stopped, timeout=5, what=f"process {pid} to stop")


async def freeze_in_transaction(workload: Workload, engine: subprocess.Popen[bytes]) -> Session:
    """SIGSTOP `engine` while one of its sessions is inside a transaction holding rows, and
    make sure it still is once stopped: if the transaction ended before the signal landed,
    let the engine go on and try again."""
    for _ in range(CATCH_TRIES):
        session = await catch_in_transaction(workload, engine.pid)
        await stop(engine.pid)
        if await still_in(workload, session):
            return session
        os.kill(engine.pid, signal.SIGCONT)
    raise AssertionError(
        f"could not stop engine {engine.pid} inside a transaction in {CATCH_TRIES} tries"
    )


# --- watching the stall ------------------------------------------------------------------


@dataclass
class Window:
    begins_s: float
    #: Steps (tasks) and instances completed so far.
    steps: int
    instances: int
    #: The healthy engine's sessions waiting on a lock: (backend, wait_event, blockers).
    lock_waits: list[tuple[int, str, list[int]]]


@dataclass
class StatsAsk:
    at_s: float
    #: When the first answer of the burst came; None if none came within STATS_WITHIN_S.
    answered_s: float | None
    #: How many of the burst were answered within STATS_WITHIN_S.
    answers: int
    #: Consumers of the commands queue when asked (the stalled engine's may still be one).
    consumers: int
    errors: list[str] = field(default_factory=list)


@dataclass
class Stall:
    """What happened during a stall of STALL_S, seen from outside."""

    windows: list[Window] = field(default_factory=list)
    asks: list[StatsAsk] = field(default_factory=list)

    def progress(self) -> list[int]:
        """Steps completed in each window."""
        counts = [window.steps for window in self.windows]
        return [later - earlier for earlier, later in itertools.pairwise(counts)]

    def instances_progress(self) -> list[int]:
        """Instances completed in each window."""
        counts = [window.instances for window in self.windows]
        return [later - earlier for earlier, later in itertools.pairwise(counts)]

    def stalled_windows(self) -> list[str]:
        return [
            f"{self.windows[i].begins_s:.0f}-{self.windows[i + 1].begins_s:.0f} s"
            for i, made in enumerate(self.progress())
            if made <= 0
        ]

    def unanswered(self) -> list[StatsAsk]:
        return [ask for ask in self.asks if ask.answered_s is None]

    def describe(self) -> str:
        lines = ["steps and instances completed by window (from the start of the stall):"]
        steps, instances = self.progress(), self.instances_progress()
        for i, (made, finished) in enumerate(zip(steps, instances, strict=True)):
            window, end = self.windows[i], self.windows[i + 1]
            waits = end.lock_waits
            blocked = f"; healthy engine waiting on locks: {waits}" if waits else ""
            lines.append(
                f"  {window.begins_s:4.0f}-{end.begins_s:.0f} s: {made:+4d} steps, "
                f"{finished:+4d} instances{blocked}"
            )
        lines.append(
            f"stats asked during the stall, {STATS_BURST} at once (at s: first answer after s, "
            f"answers within {STATS_WITHIN_S:g} s):"
        )
        lines += [
            f"  {ask.at_s:4.1f}: "
            + (f"{ask.answered_s:.2f}" if ask.answered_s is not None else "NO ANSWER")
            + f", {ask.answers}/{STATS_BURST} answered"
            + f" ({ask.consumers} consumers of the commands queue) {' '.join(ask.errors)}"
            for ask in self.asks
        ]
        return "\n".join(lines)

    def commands_consumers(self) -> list[int]:
        return [ask.consumers for ask in self.asks]


async def completed(workload: Workload) -> tuple[int, int]:
    """Steps (tasks) and instances of the workload completed so far."""
    row = await workload.db.fetchrow(
        "SELECT (SELECT count(*) FROM tasks t JOIN process_instances i ON i.id = t.instance_id "
        "        WHERE i.process_key = $1 AND t.status = 'completed') AS steps, "
        "       (SELECT count(*) FROM process_instances WHERE process_key = $1 "
        "        AND status = 'completed') AS instances",
        workload.key,
    )
    assert row is not None
    return int(row["steps"]), int(row["instances"])


async def lock_waits(workload: Workload, pid: int) -> list[tuple[int, str, list[int]]]:
    rows = await workload.db.fetch(
        "SELECT pid, wait_event, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity "
        "WHERE application_name = $1 AND wait_event_type = 'Lock'",
        session_name(pid),
    )
    return [(row["pid"], row["wait_event"], list(row["blockers"])) for row in rows]


async def watch(workload: Workload, healthy: subprocess.Popen[bytes], client: Client) -> Stall:
    """For STALL_S from now: count completed steps and instances at each window boundary
    after GRACE_S, and ask for stats every STATS_EVERY_S after GRACE_S."""
    stall = Stall()
    began = time.monotonic()

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, began + offset - time.monotonic()))

    async def count() -> None:
        offset = GRACE_S
        while offset <= STALL_S + 1e-9:
            await at(offset)
            steps, instances = await completed(workload)
            waits = await lock_waits(workload, healthy.pid)
            stall.windows.append(Window(offset, steps, instances, waits))
            offset += WINDOW_S

    async def ask() -> None:
        offset = GRACE_S
        while offset + STATS_WITHIN_S <= STALL_S + 1e-9:
            await at(offset)
            consumers = await commands_consumers(workload)
            at_s = time.monotonic() - began
            stall.asks.append(await ask_stats(client, workload.key, at_s, consumers))
            offset += STATS_EVERY_S

    await asyncio.gather(count(), ask())
    await at(STALL_S)
    return stall


async def ask_stats(client: Client, process_key: str, at_s: float, consumers: int) -> StatsAsk:
    """A burst of stats commands, given STATS_WITHIN_S to answer."""
    began = time.monotonic()

    async def one() -> float:
        await client.stats(process_key)
        return time.monotonic() - began

    asks = [asyncio.create_task(one()) for _ in range(STATS_BURST)]
    try:
        done, _ = await asyncio.wait(asks, timeout=STATS_WITHIN_S)
    finally:
        for task in asks:
            task.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
    errors = [repr(task.exception()) for task in done if task.exception() is not None]
    answered = sorted(task.result() for task in done if task.exception() is None)
    first = answered[0] if answered else None
    return StatsAsk(at_s, first, len(answered), consumers, errors)


async def commands_consumers(workload: Workload) -> int:
    topology = Topology(workload.settings.namespace)
    connection = await aio_pika.connect(workload.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.commands_queue, passive=True)
        return queue.declaration_result.consumer_count or 0


# --- what the engines logged -------------------------------------------------------------


def log_of(workload: Workload, proc: subprocess.Popen[bytes]) -> Path:
    """The log file the harness gave `proc` (named by its place among the processes)."""
    index = workload.processes.procs.index(proc)
    return workload.processes.log_dir / f"engine-{index}.log"


def log_problems(workload: Workload, proc: subprocess.Popen[bytes], *, limit: int = 20) -> str:
    """ERROR, CRITICAL and Traceback lines of an engine's log, with a count."""
    lines = log_of(workload, proc).read_text(errors="replace").splitlines()
    problems = [line for line in lines if LOG_PROBLEM.search(line)]
    shown = "\n    ".join(problems[:limit])
    return f"engine {proc.pid}: {len(problems)} problem lines\n    {shown}"


def engine_report(
    workload: Workload, stall: Stall, engines: dict[str, subprocess.Popen[bytes]]
) -> str:
    parts = [stall.describe()]
    for role, proc in engines.items():
        alive = "running" if proc.poll() is None else f"exited {proc.returncode}"
        parts.append(f"{role} ({alive}): {log_problems(workload, proc)}")
    return "\n".join(parts)


def assert_no_stall(stall: Stall, report: str) -> None:
    assert len(stall.windows) == int((STALL_S - GRACE_S) / WINDOW_S) + 1, report
    assert not stall.stalled_windows(), (
        f"no step completed in the windows {stall.stalled_windows()}\n{report}"
    )
    assert stall.asks and not stall.unanswered(), (
        f"stats went unanswered {len(stall.unanswered())} of {len(stall.asks)} times\n{report}"
    )


async def finished(workload: Workload, stall: Stall) -> Exception | None:
    """workload.finish(), its failure kept for after the stall's own assertions (which say
    more)."""
    try:
        # An engine lost its connections mid-batch: some reports are read twice.
        await workload.finish(exact_reports=False, timeout=FINISH_S)
    except CommandTimeout as exc:
        # A start the client sent three times (10 s apart) without an answer: it gave up,
        # and the instance was never started.
        return AssertionError(
            f"a start got no answer: {exc}; consumers of the commands queue during the "
            f"stall: {stall.commands_consumers()}"
        )
    except AssertionError as exc:
        return exc
    return None


# --- the scenarios -----------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_engine_frozen_inside_a_transaction(workload: Workload) -> None:
    workload.configure("SIGSTOP engine inside a transaction 30 s", count=COUNT, max_delay_ms=120)
    frozen = workload.engine()
    healthy = workload.engine()
    await workload.deploy()
    workload.worker()
    workload.worker()
    await workload.consuming(2)
    workload.start(rate=RATE)
    await workload.progressed(by=60)

    async with Client(workload.settings, name="stall-stats") as client:
        session = await freeze_in_transaction(workload, frozen)
        workload.fault(f"SIGSTOP engine in a transaction {STALL_S:g} s")
        try:
            stall = await watch(workload, healthy, client)
            assert process_state(frozen.pid) == "T", "the frozen engine was woken up early"
            left = await in_transaction(workload, frozen.pid)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)

    failure = await finished(workload, stall)
    report = engine_report(workload, stall, {"frozen": frozen, "healthy": healthy})
    report += (
        f"\nfrozen session: backend {session.backend}, xid {session.xid}, last statement "
        f"{session.query!r}; still in that transaction at the end of the freeze: "
        f"{left is not None and left.xid == session.xid}"
    )
    print(report)
    assert_no_stall(stall, report)
    # Thawed, the frozen engine carries on: it reconnects rather than dying.
    assert frozen.poll() is None, f"the frozen engine exited after the thaw\n{report}"
    if failure is not None:
        raise failure


#: What is cut off: the engine's PostgreSQL connections only, or (a host gone) its RabbitMQ
#: connection too.
CUTS = {
    "postgresql": ("pg",),
    "host": ("pg", "amqp"),
}
CUT_NAMES = {
    "postgresql": "blackhole engine <-> PostgreSQL in a transaction 30 s",
    "host": "blackhole engine <-> PostgreSQL, RabbitMQ in a transaction 30 s",
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cut", sorted(CUTS))
async def test_engine_cut_off_silently(workload: Workload, proxies: Proxies, cut: str) -> None:
    workload.configure(CUT_NAMES[cut], count=COUNT, max_delay_ms=120)
    settings = workload.settings
    urls = {"pg": settings.database_url, "amqp": settings.amqp_url}
    variables = {"pg": "ORCH_DATABASE_URL", "amqp": "ORCH_AMQP_URL"}
    cut_proxies = {service: await proxies.to(urls[service], service) for service in CUTS[cut]}
    cut_off = workload.engine(
        **{variables[service]: proxy.url(urls[service]) for service, proxy in cut_proxies.items()}
    )
    healthy = workload.engine()
    await workload.deploy()
    workload.worker()
    workload.worker()
    await workload.consuming(2)
    workload.start(rate=RATE)
    await workload.progressed(by=60)

    async with Client(workload.settings, name="stall-stats") as client:
        session = await blackhole_in_transaction(workload, cut_off, list(cut_proxies.values()))
        workload.fault(f"{'+'.join(cut_proxies)} blackhole {STALL_S:g} s")
        try:
            stall = await watch(workload, healthy, client)
        finally:
            for proxy in cut_proxies.values():
                proxy.heal()

    failure = await finished(workload, stall)
    report = engine_report(workload, stall, {"cut off": cut_off, "healthy": healthy})
    report += (
        f"\ncut-off session: backend {session.backend}, xid {session.xid}, last statement "
        f"{session.query!r}"
    )
    for proxy in cut_proxies.values():
        report += f"\n{proxy.name} proxy: {proxy.counters}, {proxy.silent} silenced still open"
    print(report)
    assert_no_stall(stall, report)
    # Healed, the cut-off engine carries on: it reconnects rather than dying.
    assert cut_off.poll() is None, f"the cut-off engine exited\n{report}"
    if failure is not None:
        raise failure


async def blackhole_in_transaction(
    workload: Workload, engine: subprocess.Popen[bytes], proxies: list[TcpProxy]
) -> Session:
    """Silence every connection of `engine` through `proxies` while one of its sessions is
    inside a transaction holding rows. To land exactly there, the proxies hold every byte
    (pause) while the session is looked at: if its transaction is still open, the blackhole
    drops what they held; if it ended just before, what they held goes on and it is tried
    again."""
    for _ in range(CATCH_TRIES):
        session = await catch_in_transaction(workload, engine.pid)
        for proxy in proxies:
            proxy.pause()
        try:
            if await still_in(workload, session):
                for proxy in proxies:
                    silenced = proxy.blackhole()
                    assert silenced >= 1, f"the engine has no connection through {proxy.name}"
                return session
        finally:
            for proxy in proxies:
                proxy.resume()
    raise AssertionError(
        f"could not cut engine {engine.pid} off inside a transaction in {CATCH_TRIES} tries"
    )
