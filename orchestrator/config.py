"""Settings shared by the engine, the client, the workers and the CLI."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/orchestrator"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_NAMESPACE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class Settings:
    """Where the services are and how the engine paces itself."""

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    #: Prefix of every exchange and queue, so several deployments can share one vhost.
    namespace: str = "orch"
    #: Reports applied in one transaction at most.
    batch_size: int = 500
    #: Report messages taken per batch (a worker's message may carry up to 100 reports).
    report_messages_per_batch: int = 50
    #: Rounds of starts and reports processed at once per engine (each on its own channels).
    consumers_per_queue: int = 1
    #: How often the reaper looks for expired leases and due retries.
    reaper_interval_ms: int = 200
    #: Outbox rows the relay did not publish are swept up after this long.
    outbox_claim_ms: int = 5_000
    #: Reports larger than this are dead-lettered instead of processed.
    max_report_bytes: int = 1_048_576
    #: How long an idempotency key of a start is remembered after it was used.
    start_key_retention_days: int = 7
    pool_size: int = 8
    #: Active instances whose last written rows the engine keeps, to decide their next
    #: completion without reading them back (0: always lock and read).
    recent_instances: int = 10_000
    #: A queued task that no worker claimed this long after its message was dispatched is
    #: published again (a service task's `dispatch_timeout` overrides it).
    dispatch_timeout_ms: int = 30_000
    #: Re-sends of one attempt without a claim before the task raises a `dispatch_lost`
    #: incident (a service task's `max_redispatches` overrides it).
    max_redispatches: int = 5

    def __post_init__(self) -> None:
        if not _NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}: use [a-z][a-z0-9_-]*")
        if self.dispatch_timeout_ms < 1:
            raise ValueError("dispatch_timeout_ms must be at least 1")
        if self.max_redispatches < 0:
            raise ValueError("max_redispatches must not be negative")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        base = cls(
            database_url=env.get("ORCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url=env.get("ORCH_AMQP_URL", DEFAULT_AMQP_URL),
            namespace=env.get("ORCH_NAMESPACE", "orch"),
            consumers_per_queue=int(env.get("ORCH_CONSUMERS_PER_QUEUE", "1")),
            recent_instances=int(env.get("ORCH_RECENT_INSTANCES", "10000")),
            dispatch_timeout_ms=int(env.get("ORCH_DISPATCH_TIMEOUT_MS", "30000")),
            max_redispatches=int(env.get("ORCH_MAX_REDISPATCHES", "5")),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]
