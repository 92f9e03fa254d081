"""Settings shared by the engine, the client, the workers and the CLI.

`Settings(...)` takes its values from its arguments only; `Settings.from_env()` reads each
field from its variable, `ORCH_` and the field's name in capitals (`batch_size` is
`ORCH_BATCH_SIZE`), with its arguments overriding the environment. `variables()` lists them.
Both paths validate the same way, and a bad value names the variable it came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, AliasChoices, Field, ValidationError, create_model
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.store.session import SessionLimits

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/orchestrator"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ENV_PREFIX = "ORCH_"
_NAMESPACE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def _namespace(value: str) -> str:
    if not _NAMESPACE_PATTERN.match(value):
        raise ValueError(f"invalid namespace {value!r}: use [a-z][a-z0-9_-]*, up to 40")
    return value


#: At least 1.
Positive = Annotated[int, Field(ge=1)]
#: 0 or more (for PostgreSQL's timeouts, 0 turns the limit off).
NonNegative = Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class Settings:
    """Where the services are and how the engine paces itself."""

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    #: Prefix of every exchange and queue, so several deployments can share one vhost.
    namespace: Annotated[str, AfterValidator(_namespace)] = "orch"
    #: Reports applied in one transaction at most.
    batch_size: Positive = 500
    #: Report messages taken per batch (a worker's message may carry up to 100 reports).
    report_messages_per_batch: Positive = 50
    #: Rounds of starts and reports processed at once per engine (each on its own channels).
    consumers_per_queue: Positive = 1
    #: How often the reaper looks for expired leases and due retries.
    reaper_interval_ms: Positive = 200
    #: Outbox rows the relay did not publish are swept up after this long.
    outbox_claim_ms: Positive = 5_000
    #: Reports larger than this are dead-lettered instead of processed.
    max_report_bytes: Positive = 1_048_576
    #: How long an idempotency key of a start is remembered after it was used.
    start_key_retention_days: Positive = 7
    pool_size: Positive = 8
    #: Active instances whose last written rows the engine keeps, to decide their next
    #: completion without reading them back (0: always lock and read).
    recent_instances: NonNegative = 10_000
    #: How long an engine statement waits for a row lock held by another session. The rounds
    #: skip locked instances instead of waiting; this bounds everything else, so one stalled
    #: replica cannot hold up the others.
    db_lock_timeout_ms: NonNegative = 100
    #: Server-side limit of one engine statement (operator reads get a longer one).
    db_statement_timeout_ms: NonNegative = 10_000
    #: PostgreSQL ends an engine transaction that sits idle this long (a frozen or vanished
    #: engine), and its locks go with it.
    db_idle_in_transaction_timeout_ms: NonNegative = 5_000
    #: TCP keepalives of the engine's database sessions, on the server's side of each one:
    #: idle seconds before the first probe, seconds between probes, probes before giving up.
    db_keepalive_idle_s: NonNegative = 5
    db_keepalive_interval_s: NonNegative = 2
    db_keepalive_count: NonNegative = 3
    #: A round that cannot reach PostgreSQL for this long gives its messages back to the
    #: broker (for engines that can) and stops consuming until PostgreSQL answers again.
    db_give_back_after_ms: NonNegative = 5_000
    #: How long a client call (start, deploy, a query, retry, cancel) may take in all, its
    #: resends included, unless the call names its own `timeout`.
    client_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0
    #: A queued task that no worker claimed this long after its message was dispatched is
    #: published again (a service task's `dispatch_timeout` overrides it).
    dispatch_timeout_ms: Positive = 30_000
    #: Re-sends of one attempt without a claim before the task raises a `dispatch_lost`
    #: incident (a service task's `max_redispatches` overrides it).
    max_redispatches: NonNegative = 5
    #: Bearer tokens of the HTTP API (`orchestrator web`): `token=role,token2=role2`, each
    #: role `read` or `operator`. Unset: every /api request is refused.
    web_tokens: str | None = dataclasses.field(default=None, repr=False)
    #: Where `orchestrator web` finds bpmn-js's `dist` folder (None: `web/node_modules` of a
    #: checkout, which `./dev setup` fills; the container image sets it).
    web_bpmn_js: str | None = None
    #: Serve Prometheus metrics on this port at /metrics, in the engine and in each worker
    #: process (None: no metrics served). See docs/operations.md.
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: The CLI's log lines: `text`, or `json` (one JSON object a line).
    log_format: Literal["text", "json"] = "text"

    def session_limits(self) -> SessionLimits:
        return SessionLimits(
            lock_timeout_ms=self.db_lock_timeout_ms,
            statement_timeout_ms=self.db_statement_timeout_ms,
            idle_in_transaction_timeout_ms=self.db_idle_in_transaction_timeout_ms,
            keepalive_idle_s=self.db_keepalive_idle_s,
            keepalive_interval_s=self.db_keepalive_interval_s,
            keepalive_count=self.db_keepalive_count,
        )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the `ORCH_*` variables; `overrides` (field names) win over them."""
        unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(map(repr, unknown))}")
        arguments: dict[str, Any] = dict(overrides)
        try:
            read = _Environment(**arguments)
        except ValidationError as exc:
            problems = (_explain(error, overrides) for error in exc.errors())
            raise ValueError("; ".join(problems)) from None
        return cls(**read.model_dump())

    @classmethod
    def variables(cls) -> dict[str, tuple[str, ...]]:
        """Each field's variables, the first one its own and any others older names."""
        return {field.name: _variables_of(field.name) for field in dataclasses.fields(cls)}


#: Older variable names still read, after the field's own (the documented ones).
_OLDER_NAMES: Mapping[str, tuple[str, ...]] = {"client_timeout_s": ("ORCH_CLIENT_TIMEOUT",)}


def _variables_of(field_name: str) -> tuple[str, ...]:
    return (ENV_PREFIX + field_name.upper(), *_OLDER_NAMES.get(field_name, ()))


class _EnvironmentBase(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then the process environment: no .env file, no secrets directory.
        return init_settings, env_settings


def _environment_fields() -> dict[str, Any]:
    """Settings' fields, their types with their constraints, and their variables."""
    kinds = get_type_hints(Settings, include_extras=True)
    return {
        field.name: (
            kinds[field.name],
            Field(field.default, validation_alias=AliasChoices(*_variables_of(field.name))),
        )
        for field in dataclasses.fields(Settings)
    }


#: The same fields, read from the environment: one declaration (Settings) for both paths.
_Environment = create_model(
    "SettingsFromEnvironment", __base__=_EnvironmentBase, **_environment_fields()
)


def _explain(error: ErrorDetails, overrides: Mapping[str, object]) -> str:
    """One bad value, named by the variable it came from (or the field, for an argument):
    `ORCH_BATCH_SIZE must be an integer, not 'x'`."""
    field_name = str(error["loc"][0]).removeprefix(ENV_PREFIX).lower() if error["loc"] else ""
    source = field_name
    if field_name not in overrides:
        source = next((n for n in _variables_of(field_name) if n in os.environ), field_name)
    if error["type"] == "value_error":
        return f"{source}: {error['msg'].removeprefix('Value error, ')}"
    return f"{source} must be {_expected(error)}, not {error.get('input')!r}"


def _expected(error: ErrorDetails) -> str:
    kind, limits = error["type"], error.get("ctx", {})
    if kind.startswith("int_"):
        return "an integer"
    if kind.startswith("float_"):
        return "a number"
    if kind == "greater_than_equal":
        return f"at least {limits['ge']}"
    if kind == "greater_than":
        return f"greater than {limits['gt']}"
    return error["msg"].removeprefix("Input should be ")
