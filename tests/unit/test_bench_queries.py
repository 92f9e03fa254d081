"""The benchmark's SQL lives in bench/queries.sql: every statement the code asks for by name
is there, and an identifier a run makes up is quoted, never pasted in as it comes."""

from __future__ import annotations

import re

import pytest

from bench import ROOT
from bench.queries import query, statements


def test_every_statement_named_in_the_code_exists() -> None:
    asked: set[str] = set()
    for path in (ROOT / "bench").rglob("*.py"):
        text = path.read_text("utf-8")
        asked |= set(re.findall(r'\bquery\(\s*"(\w+)"', text))
        asked |= {f"bare_{name}" for name in re.findall(r'names\.sql\(\s*"(\w+)"', text)}
    assert asked, "no query names found in bench/"
    assert asked <= set(statements()), asked - set(statements())
    assert all(text and not text.endswith(";") for text in statements().values())


def test_identifiers_are_quoted() -> None:
    assert query("bare_drop_table", table='odd"name') == 'DROP TABLE IF EXISTS "odd""name"'
    with pytest.raises(KeyError, match="needs the identifier table"):
        query("bare_drop_table")
    with pytest.raises(KeyError, match="no query named"):
        query("nothing_like_this")
