"""The fault suite's summary: one row per scenario, printed at the end of the run and written
as Markdown to fault-report.md at the repository root (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

HEADERS = (
    "scenario",
    "instances",
    "faults injected",
    "lost",
    "applied twice",
    "repeat runs",
    "ledger repeats",
    "duration s",
    "result",
)


@dataclass(frozen=True)
class Row:
    nodeid: str
    scenario: str
    instances: int
    faults: str
    lost: int
    applied_twice: int
    #: Handler runs beyond the first of their task (the effect found already applied).
    repeat_runs: int
    #: Completions the engine received again and recorded instead of applying.
    ledger_repeats: int
    duration_s: float

    def cells(self, result: str) -> tuple[str, ...]:
        return (
            self.scenario,
            str(self.instances),
            self.faults,
            str(self.lost),
            str(self.applied_twice),
            str(self.repeat_runs),
            str(self.ledger_repeats),
            f"{self.duration_s:.1f}",
            result,
        )


#: Filled by the scenarios as they finish; the terminal summary prints it.
ROWS: list[Row] = []
#: Test outcome by node id ("passed", "failed", "xfailed", ...), filled by conftest.py.
RESULTS: dict[str, str] = {}


def _cells(rows: list[Row]) -> list[tuple[str, ...]]:
    return [row.cells(RESULTS.get(row.nodeid, "?")) for row in rows]


def text_table(rows: list[Row]) -> list[str]:
    table = [HEADERS, *_cells(rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    numeric = {1, 3, 4, 5, 6, 7}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(HEADERS), "  ".join("-" * width for width in widths), *map(line, table[1:])]


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join("---" for _ in HEADERS) + " |",
        *("| " + " | ".join(cells) + " |" for cells in _cells(rows)),
    ]
    return "\n".join(lines) + "\n"
