"""Named SQL statements, read once from queries.sql (`-- name: x` starts statement x)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load_queries() -> dict[str, str]:
    text = resources.files("orchestrator.store").joinpath("queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} is defined twice in queries.sql")
        queries[name] = body.strip().rstrip(";")
    return queries


class _Queries:
    """Attribute access to the named statements: Q.lock_instance, say."""

    def __getattr__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise AttributeError(f"no query named {name} in queries.sql") from None


Q = _Queries()
