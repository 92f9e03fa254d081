"""The systems `orchestrator bench --peers` runs the same workload on, each in its own process."""

from __future__ import annotations

#: Each peer: its module, which of our services it runs on, and its extra arguments.
PEERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "celery": ("orchestrator.bench.peers.celery_chain", ("amqp",), ()),
    "celery-noconfirm": ("orchestrator.bench.peers.celery_chain", ("amqp",), ("--no-confirms",)),
    "celery-quorum": ("orchestrator.bench.peers.celery_chain", ("amqp",), ("--quorum",)),
    "dbos": ("orchestrator.bench.peers.dbos_workflow", ("database",), ()),
    "bare": ("orchestrator.bench.peers.bare_pipeline", ("amqp", "database"), ()),
    "bare-db-start": (
        "orchestrator.bench.peers.bare_pipeline",
        ("amqp", "database"),
        ("--start-in-database",),
    ),
}
