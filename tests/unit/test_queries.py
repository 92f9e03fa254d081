from __future__ import annotations

import re
from pathlib import Path

from orchestrator.store.queries import load_queries

ROOT = Path(__file__).resolve().parents[2] / "orchestrator"


def test_every_named_query_is_used() -> None:
    code = "\n".join(path.read_text() for path in ROOT.rglob("*.py"))
    unused = [name for name in load_queries() if f"Q.{name}" not in code]
    assert unused == []


def test_every_used_query_exists() -> None:
    code = "\n".join(path.read_text() for path in ROOT.rglob("*.py"))
    used = set(re.findall(r"\bQ\.(\w+)", code))
    assert used - set(load_queries()) == set()
