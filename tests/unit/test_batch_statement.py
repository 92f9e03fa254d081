"""The batch statement holds only the parts given, numbers their parameters without gaps,
and keeps the guard over exactly the guarded parts it holds."""

from __future__ import annotations

import re

import pytest

from orchestrator.store.batch_statement import (
    GUARDED,
    batch_statement,
    load_parts,
    parameter_count,
)


def _numbers(sql: str) -> list[int]:
    return sorted({int(n) for n in re.findall(r"\$(\d+)", sql)})


def test_each_part_numbers_its_parameters_from_one_without_gaps() -> None:
    for name, sql in load_parts().items():
        count = parameter_count(sql)
        assert count > 0, name
        assert _numbers(sql) == list(range(1, count + 1)), name


def test_statement_holds_only_the_parts_given_in_file_order() -> None:
    parts = load_parts()
    # Given out of file order: the statement and its arguments still follow the file.
    given = {
        "new_outbox": [5000, ["rk"], ["id"], [b"body"], [None]],
        "changed_tasks": [[f"t{i}"] for i in range(11)],
    }
    sql, args = batch_statement(given, expected_rows=1)
    assert sql.index("changed_tasks AS (") < sql.index("new_outbox AS (")
    for name in set(parts) - set(given):
        assert f"{name} AS (" not in sql
    assert args == [*given["changed_tasks"], *given["new_outbox"], 1]
    assert _numbers(sql) == list(range(1, len(args) + 1))
    # The outbox part's scalar came after the task part's 11 parameters.
    assert "make_interval(secs => $12::integer" in sql
    assert "ARRAY(SELECT id FROM new_outbox ORDER BY id)" in sql


def test_guard_counts_exactly_the_guarded_parts_present() -> None:
    sql, _ = batch_statement({"changed_instances": [[]] * 6, "start_keys": [[]] * 3}, 2)
    guard = sql[sql.index("orch_expect_rows(") :]
    assert "+ (SELECT count(*) FROM changed_instances)" in guard
    assert "+ (SELECT count(*) FROM start_keys)" in guard
    assert "changed_tasks" not in guard and "newer_definitions" not in guard
    sql, _ = batch_statement({"newer_definitions": [["k"], [1]]}, 0)
    assert "0 - (SELECT count(*) FROM newer_definitions)" in sql
    assert set(GUARDED) <= set(load_parts())


def test_nothing_to_write_is_a_bare_guard_and_unknown_parts_fail() -> None:
    sql, args = batch_statement({}, 0)
    assert sql.startswith("SELECT orch_expect_rows(0, $1::bigint)")
    assert args == [0]
    with pytest.raises(KeyError):
        batch_statement({"no_such_part": [[]]}, 0)
