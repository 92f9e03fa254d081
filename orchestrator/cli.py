"""The `orchestrator` command."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from orchestrator import logs, tracing
from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.errors import NotFound, OrchestratorError
from orchestrator.incident_table import incident_table

#: With no engine consuming the commands queue for this long, a command fails at once
#: instead of waiting for its deadline (an engine that is restarting is back within it).
NO_ENGINE_AFTER_S = 2.0
if TYPE_CHECKING:  # what add_subparsers returns (generic only to type checkers)
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text}")
    return value


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """Seconds from `1h`, `30s`, `500ms`, `2d`, or a plain number of seconds."""
    number, unit = text.strip(), "s"
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if number.endswith(suffix):
            number, unit = number[: -len(suffix)], suffix
            break
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        help="seconds a client command may take in all (default ORCH_CLIENT_TIMEOUT_S or 30)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("engine", help="run the engine daemon (applies migrations first)")
    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    worker = commands.add_parser("worker", help="run workers: orchestrator worker pkg.mod:worker")
    worker.add_argument("spec", help="module:attribute of a workers.Worker")
    _add_client_commands(commands)
    web = commands.add_parser(
        "web", help="run the HTTP API (docs/http-api.md; needs the web extra)"
    )
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    demo = commands.add_parser("demo", help="run the order demo with engine and workers")
    demo.add_argument("--instances", type=int, default=100)
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--timeout", type=float, default=300.0)
    return parser


def _add_client_commands(commands: Subcommands) -> None:
    """The commands that a client sends to the engine."""
    deploy = commands.add_parser(
        "deploy",
        help="deploy a BPMN 2.0 file or a YAML/JSON definition; one JSON line per process",
    )
    deploy.add_argument("file", type=Path)
    start = commands.add_parser("start", help="start an instance; prints its id as JSON")
    start.add_argument("key", help="process key")
    start.add_argument("--business-key")
    start.add_argument("--idempotency-key")
    start.add_argument("--version", type=int)
    start.add_argument("--vars", default="{}", help="variables as a JSON object")
    start.add_argument(
        "--traceparent",
        default=os.environ.get("TRACEPARENT"),
        help="the W3C trace the instance joins (default: $TRACEPARENT)",
    )
    instance = commands.add_parser("instance", help="show an instance as JSON")
    instance.add_argument("id")
    stats = commands.add_parser("stats", help="instance counts and engine counters")
    stats.add_argument("--process")
    incidents = commands.add_parser("incidents", help="list open incidents, newest first")
    incidents.add_argument("--process", help="only this process key")
    incidents.add_argument("--instance", help="only this instance")
    incidents.add_argument("--all", action="store_true", help="resolved ones too")
    incidents.add_argument("--limit", type=int, default=100)
    incidents.add_argument("--json", action="store_true", help="print JSON, not a table")
    retry = commands.add_parser(
        "retry", help="resolve an incident and run its task again: retry INCIDENT|TASK"
    )
    retry.add_argument("id", help="an incident id, or the id of a task with an open incident")
    retry.add_argument(
        "--retries", type=int, default=1, help="attempts before the next incident (default 1)"
    )
    cancel = commands.add_parser("cancel", help="cancel an active instance")
    cancel.add_argument("id", help="instance id")
    cancel.add_argument("--reason")
    set_vars = commands.add_parser("set-variables", help="set variables of an active instance")
    set_vars.add_argument("id", help="instance id")
    set_vars.add_argument("vars", help="the variables as a JSON object: '{\"limit\": 500}'")
    set_vars.add_argument("--scope", help="a scope id (orchestrator instance ID lists them)")
    correlate = commands.add_parser(
        "correlate", help="send a message to the instance waiting for it (or buffer it)"
    )
    correlate.add_argument("name", help="the message name")
    correlate.add_argument("--key", help="the correlation key (default: none)")
    correlate.add_argument("--vars", default="{}", help="variables as a JSON object")
    correlate.add_argument("--message-id", help="count it once across calls (default: new)")
    correlate.add_argument(
        "--ttl", type=_duration, help="how long to buffer it: 1h, 30s, 500ms, 0 (default 1h)"
    )


def _client(settings: Settings) -> Client:
    return Client(settings, name="orchestrator-cli", no_engine_after=NO_ENGINE_AFTER_S)


async def _with_client(settings: Settings, action: Callable[[Client], Awaitable[Any]]) -> None:
    async with _client(settings) as client:
        _print_json(await action(client))


async def _with_client_raw(settings: Settings, action: Callable[[Client], Awaitable[None]]) -> None:
    async with _client(settings) as client:
        await action(client)


async def _start(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    variables = orjson.loads(args.vars)
    if not isinstance(variables, dict):
        raise SystemExit("--vars must be a JSON object")
    started = await client.start(
        args.key,
        variables=variables,
        business_key=args.business_key,
        idempotency_key=args.idempotency_key,
        version=args.version,
        traceparent=_traceparent(args.traceparent),
    )
    return {"instance_id": started.instance_id, "created": started.created}


def _traceparent(text: str | None) -> str | None:
    if not text:
        return None
    if tracing.valid_traceparent(text) is None:
        raise SystemExit(f"--traceparent (or $TRACEPARENT) is not a W3C traceparent: {text!r}")
    return text


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{what} must be a JSON object")
    return value


async def _set_variables(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    return await client.set_variables(
        args.id, _json_object(args.vars, "the variables"), scope=args.scope
    )


async def _correlate(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    variables = _json_object(args.vars, "--vars")
    return await client.correlate(
        args.name, args.key, variables=variables, message_id=args.message_id, ttl=args.ttl
    )


async def _retry(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The id names an incident or a task: try it as an incident first."""
    try:
        return await client.retry(incident_id=args.id, retries=args.retries)
    except NotFound:
        pass
    try:
        return await client.retry(task_id=args.id, retries=args.retries)
    except NotFound:
        message = f"{args.id} is neither an incident nor a task with an open incident"
        raise NotFound(message) from None


async def _deploy(client: Client, args: argparse.Namespace) -> None:
    """One JSON object per deployed process (a BPMN file may hold several)."""
    result = await client.deploy_file(args.file)
    for item in result.get("deployed", [result]):
        sys.stdout.write(orjson.dumps(item).decode() + "\n")


async def _incidents(client: Client, args: argparse.Namespace) -> None:
    found = await client.incidents(
        process_key=args.process,
        instance_id=args.instance,
        include_resolved=args.all,
        limit=args.limit,
    )
    if args.json:
        _print_json(found)
    else:
        sys.stdout.write(incident_table(found))


_CLIENT_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[Any]]] = {
    "start": _start,
    "instance": lambda c, args: c.get_instance(args.id),
    "stats": lambda c, args: c.stats(args.process),
    "retry": _retry,
    "cancel": lambda c, args: c.cancel(args.id, reason=args.reason),
    "set-variables": _set_variables,
    "correlate": _correlate,
}


#: The processes that export spans when OTEL_* says where, by their default service name.
_TRACED_PROCESSES = {
    "engine": "orchestrator-engine",
    "worker": "orchestrator-worker",
    "start": "orchestrator-cli",
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    logs.configure(args.log_level, settings.log_format)
    if args.timeout is not None:
        settings = replace(settings, client_timeout_s=args.timeout)
    try:
        _dispatch(args, settings)
    except OrchestratorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(1) from None


def _dispatch(args: argparse.Namespace, settings: Settings) -> None:
    if args.command in _TRACED_PROCESSES:
        # With the otel extra and OTEL_* asking for an exporter (docs/operations.md#traces).
        tracing.configure_from_environment(_TRACED_PROCESSES[args.command])
    if args.command == "engine":
        from orchestrator.daemon.app import run_engine

        run_engine(settings)
    elif args.command == "migrate":
        from orchestrator.store.commands import migrate

        _print_json(asyncio.run(migrate(settings.database_url)))
    elif args.command == "worker":
        from workers.loader import load_worker

        worker = load_worker(args.spec)
        worker.settings = worker.settings or settings
        worker.run()
    elif args.command == "web":
        from orchestrator.web.app import serve

        serve(settings, args.host, args.port)
    elif args.command in _CLIENT_COMMANDS:
        action = _CLIENT_COMMANDS[args.command]
        asyncio.run(_with_client(settings, lambda c: action(c, args)))
    elif args.command == "incidents":
        asyncio.run(_with_client_raw(settings, lambda c: _incidents(c, args)))
    elif args.command == "deploy":
        asyncio.run(_with_client_raw(settings, lambda c: _deploy(c, args)))
    elif args.command == "demo":
        from orchestrator.demo import run_demo

        raise SystemExit(run_demo(replace(settings), args.instances, args.workers, args.timeout))
