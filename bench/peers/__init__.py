"""The systems `./dev bench --peers` runs the same workload on, each in its own process."""

from __future__ import annotations

#: Each peer: its module, which of our services it runs on, and its extra arguments.
PEERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "celery": ("bench.peers.celery_chain", ("amqp",), ()),
    "celery-noconfirm": ("bench.peers.celery_chain", ("amqp",), ("--no-confirms",)),
    "celery-quorum": ("bench.peers.celery_chain", ("amqp",), ("--quorum",)),
    "dbos": ("bench.peers.dbos_workflow", ("database",), ()),
    "bare": ("bench.peers.bare_pipeline", ("amqp", "database"), ()),
    "bare-db-start": (
        "bench.peers.bare_pipeline",
        ("amqp", "database"),
        ("--start-in-database",),
    ),
}
