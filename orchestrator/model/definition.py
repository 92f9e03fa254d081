"""The process graph: the form every definition (YAML, JSON, later BPMN XML) is turned into.

Node and flow ids are the element ids of BPMN 2.0, so a BPMN file maps onto this model one
element to one node.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1}


def parse_duration_ms(value: object) -> int:
    """Accept 1500, "1500ms", "1.5s", "5m", "1h"; a bare number is milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of milliseconds or a string like '30s'")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    raise ValueError(f"invalid duration {value!r}: use milliseconds or '500ms', '30s', '5m', '1h'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Strict):
    """Server-side retries of one task (Camunda's retries and retryTimeout, Temporal's policy)."""

    max_attempts: int = Field(3, ge=1, le=1000)
    initial_backoff_ms: int = Field(1000, ge=0)
    backoff_coefficient: float = Field(2.0, ge=1.0, le=100.0)
    max_backoff_ms: int = Field(300_000, ge=0)
    jitter: float = Field(0.1, ge=0.0, le=1.0)
    non_retryable_codes: tuple[str, ...] = ()

    @field_validator("initial_backoff_ms", "max_backoff_ms", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)


class StartEvent(_Strict):
    type: Literal["start_event"]
    id: str
    name: str | None = None


class EndEvent(_Strict):
    type: Literal["end_event"]
    id: str
    name: str | None = None


class ServiceTask(_Strict):
    """An external task: the engine publishes it to the topic's queue; a worker does it."""

    type: Literal["service_task"]
    id: str
    name: str | None = None
    topic: str
    lock_ms: int = Field(30_000, alias="lock", ge=500, le=86_400_000)
    retry: RetryPolicy = RetryPolicy()
    #: After this many expired leases the task raises an incident instead of looping.
    max_lease_expiries: int = Field(5, ge=1, le=1000)
    #: A queued task that no worker claimed this long after its message went out is
    #: published again (None: the engine's setting, ORCH_DISPATCH_TIMEOUT_MS).
    dispatch_timeout_ms: int | None = Field(None, alias="dispatch_timeout", ge=100, le=86_400_000)
    #: Re-sends without a claim before the task raises a `dispatch_lost` incident (None: the
    #: engine's setting, ORCH_MAX_REDISPATCHES).
    max_redispatches: int | None = Field(None, ge=0, le=1000)

    @field_validator("lock_ms", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)

    @field_validator("dispatch_timeout_ms", mode="before")
    @classmethod
    def _optional_duration(cls, value: object) -> int | None:
        return None if value is None else parse_duration_ms(value)

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Options left to the engine's settings are not written out: a definition deployed
        before they existed keeps its content hash (and its version on a redeploy)."""
        data = handler(self)
        if isinstance(data, dict):
            for name in _ENGINE_DEFAULTED:
                if name in data and data[name] is None:
                    del data[name]
        return data


#: ServiceTask options whose None means "the engine's setting", under either spelling.
_ENGINE_DEFAULTED = ("dispatch_timeout", "dispatch_timeout_ms", "max_redispatches")


class ExclusiveGateway(_Strict):
    """Takes the first outgoing flow whose condition holds, else the default flow."""

    type: Literal["exclusive_gateway"]
    id: str
    name: str | None = None
    default: str | None = None


class ErrorBoundaryEvent(_Strict):
    """Catches a business error (BpmnError) of the service task it is attached to.

    With `error_code` it catches that code only; without, every code (a catch-all). The
    worker's variables are merged into the instance; `code_variable` and `message_variable`
    name variables that receive the error's code and message (as Camunda's errorCodeVariable).
    """

    type: Literal["error_boundary_event"]
    id: str
    name: str | None = None
    attached_to: str
    error_code: str | None = Field(None, min_length=1, max_length=200)
    code_variable: str | None = None
    message_variable: str | None = None


Node = Annotated[
    StartEvent | EndEvent | ServiceTask | ExclusiveGateway | ErrorBoundaryEvent,
    Field(discriminator="type"),
]


class SequenceFlow(_Strict):
    id: str
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    condition: str | None = None


class BusinessKeyPolicy(_Strict):
    """Whether two active instances may share a business key, and what a second start gets."""

    unique: bool = False
    on_duplicate: Literal["reject", "return_existing"] = "reject"


class ProcessDefinition(_Strict):
    key: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
    name: str | None = None
    business_key: BusinessKeyPolicy = BusinessKeyPolicy()
    nodes: tuple[Node, ...]
    flows: tuple[SequenceFlow, ...]
