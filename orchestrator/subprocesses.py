"""Child processes: start one (its command, environment, log and process group), stop a set.

The demo, the benchmark and its peers, and the tests run engines and workers as real
processes. They all start them with `spawn` and end them with `stop`: SIGTERM, one deadline
for the whole set, then SIGKILL to whatever is still there, and each exit reported.

A child gets its own process group, so a Ctrl-C at the terminal reaches only the parent,
which then stops its children in order (rather than every process at once), and so a
SIGKILL at the end reaches what the child started itself (a pool of processes, say). On
Linux a child also gets SIGTERM should its parent die without stopping it, so none outlives
a run that was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: Where a child's output goes: a file (created anew), or what subprocess takes
#: (subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT for the standard error).
Output = Path | int | None

#: How long a SIGKILLed process may take to be gone.
KILLED_WITHIN_S = 5.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Exit:
    """How one child ended."""

    pid: int
    #: Its exit status; negative: the signal that ended it (-9: SIGKILL).
    code: int
    #: It was still running at the deadline, and was killed.
    killed: bool


def spawn(
    args: Sequence[str],
    *,
    output: Output = None,
    errors: Output = subprocess.STDOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `args` in a process group of its own. `output` takes its standard output;
    `errors` its standard error (by default the same place; None: ours). With
    `die_with_parent` (Linux), it gets SIGTERM when the thread that spawned it ends: spawn
    from a thread that lasts as long as the child should (the main one, say)."""
    with contextlib.ExitStack() as files:

        def opened(target: Output) -> IO[bytes] | int | None:
            if isinstance(target, Path):
                return files.enter_context(target.open("wb"))
            return target

        return subprocess.Popen(
            list(args),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=opened(output),
            stderr=opened(errors),
            process_group=0,
            preexec_fn=_death_signal() if die_with_parent else None,
        )


def stop(
    procs: Sequence[subprocess.Popen[Any]],
    *,
    timeout_s: float = 30.0,
    signum: int | None = signal.SIGTERM,
) -> list[Exit]:
    """Stop every process in `procs` that still runs and wait for them all.

    Each gets `signum` (None: it was asked some other way already, its stdin closed, say),
    after SIGCONT, since a frozen (SIGSTOP) process cannot act on it. Whatever still runs at
    `timeout_s` after that is killed with SIGKILL. A child that leads its own process group
    (as `spawn` makes them) then has its group killed too, so nothing it started outlives it.
    """
    leaders = [proc.pid for proc in procs if _leads_group(proc)]
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                if signum is not None:
                    proc.send_signal(signum)
    deadline = time.monotonic() + timeout_s
    killed = set()
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.add(proc.pid)
            proc.kill()
    for proc in procs:
        proc.wait(timeout=KILLED_WITHIN_S)  # raises if even SIGKILL did not end it
    exits = [Exit(proc.pid, proc.returncode, proc.pid in killed) for proc in procs]
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return exits


def _leads_group(proc: subprocess.Popen[Any]) -> bool:
    """Whether the child leads a process group (asked before it is reaped: until then its
    pid, and so its group id, cannot be anyone else's)."""
    if proc.returncode is not None:
        return False
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


@functools.cache
def _death_signal() -> Callable[[], None] | None:
    """What a child runs before its program (Linux): SIGTERM it when its parent's spawning
    thread ends. Looked up here, in the parent, so the child only makes the call."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return set_death_signal
