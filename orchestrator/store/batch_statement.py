"""The one statement that writes a batch, made of only the parts the batch has rows for.

The parts are the CTEs of write_batch.sql. A statement is built once per combination of
parts and cached (asyncpg then prepares it once per connection). Whatever parts it holds,
it ends in the same guard: every changed instance and task must still have been at the
version the batch read, every start key new, and every definition assumed latest still so;
otherwise orch_expect_rows raises serialization_failure and the statement writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from orchestrator.store.queries import named_sections

_PART = re.compile(r"^-- part: (\w+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"\$(\d+)")

#: Parts whose returned rows the guard counts: toward the rows expected (+), or against (-).
GUARDED = {
    "changed_instances": "+ (SELECT count(*) FROM changed_instances)",
    "changed_tasks": "+ (SELECT count(*) FROM changed_tasks)",
    "redispatched": "+ (SELECT count(*) FROM redispatched)",
    "start_keys": "+ (SELECT count(*) FROM start_keys)",
    "newer_definitions": "- (SELECT count(*) FROM newer_definitions)",
}
#: The part whose new ids the statement returns, in id order.
OUTBOX = "new_outbox"
OUTBOX_IDS = "ARRAY(SELECT id FROM new_outbox ORDER BY id)"
NO_IDS = "'{}'::bigint[]"
#: The part whose returned rows name the workers that held a withdrawn task (a call
#: activity's holder, the engine, is no worker): [task id, attempt, worker id] each.
WITHDRAWN = "withdrawn_tasks"
REVOKED = (
    "(SELECT coalesce(jsonb_agg(jsonb_build_array(id, attempt, holder)), '[]'::jsonb)"
    " FROM withdrawn_tasks WHERE was = 'claimed' AND holder IS NOT NULL AND holder <> 'engine')"
)
NO_REVOKED = "'[]'::jsonb"


@cache
def load_parts() -> dict[str, str]:
    """Part name to its SQL, in the order of the file (the order the CTEs are written in)."""
    return named_sections("write_batch.sql", _PART)


def parameter_count(sql: str) -> int:
    return max((int(n) for n in _PARAM.findall(sql)), default=0)


def batch_statement(
    columns: Mapping[str, Sequence[Any]], expected_rows: int
) -> tuple[str, list[Any]]:
    """The statement for the parts in `columns` (each with its parameters, in the part's own
    order) and its arguments: theirs in file order, then the number of rows the guard
    expects."""
    names = tuple(name for name in load_parts() if name in columns)
    unknown = set(columns) - set(names)
    if unknown:
        raise KeyError(f"no such part in write_batch.sql: {sorted(unknown)}")
    args = [value for name in names for value in columns[name]]
    args.append(expected_rows)
    return _statement(names), args


@cache
def _statement(names: tuple[str, ...]) -> str:
    parts = load_parts()
    ctes: list[str] = []
    offset = 0
    for name in names:
        ctes.append(f"{name} AS (\n{_renumbered(parts[name], offset)}\n)")
        offset += parameter_count(parts[name])
    written = "".join(f" {GUARDED[name]}" for name in GUARDED if name in names)
    outbox = OUTBOX_IDS if OUTBOX in names else NO_IDS
    revoked = REVOKED if WITHDRAWN in names else NO_REVOKED
    head = ("WITH " + ",\n".join(ctes) + "\n") if ctes else ""
    return (
        f"{head}SELECT orch_expect_rows(0{written}, ${offset + 1}::bigint) AS current,\n"
        f"       {outbox} AS outbox_ids,\n"
        f"       {revoked} AS revoked"
    )


def _renumbered(sql: str, offset: int) -> str:
    return _PARAM.sub(lambda match: f"${int(match.group(1)) + offset}", sql)
