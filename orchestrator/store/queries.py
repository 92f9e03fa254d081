"""Named SQL statements, read once from queries.sql (`-- name: x` starts statement x)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load_queries() -> dict[str, str]:
    return {name: sql.rstrip(";") for name, sql in named_sections("queries.sql", _NAME).items()}


def named_sections(filename: str, marker: re.Pattern[str]) -> dict[str, str]:
    """The sections of an SQL file of this package, each begun by a `marker` line that names
    it, in the file's order."""
    text = resources.files("orchestrator.store").joinpath(filename).read_text("utf-8")
    pieces = marker.split(text)
    sections: dict[str, str] = {}
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        if name in sections:
            raise ValueError(f"{name} is defined twice in {filename}")
        sections[name] = body.strip()
    return sections


class _Queries:
    """Attribute access to the named statements: Q.lock_instance, say."""

    def __getattr__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise AttributeError(f"no query named {name} in queries.sql") from None


Q = _Queries()
