"""Fixtures of the fault suite, and its summary table at the end of the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from orchestrator.config import Settings
from tests.faults.report import RESULTS, ROWS, markdown_table, text_table
from tests.faults.workload import Workload
from tests.support.harness import ROOT, Processes
from tests.support.proxy import Proxies

REPORT_FILE = ROOT / "fault-report.md"


@pytest.fixture
async def workload(
    request: pytest.FixtureRequest,
    settings: Settings,
    db: asyncpg.Pool,
    topics: set[str],
    processes: Processes,
) -> AsyncIterator[Workload]:
    load = Workload(settings, db, processes, topics, request.node.nodeid)
    try:
        yield load
    finally:
        await load.cancel()
        # In a thread: a proxy of the test may still carry the processes' connections, and
        # it needs this event loop to shut them down cleanly.
        await asyncio.to_thread(processes.stop_all)
        await load.delete_tap()


@pytest.fixture
async def proxies(processes: Processes) -> AsyncIterator[Proxies]:
    made = Proxies()
    try:
        yield made
    finally:
        # The processes go first, while their connections still work.
        await asyncio.to_thread(processes.stop_all)
        await made.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome: str = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        RESULTS[report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    terminalreporter.section("fault suite")
    for line in text_table(ROWS):
        terminalreporter.write_line(line)
    REPORT_FILE.write_text(markdown_table(ROWS), encoding="utf-8")
    terminalreporter.write_line(f"(also written to {REPORT_FILE.name})")
