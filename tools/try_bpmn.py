"""Try BPMN files as a new user would: deploy each one the way `orchestrator deploy` reads it.

    python -m tools.try_bpmn DIR [--run] [--timeout SECONDS]

For every `*.bpmn` under DIR: `load_processes` (what deploy uses), and the outcome:

    deployable   every process of the file compiles
    refused      a DefinitionError; each of its lines is printed (each should name the line,
                 the element's tag and id, and why)
    CRASH        any other exception: a traceback is a bug of the reader

Then a summary: outcomes by the first folder under DIR (one folder per source repository),
every distinct refusal reason with the number of files that hit it, and the refusal lines
that do not say where they are.

With --run, against the local PostgreSQL and RabbitMQ (ORCH_TRIAL_DATABASE_URL,
ORCH_TRIAL_AMQP_URL; a database and a namespace of its own, removed afterwards): an engine
and a worker in this process, the worker completing every topic with `{}`. Every file is
deployed through the engine (a refused one must leave no definition behind: never half a
file), each deployable process is started with no variables, and the tool says where each
instance got to: completed, waiting (at which nodes), or an incident.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from orchestrator.broker.topology import delete_namespace
from orchestrator.daemon.admin import load_processes
from orchestrator.definitions.loader import Process
from orchestrator.errors import DefinitionError, OrchestratorError

DEPLOYABLE, REFUSED, CRASH = "deployable", "refused", "CRASH"
#: `line 12: serviceTask id="T" name="N": why` (the name may hold anything but a quote).
_PLACED = re.compile(r'^line (\d+): (\w+)(?: id="([^"]*)")?(?: name="[^"]*")?: (.*)$')
#: Malformed or unsafe XML: said with the parser's line (and column), there is no element.
_XML = re.compile(r"^line \d+(, column \d+: not well-formed XML|: refused unsafe XML)")
_XML_PLACE = re.compile(r"^line \d+(, column \d+)?: ")
#: Whole-file problems: they have no element to name.
_GENERAL = ("no executable process", "not a BPMN 2.0 file", "definition is larger than")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_LINE_NOTE = re.compile(r"\(line \d+\)|on line \d+")


@dataclass
class Outcome:
    path: Path
    kind: str
    processes: list[Process] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    trace: str = ""

    @property
    def source(self) -> str:
        return self.path.read_text("utf-8")


def try_file(path: Path) -> Outcome:
    try:
        text = path.read_text("utf-8")
        processes = load_processes(text)
    except DefinitionError as exc:
        return Outcome(path, REFUSED, problems=list(exc.problems))
    except Exception:
        return Outcome(path, CRASH, trace=traceback.format_exc())
    return Outcome(path, DEPLOYABLE, processes=processes)


def reason(problem: str) -> str:
    """A refusal line without its place and particulars, to count files per reason:
    `line 7: scriptTask id="X": script tasks are not supported` -> `scriptTask: script
    tasks are not supported`."""
    placed = _PLACED.match(problem)
    if placed:
        tag, why = placed.group(2), placed.group(4)
    elif _XML.match(problem):
        tag, why = "xml", _XML_PLACE.sub("", problem)
    else:
        tag, why = "file", problem
    why = _LINE_NOTE.sub("(line …)", why)
    return f"{tag}: {_QUOTED.sub('…', why)}"


def unplaced(problem: str) -> bool:
    """A refusal line that does not say where: no line, tag and id (nor a whole-file
    problem, nor malformed XML, which says its line and column)."""
    if problem.startswith(_GENERAL) or _XML.match(problem):
        return False
    placed = _PLACED.match(problem)
    return placed is None or (placed.group(3) is None and placed.group(2) != "definitions")


def source_of(root: Path, path: Path) -> str:
    """The first folder under DIR (`owner+name` reads as `owner/name`)."""
    parts = path.relative_to(root).parts
    return parts[0].replace("+", "/", 1) if len(parts) > 1 else "."


def report(root: Path, outcomes: list[Outcome], out: Any = sys.stdout) -> None:
    for outcome in outcomes:
        relative = outcome.path.relative_to(root)
        if outcome.kind == DEPLOYABLE:
            keys = ", ".join(process.key for process in outcome.processes)
            print(f"deployable  {relative}  ({keys})", file=out)
        elif outcome.kind == REFUSED:
            print(f"refused     {relative}", file=out)
            for problem in outcome.problems:
                print(f"    {problem}", file=out)
        else:
            print(f"CRASH       {relative}", file=out)
            print("    " + outcome.trace.rstrip().replace("\n", "\n    "), file=out)
    summarize(root, outcomes, out)


def summarize(root: Path, outcomes: list[Outcome], out: Any = sys.stdout) -> None:
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in outcomes:
        by_source[source_of(root, outcome.path)][outcome.kind] += 1
    print("\n## Outcomes by source", file=out)
    print(f"{'source':60} {'files':>5} {DEPLOYABLE:>10} {REFUSED:>7} {CRASH:>5}", file=out)
    total: Counter[str] = Counter()
    for name, counts in sorted(by_source.items()):
        total.update(counts)
        _count_row(name, counts, out)
    _count_row("total", total, out)
    files_per_reason: Counter[str] = Counter()
    for outcome in outcomes:
        files_per_reason.update({reason(problem) for problem in outcome.problems})
    print("\n## Refusal reasons (files that hit each)", file=out)
    for why, files in files_per_reason.most_common():
        print(f"{files:5}  {why}", file=out)
    loose = [
        (outcome, problem)
        for outcome in outcomes
        for problem in outcome.problems
        if unplaced(problem)
    ]
    print(f"\n## Refusal lines that do not say where: {len(loose)}", file=out)
    for outcome, problem in loose:
        print(f"    {outcome.path.relative_to(root)}: {problem}", file=out)


def _count_row(name: str, counts: Counter[str], out: Any) -> None:
    files = sum(counts.values())
    print(
        f"{name:60} {files:5} {counts[DEPLOYABLE]:10} {counts[REFUSED]:7} {counts[CRASH]:5}",
        file=out,
    )


# -- --run: deploy through an engine, start, see where each instance gets to


@dataclass
class Started:
    outcome: Outcome
    key: str
    instance_id: str | None = None
    failed: str | None = None


async def run(root: Path, outcomes: list[Outcome], timeout: float) -> int:
    """Deploy every file through an engine, start the deployable processes, report. Returns
    the number of refused files that left a definition behind (must be 0)."""
    import asyncpg

    from orchestrator.client import Client
    from orchestrator.config import Settings

    database, amqp = _trial_services()
    async with _trial_database(database) as url:
        settings = Settings(
            database_url=url,
            amqp_url=amqp,
            namespace=f"trial{uuid.uuid4().hex[:8]}",
            reaper_interval_ms=100,
            outbox_claim_ms=2_000,
        )
        topics = sorted(
            {topic for outcome in outcomes for p in outcome.processes for topic in p.topics}
        )
        db = await asyncpg.connect(url)
        try:
            async with (
                _engine(settings),
                Client(settings) as client,
                _worker(settings, topics),
            ):
                started, half = await _deploy_and_start(client, db, root, outcomes)
                await _settle(client, started, timeout)
                await _report_runs(client, root, started, outcomes)
        finally:
            await db.close()
            await delete_namespace(settings.amqp_url, settings.namespace, topics)
    return half


async def _deploy_and_start(
    client: Any, db: Any, root: Path, outcomes: list[Outcome]
) -> tuple[list[Started], int]:
    """Each file deployed through the engine, its processes started at once (so a key that
    several files share starts the version just deployed)."""
    started: list[Started] = []
    half = 0
    for outcome in outcomes:
        before = await db.fetchval("SELECT count(*) FROM process_definitions")
        try:
            await client.deploy(outcome.source, filename=outcome.path.name)
        except DefinitionError:
            after = await db.fetchval("SELECT count(*) FROM process_definitions")
            if outcome.kind == DEPLOYABLE or after != before:
                half += after != before
                print(
                    f"!! {outcome.path.relative_to(root)}: refused by the engine, "
                    f"definitions {before} -> {after}"
                )
            continue
        except (OrchestratorError, UnicodeDecodeError) as exc:
            print(f"!! {outcome.path.relative_to(root)}: deploy failed: {exc}")
            continue
        for process in outcome.processes:
            entry = Started(outcome, process.key)
            try:
                entry.instance_id = (await client.start(process.key, variables={})).instance_id
            except OrchestratorError as exc:
                entry.failed = f"start refused: {exc}"
            started.append(entry)
    return started, half


async def _settle(client: Any, started: list[Started], timeout: float) -> None:
    """Wait until every instance ended, or nothing changed for a while (they wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: list[str] = []
    quiet_since = loop.time()
    while loop.time() < deadline:
        states = [
            (await client.get_instance(entry.instance_id))["state"]
            for entry in started
            if entry.instance_id
        ]
        if all(state != "active" for state in states):
            return
        if states != last:
            last, quiet_since = states, loop.time()
        elif loop.time() - quiet_since > 5:
            return
        await asyncio.sleep(0.5)


async def _report_runs(
    client: Any, root: Path, started: list[Started], outcomes: list[Outcome]
) -> None:
    print("\n## --run: each deployable process started with no variables")
    summary: Counter[str] = Counter()
    for entry in started:
        where = entry.outcome.path.relative_to(root)
        if entry.instance_id is None:
            summary["start refused"] += 1
            print(f"{'start refused':14} {where} [{entry.key}]: {entry.failed}")
            continue
        instance = await client.get_instance(entry.instance_id)
        state, detail = _where_it_is(entry, instance)
        summary[state] += 1
        print(f"{state:14} {where} [{entry.key}]{': ' + detail if detail else ''}")
    print("\n" + ", ".join(f"{state}: {n}" for state, n in summary.most_common()))


def _where_it_is(entry: Started, instance: dict[str, Any]) -> tuple[str, str]:
    process = next(p for p in entry.outcome.processes if p.key == entry.key)
    incidents = [i for i in instance.get("incidents", []) if i.get("resolved_at") is None]
    if incidents:
        said = "; ".join(
            f"{i.get('node_id')}: {i.get('kind') or ''} {i.get('message') or ''}".strip()
            for i in incidents
        )
        return "incident", said
    if instance["state"] != "active":
        return instance["state"], ""
    waiting = [
        token["node_id"] for scope in instance.get("scopes", []) for token in scope["tokens"]
    ]
    return "waits", ", ".join(
        f"{node_id} ({getattr(process.nodes.get(node_id), 'type', '?')})" for node_id in waiting
    )


def _trial_services() -> tuple[str, str]:
    import os

    database = os.environ.get(
        "ORCH_TRIAL_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    amqp = os.environ.get("ORCH_TRIAL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    return database, amqp


@contextlib.asynccontextmanager
async def _trial_database(base_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database next to `base_url`'s, dropped afterwards."""
    import asyncpg

    from orchestrator.store.migrate import apply_migrations, ensure_database

    name = f"orch_trial_{uuid.uuid4().hex[:10]}"
    url = urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(base_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def _engine(settings: Any) -> AsyncIterator[None]:
    from orchestrator.daemon.app import Engine

    engine = Engine(settings)
    task = asyncio.create_task(engine.run())
    try:
        yield
    finally:
        engine.stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def _worker(settings: Any, topics: list[str]) -> AsyncIterator[None]:
    """A worker that completes every task of every topic with no variables."""
    from workers import TaskContext, Worker

    worker = Worker("try-bpmn", settings=settings)

    async def complete(task: TaskContext) -> dict[str, Any]:
        return {}

    for topic in topics:
        worker.task(topic, concurrency=4)(complete)
    if not topics:
        yield
        return
    async with worker:
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.try_bpmn", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--run", action="store_true", help="deploy and run them too")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to let them run")
    args = parser.parse_args(argv)
    root: Path = args.directory
    outcomes = [try_file(path) for path in sorted(root.rglob("*.bpmn"))]
    report(root, outcomes)
    crashes = sum(outcome.kind == CRASH for outcome in outcomes)
    half = asyncio.run(run(root, outcomes, args.timeout)) if args.run else 0
    if half:
        print(f"\n!! {half} refused file(s) left definitions behind")
    return 1 if crashes or half else 0


if __name__ == "__main__":
    sys.exit(main())
