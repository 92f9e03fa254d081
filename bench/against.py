"""Two versions of the engine measured at the same time on the same machine.

On a shared or virtual machine the speed drifts: runs a few minutes apart can differ by 2x,
which drowns any change worth making. `./dev bench --against DIR` runs the same workload twice
at once: this checkout, and another checkout of the project in DIR (its `orchestrator` package
and its benchmark, imported first through PYTHONPATH). Each side has its own database,
namespace, engine, workers and client, and both see the same machine. The other side runs as a
separate benchmark with `--json`; its result comes back under `against`.

The other checkout may be older than this one: until the benchmark moved out of the package it
lived in `orchestrator/bench` and ran as `orchestrator bench`. Both layouts are recognised.
Older benchmarks have no `--shape` either: the default (sequential) workload is asked of them
as before, with no `--shape`; another shape only of a benchmark whose `--help` offers it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

import orchestrator
from bench import shapes
from orchestrator.subprocesses import spawn, stop

if TYPE_CHECKING:  # the runner imports this module
    from bench.run import BenchOptions


class AgainstError(ValueError):
    """The directory given to --against is not a checkout of this project."""


def this_checkout() -> Path:
    """The checkout whose `orchestrator` package this process imported."""
    return Path(orchestrator.__file__).resolve().parent.parent


def checkout(directory: str) -> Path:
    path = Path(directory).resolve()
    if not (path / "orchestrator" / "__init__.py").is_file():
        raise AgainstError(f"{directory} is not a checkout of this project (no orchestrator/)")
    bench_command(path)
    return path


def bench_command(path: Path) -> list[str]:
    """How the checkout in `path` runs its benchmark (after the interpreter), by its layout."""
    if (path / "bench" / "__main__.py").is_file():
        return ["-m", "bench"]
    if (path / "orchestrator" / "bench" / "__init__.py").is_file():
        return ["-m", "orchestrator", "bench"]  # before the benchmark left the package
    raise AgainstError(f"{path} has no benchmark (neither bench/ nor orchestrator/bench/)")


def check_shape(path: Path, shape: str) -> None:
    """Refuse a shape the benchmark in `path` cannot run. Any benchmark runs the sequential
    one (before `--shape` existed it was the only one); another needs `--shape` offering it,
    which the other side's own `--help` tells."""
    if shape == shapes.SEQUENTIAL:
        return
    command = [sys.executable, *bench_command(path), "--help"]
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=60, check=False, env=_env(path), cwd=path
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgainstError(f"could not ask the benchmark in {path} for its options: {exc}") from exc
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        errors = done.stderr.decode(errors="replace").strip()[-500:]
        raise AgainstError(
            f"the benchmark in {path} did not answer --help (exit {done.returncode}): {errors}"
        )
    if "--shape" not in text or shape not in text:
        raise AgainstError(
            f"the benchmark in {path} has no --shape {shape} (it is older: it runs only the "
            "sequential workload). Compare --shape sequential against it, or check out a "
            "version whose benchmark has --shape."
        )


def _env(path: Path) -> dict[str, str]:
    """Our environment with the checkout in `path` first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return env


def label(path: Path) -> str:
    """The other side's name in the table: its commit if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"orchestrator@{path.name}"
    commit = done.stdout.decode().strip()
    return f"orchestrator@{commit if done.returncode == 0 and commit else path.name}"


def bench_arguments(options: BenchOptions) -> list[str]:
    """The other side's command line: the same workload, JSON out. `--shape` only for a
    shape other than the default, which older benchmarks run without knowing the option."""
    shape = [] if options.shape == shapes.SEQUENTIAL else ["--shape", options.shape]
    return [
        "--instances", str(options.instances),
        "--steps", str(options.steps),
        "--worker-processes", str(options.worker_processes),
        "--engines", str(options.engines),
        "--payload-bytes", str(options.payload_bytes),
        "--rate", str(options.rate),
        "--rate-seconds", str(options.rate_seconds),
        *shape,
        "--json",
    ]  # fmt: skip


@dataclass
class OtherSide:
    path: Path
    process: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def start(cls, directory: str, options: BenchOptions, workdir: Path) -> OtherSide:
        path = checkout(directory)
        check_shape(path, options.shape)
        env = _env(path)
        output = workdir / "against.out"
        process = spawn(
            [sys.executable, *bench_command(path), *bench_arguments(options)],
            output=output,
            errors=workdir / "against.err",
            env=env,
            cwd=path,
        )
        return cls(path, process, output)

    def result(self, timeout_s: float) -> dict[str, Any]:
        name = label(self.path)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"name": name, "error": f"timed out after {timeout_s:.0f}s"}
        lines = self.output.read_text(errors="replace").strip().splitlines()
        if self.process.returncode != 0 or not lines:
            errors = (self.output.parent / "against.err").read_text(errors="replace")
            return {"name": name, "error": f"exit {self.process.returncode}: {errors[-2000:]}"}
        theirs: dict[str, Any] = orjson.loads(lines[-1])
        theirs["name"] = name
        return theirs

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if need be (its engine and workers end with it)."""
        stop([self.process])
