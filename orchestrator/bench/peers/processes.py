"""What the peers' runners share about the processes they start."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys


def die_with_parent() -> None:
    """Run in each child before exec (Linux): SIGTERM it if the runner dies, e.g. when a
    harness kills the runner on a timeout, so no child outlives its run."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
