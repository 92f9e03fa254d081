"""Spawning and stopping child processes: each in its own process group with its log, stopped
with SIGTERM and a deadline, killed after it, frozen ones included, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.subprocesses import spawn, stop

PYTHON = sys.executable
#: Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
#: Starts a grandchild in its group, then sleeps.
WITH_CHILD = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_a_child_writes_to_its_log_in_a_group_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    proc = spawn(
        [PYTHON, "-c", "import os, sys; print(os.environ['GREETING']); sys.exit(3)"],
        output=log,
        env={**os.environ, "GREETING": "hello"},
    )
    assert os.getpgid(proc.pid) == proc.pid
    assert proc.wait(timeout=30) == 3
    assert log.read_text().strip() == "hello"
    [ended] = stop([proc])
    assert (ended.pid, ended.code, ended.killed) == (proc.pid, 3, False)


def test_stop_terms_then_kills_after_the_deadline(tmp_path: Path) -> None:
    polite = spawn([PYTHON, "-c", "import time; time.sleep(60)"])
    stubborn = spawn([PYTHON, "-c", STUBBORN], output=tmp_path / "stubborn.log")
    frozen = spawn([PYTHON, "-c", "import time; time.sleep(60)"])
    time.sleep(0.3)  # the stubborn one has set its handler
    os.kill(frozen.pid, signal.SIGSTOP)

    began = time.monotonic()
    exits = stop([polite, stubborn, frozen], timeout_s=1.0)

    assert time.monotonic() - began < 10
    codes = {ended.pid: (ended.code, ended.killed) for ended in exits}
    assert codes == {
        polite.pid: (-signal.SIGTERM, False),
        stubborn.pid: (-signal.SIGKILL, True),
        frozen.pid: (-signal.SIGTERM, False),  # continued, then it could act on SIGTERM
    }


def test_nothing_a_child_started_outlives_it() -> None:
    proc = spawn([PYTHON, "-c", WITH_CHILD], output=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert _alive(grandchild)

    stop([proc], timeout_s=5)
    proc.stdout.close()

    assert _eventually(lambda: not _alive(grandchild))


def test_a_child_ends_with_the_parent_that_did_not_stop_it() -> None:
    # A parent that spawns a child and leaves without stopping it (killed, say).
    parent = (
        "import sys; from orchestrator.subprocesses import spawn; "
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True)"
    )
    done = subprocess.run(
        [PYTHON, "-c", parent], capture_output=True, timeout=30, check=True, cwd=Path.cwd()
    )
    child = int(done.stdout)

    assert _eventually(lambda: not _alive(child))
