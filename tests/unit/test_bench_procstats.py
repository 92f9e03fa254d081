"""The benchmark's CPU and memory figures: a live process has some, a gone one none, and the
peak of a group is the largest sample of any of its processes."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import subprocess
import sys
import time

from bench.procstats import CpuMeter, PeakRss, cpu_seconds, descendants, rss_mb

#: Above the largest pid Linux hands out (2**22): never a live process.
GONE = 2**22 + 1
SLEEPER = "import time; time.sleep(30)"


def test_a_live_process_has_cpu_and_memory_and_a_gone_one_none() -> None:
    sum(range(200_000))
    assert cpu_seconds(os.getpid()) > 0
    assert (rss_mb(os.getpid()) or 0) > 1
    assert cpu_seconds(GONE) == 0.0 and rss_mb(GONE) is None and descendants(GONE) == []


def test_the_meter_counts_per_group() -> None:
    meter = CpuMeter({"us": [os.getpid()], "nobody": [], "gone": [GONE]})
    meter.start()
    sum(range(500_000))
    used = meter.stop()
    assert used["us"] >= 0 and used["nobody"] == 0 and used["gone"] == 0


async def test_the_peak_is_the_largest_sample() -> None:
    peak = PeakRss([os.getpid(), GONE], interval_s=0.01)
    before = rss_mb(os.getpid()) or 0.0
    async with peak.sampling():
        # A mapping of its own, written, so resident: memory from the allocator could reuse
        # pages an earlier test freed and left resident, and not grow the RSS at all.
        held = mmap.mmap(-1, 64 * 2**20)
        held.write(b"x" * len(held))
        await asyncio.sleep(0.1)
        held.close()  # gone before the block ends: only the samples in between saw it
    assert peak.mb is not None and peak.mb >= before + 32


def test_descendants_include_grandchildren() -> None:
    code = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); {SLEEPER}"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(found := descendants(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(found) == 1
        assert set(descendants(os.getpid())) >= {child.pid, *found}
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()
