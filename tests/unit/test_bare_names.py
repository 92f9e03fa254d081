"""The bare pipeline's names: every queue of a run and its table come from the run's prefix."""

from __future__ import annotations

import pytest

from bench.peers import PEERS
from bench.peers.bare_pipeline import parse_args
from bench.peers.bare_roles import Names


def test_queues_and_table_follow_the_prefix() -> None:
    names = Names("bare-0123abcd", 3)

    assert names.queues == [
        "bare-0123abcd-starts",
        "bare-0123abcd-reports",
        "bare-0123abcd-step-1",
        "bare-0123abcd-step-2",
        "bare-0123abcd-step-3",
    ]
    assert names.table == "bare_0123abcd"
    assert 'UPDATE "bare_0123abcd"' in names.sql("advance")
    assert names.sql("drop_table") == 'DROP TABLE IF EXISTS "bare_0123abcd"'


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--rate", "-1"])


def test_the_bench_runs_it_on_both_services() -> None:
    module, services, _ = PEERS["bare"]
    assert module == "bench.peers.bare_pipeline"
    assert services == ("amqp", "database")
