"""What the peers' runners share about the processes they start."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys


def die_with_parent() -> None:
    """Run in each child before exec (Linux): SIGTERM it if the runner dies, e.g. when a
    harness kills the runner on a timeout, so no child outlives its run."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_all(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """SIGTERM every process still running, then wait; SIGKILL one that outlasts `timeout_s`."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
