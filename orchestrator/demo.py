"""`orchestrator demo`: the order process end to end, with its own engine and workers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import orjson

from orchestrator.client import Client
from orchestrator.config import Settings
from orchestrator.services import resolve
from orchestrator.subprocesses import spawn, stop

T = TypeVar("T")

WORKER_SPEC = "workers.examples.order:worker"


def _example(name: str) -> str:
    return resources.files("orchestrator.definitions").joinpath(f"examples/{name}").read_text()


def example_definition() -> str:
    """The order process the demo deploys: BPMN 2.0 XML (Camunda 7 dialect, with a diagram),
    reserving stock and checking for fraud in parallel."""
    return _example("order.bpmn")


def example_yaml() -> str:
    """The order process in the YAML form (sequential: no fraud check)."""
    return _example("order.yaml")


def run_demo(settings: Settings, instances: int, workers: int, timeout: float) -> int:
    return asyncio.run(_demo(settings, instances, workers, timeout))


async def _demo(settings: Settings, instances: int, workers: int, timeout: float) -> int:
    services = await resolve(settings.database_url, settings.amqp_url)
    settings = replace(settings, database_url=services.database_url, amqp_url=services.amqp_url)
    logs = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = _metrics_ports(settings.metrics_port, workers)
        processes.append(_spawn(settings, logs / "engine.log", ports[0], "engine"))
        for index in range(workers):
            log = logs / f"worker-{index}.log"
            processes.append(_spawn(settings, log, ports[index + 1], "worker", WORKER_SPEC))
        return await _drive(settings, instances, timeout, processes, logs)
    finally:
        await asyncio.to_thread(stop, processes)
        services.stop()


def _metrics_ports(first: int | None, workers: int) -> list[int | None]:
    """With ORCH_METRICS_PORT: the engine serves /metrics on it and each worker process on
    the ports after it (processes on one host cannot share a port)."""
    if first is None:
        return [None] * (workers + 1)
    sys.stderr.write(
        f"metrics: engine on port {first}, workers on {first + 1}..{first + workers}\n"
    )
    return [first + index for index in range(workers + 1)]


def _spawn(
    settings: Settings, log: Path, metrics_port: int | None, *args: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ORCH_DATABASE_URL": settings.database_url,
        "ORCH_AMQP_URL": settings.amqp_url,
        "ORCH_NAMESPACE": settings.namespace,
    }
    if metrics_port is not None:
        env["ORCH_METRICS_PORT"] = str(metrics_port)
    return spawn([sys.executable, "-m", "orchestrator", *args], output=log, env=env)


async def _drive(
    settings: Settings,
    instances: int,
    timeout: float,
    processes: list[subprocess.Popen[bytes]],
    logs: Path,
) -> int:
    async with Client(settings, name="orchestrator-demo") as client:
        deploying = client.deploy(example_definition(), filename="order.bpmn")
        deployed = await _unless_one_dies(deploying, processes, logs)
        _status(
            f"deployed {deployed['process_key']} v{deployed['version']}; "
            f"engine and workers log to {logs}"
        )
        before = await client.stats("order")
        run = uuid.uuid4().hex[:8]
        started_at = time.monotonic()
        await asyncio.gather(
            *(
                client.start(
                    "order",
                    business_key=f"demo-{run}-{i}",
                    variables={
                        "quantity": random.randint(1, 12),
                        "amount": random.choice([25, 120, 480, 9_000]),
                        "order_no": i,
                    },
                )
                for i in range(instances)
            )
        )
        _status(f"started {instances} instances")
        summary = await _wait_for_completion(client, before, instances, timeout, processes)
    summary["elapsed_s"] = round(time.monotonic() - started_at, 3)
    summary["instances"] = instances
    sys.stderr.write("\n")
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if summary["completed"] == instances else 1


async def _unless_one_dies(
    work: Coroutine[Any, Any, T], processes: list[subprocess.Popen[bytes]], logs: Path
) -> T:
    """`work`'s result; if a process the demo started exits first (a port in use, say),
    stop at once with its log's last line instead of waiting for a client timeout."""
    task = asyncio.ensure_future(work)
    while not task.done():
        dead = next((p for p in processes if p.poll() is not None), None)
        if dead is not None:
            task.cancel()
            raise SystemExit(f"a demo process exited early: {_last_line(dead, logs)}")
        await asyncio.wait({task}, timeout=0.2)
    return task.result()


def _last_line(process: subprocess.Popen[bytes], logs: Path) -> str:
    """What the dead process said last: the last line of the log whose process it was
    (engine.log for the engine, the first one, worker-N.log for the others)."""
    name = "engine.log" if process.args[-1] == "engine" else "a worker's log"  # type: ignore[index]
    log = logs / "engine.log"
    lines = log.read_text(errors="replace").strip().splitlines() if name == "engine.log" else []
    said = f": {lines[-1]}" if lines else f" (exit status {process.returncode})"
    return f"{name}{said}; logs in {logs}"


async def _wait_for_completion(
    client: Client,
    before: dict[str, Any],
    instances: int,
    timeout: float,
    processes: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await client.stats("order")
        completed = _delta(stats, before, "completed")
        active = _delta(stats, before, "active")
        incidents = stats["open_incidents"] - before["open_incidents"]
        _status(f"completed {completed}/{instances}  active {active}  incidents {incidents}")
        dead = [p.pid for p in processes if p.poll() is not None]
        if completed >= instances or time.monotonic() > deadline or dead:
            return {
                "completed": completed,
                "active": active,
                "incidents": incidents,
                "dead_processes": dead,
                "ok": completed == instances,
            }
        await asyncio.sleep(0.25)


def _delta(stats: dict[str, Any], before: dict[str, Any], state: str) -> int:
    now: int = stats["instances"].get(state, 0)
    then: int = before["instances"].get(state, 0)
    return now - then


def _status(line: str) -> None:
    sys.stderr.write(f"\r{line}\033[K" if sys.stderr.isatty() else f"{line}\n")
    sys.stderr.flush()
