"""The trial tool on our own BPMN files: each one deploys or is refused, none crashes."""

from __future__ import annotations

from pathlib import Path

from tools.try_bpmn import CRASH, DEPLOYABLE, REFUSED, try_file

DATA = Path(__file__).resolve().parents[1] / "data" / "bpmn"


def test_every_file_deploys_or_is_refused_with_its_lines() -> None:
    outcomes = {path.name: try_file(path) for path in sorted(DATA.glob("*.bpmn"))}
    kinds = {name: outcome.kind for name, outcome in outcomes.items()}
    assert CRASH not in set(kinds.values()), kinds
    assert set(kinds.values()) == {DEPLOYABLE, REFUSED}
    assert kinds["c7_order.bpmn"] == DEPLOYABLE
    assert kinds["call_activity_c8.bpmn"] == DEPLOYABLE
    assert kinds["unsupported_everything.bpmn"] == REFUSED
    refused = outcomes["unsupported_everything.bpmn"]
    assert all(line.startswith("line ") for line in refused.problems)
