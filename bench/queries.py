"""The benchmark's SQL by name, read once from queries.sql beside this module.

A `-- name: x` line starts statement x, and `query(name)` is its text. A `{key}` in it is an
identifier a run makes up (a database or a table named after the run), which cannot be a
bound parameter: `query(name, key=value)` fills it in, quoted.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_IDENTIFIER = re.compile(r"\{(\w+)\}")


@cache
def statements() -> dict[str, str]:
    text = (Path(__file__).parent / "queries.sql").read_text("utf-8")
    pieces = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        if name in found:
            raise ValueError(f"{name} is defined twice in bench/queries.sql")
        found[name] = _statement(body)
    return found


def _statement(body: str) -> str:
    """The statement without its semicolon or the comments that follow it (a heading of the
    next group)."""
    lines = body.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].startswith("--")):
        lines.pop()
    return "\n".join(lines).rstrip(";")


def query(name: str, **identifiers: str) -> str:
    try:
        text = statements()[name]
    except KeyError:
        raise KeyError(f"no query named {name} in bench/queries.sql") from None

    def quoted(match: re.Match[str]) -> str:
        try:
            value = identifiers[match[1]]
        except KeyError:
            raise KeyError(f"query {name} needs the identifier {match[1]}") from None
        return '"' + value.replace('"', '""') + '"'

    return _IDENTIFIER.sub(quoted, text)
