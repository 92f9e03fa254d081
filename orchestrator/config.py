"""Settings shared by the engine, the client, the workers and the CLI."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from orchestrator.store.session import SessionLimits

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
    #: How long an engine statement waits for a row lock held by another session. The rounds
    #: skip locked instances instead of waiting; this bounds everything else, so one stalled
    #: replica cannot hold up the others.
    db_lock_timeout_ms: int = 100
    #: Server-side limit of one engine statement (operator reads get a longer one).
    db_statement_timeout_ms: int = 10_000
    #: PostgreSQL ends an engine transaction that sits idle this long (a frozen or vanished
    #: engine), and its locks go with it.
    db_idle_in_transaction_timeout_ms: int = 5_000
    #: TCP keepalives of the engine's database sessions, on the server's side of each one:
    #: idle seconds before the first probe, seconds between probes, probes before giving up.
    db_keepalive_idle_s: int = 5
    db_keepalive_interval_s: int = 2
    db_keepalive_count: int = 3
    #: A round that cannot reach PostgreSQL for this long gives its messages back to the
    #: broker (for engines that can) and stops consuming until PostgreSQL answers again.
    db_give_back_after_ms: int = 5_000
    #: How long a client call (start, deploy, a query, retry, cancel) may take in all, its
    #: resends included, unless the call names its own `timeout`.
    client_timeout_s: float = 30.0

    def session_limits(self) -> SessionLimits:
        return SessionLimits(
            lock_timeout_ms=self.db_lock_timeout_ms,
            statement_timeout_ms=self.db_statement_timeout_ms,
            idle_in_transaction_timeout_ms=self.db_idle_in_transaction_timeout_ms,
            keepalive_idle_s=self.db_keepalive_idle_s,
            keepalive_interval_s=self.db_keepalive_interval_s,
            keepalive_count=self.db_keepalive_count,
        )

    #: A queued task that no worker claimed this long after its message was dispatched is
    #: published again (a service task's `dispatch_timeout` overrides it).
    dispatch_timeout_ms: int = 30_000
    #: Re-sends of one attempt without a claim before the task raises a `dispatch_lost`
    #: incident (a service task's `max_redispatches` overrides it).
    max_redispatches: int = 5

    def __post_init__(self) -> None:
        if not _NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}: use [a-z][a-z0-9_-]*")
        if not (math.isfinite(self.client_timeout_s) and self.client_timeout_s > 0):
            raise ValueError(f"client timeout must be positive, not {self.client_timeout_s}")
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
            **_int_settings(env),
            client_timeout_s=_float_setting(env, "ORCH_CLIENT_TIMEOUT", 30.0),
            dispatch_timeout_ms=int(env.get("ORCH_DISPATCH_TIMEOUT_MS", "30000")),
            max_redispatches=int(env.get("ORCH_MAX_REDISPATCHES", "5")),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


#: Integer settings read from the environment as they are: field name -> variable.
_INT_VARIABLES = {
    "db_lock_timeout_ms": "ORCH_DB_LOCK_TIMEOUT_MS",
    "db_statement_timeout_ms": "ORCH_DB_STATEMENT_TIMEOUT_MS",
    "db_idle_in_transaction_timeout_ms": "ORCH_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "db_keepalive_idle_s": "ORCH_DB_KEEPALIVE_IDLE_S",
    "db_keepalive_interval_s": "ORCH_DB_KEEPALIVE_INTERVAL_S",
    "db_keepalive_count": "ORCH_DB_KEEPALIVE_COUNT",
    "db_give_back_after_ms": "ORCH_DB_GIVE_BACK_AFTER_MS",
}


def _int_settings(env: Mapping[str, str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for field_name, variable in _INT_VARIABLES.items():
        if variable in env:
            try:
                found[field_name] = int(env[variable])
            except ValueError:
                raise ValueError(f"{variable} must be an integer, not {env[variable]!r}") from None
    return found


def _float_setting(env: Mapping[str, str], variable: str, default: float) -> float:
    if variable not in env:
        return default
    try:
        return float(env[variable])
    except ValueError:
        raise ValueError(f"{variable} must be a number, not {env[variable]!r}") from None
