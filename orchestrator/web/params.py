"""Query parameters and request bodies, each a pydantic model: a bad one is a 422
`{"error": ..., "field": ...}` naming the parameter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

#: Text passed to PostgreSQL: no NUL (PostgreSQL text cannot hold it).
_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(min_length=1, max_length=500, pattern=_NO_NUL)]
#: PostgreSQL's integer.
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]


def _aware(value: datetime) -> datetime:
    """A datetime without a zone is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


When = Annotated[datetime, AfterValidator(_aware)]


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("not a UUID") from None


Uuid = Annotated[str, Field(max_length=64), AfterValidator(_uuid)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(_Params):
    limit: int = Field(50, ge=1, le=500, description="At most this many (1..500).")
    offset: int = Field(0, ge=0, le=1_000_000, description="Skip this many first.")


class DefinitionQuery(Page):
    key: Text | None = Field(None, description="Only this process key.")


class InstanceQuery(Page):
    process: Text | None = Field(None, description="Only this process key.")
    version: Version | None = Field(None, description="Only this definition version.")
    state: Literal["active", "completed", "cancelled"] | None = Field(
        None, description="Only instances in this state."
    )
    business_key: Text | None = Field(None, description="Only this business key.")
    has_incident: bool | None = Field(
        None, description="true: only with an open incident; false: only without."
    )
    started_after: When | None = Field(None, description="Started at or after (ISO 8601).")
    started_before: When | None = Field(None, description="Started before (ISO 8601).")

    def filters(self) -> tuple[Any, ...]:
        return (
            self.process,
            self.version,
            self.state,
            self.business_key,
            self.has_incident,
            self.started_after,
            self.started_before,
        )


class IncidentQuery(Page):
    process: Text | None = Field(None, description="Only this process key.")
    instance: Uuid | None = Field(None, description="Only this instance (a UUID).")
    open: bool | None = Field(
        None, description="true: only open ones; false: only resolved ones; absent: all."
    )


class InstanceId(_Params):
    id: Uuid


class DefinitionId(_Params):
    key: Text
    version: Version


# --- bodies: the client builds wire commands of them, whose own limits apply as well -------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartBody(_Body):
    process_key: Text = Field(description="Key of the process definition to start.")
    version: Version | None = Field(None, description="A deployed version; absent: the latest.")
    business_key: str | None = Field(None, max_length=500, description="Your key for it.")
    variables: dict[str, Any] = Field({}, description="The instance's initial variables.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=500, description="The same key starts it once."
    )


class CancelBody(_Body):
    reason: str | None = Field(None, max_length=1000, description="Kept in its history.")


class RetryBody(_Body):
    retries: int = Field(1, ge=1, le=1000, description="Attempts before the next incident.")


class VariablesBody(_Body):
    variables: dict[str, Any] = Field(min_length=1, description="The variables to set.")
    scope: str | None = Field(
        None, max_length=200, description="A scope id from the instance; null: the process."
    )


class MessageBody(_Body):
    name: str = Field(min_length=1, max_length=500, description="The message name.")
    correlation_key: str | None = Field(None, max_length=2000, description="Its correlation key.")
    variables: dict[str, Any] = Field({}, description="Set where the waiting event is.")
    message_id: str | None = Field(
        None, min_length=1, max_length=500, description="Counted once across calls."
    )


class Invalid(Exception):
    """A parameter or body that does not validate: answered 422."""

    def __init__(self, error: str, field: str) -> None:
        super().__init__(error)
        self.error = error
        self.field = field


def invalid(exc: ValidationError) -> Invalid:
    """The first problem, named by its parameter."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return Invalid(first["msg"], field)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], values: dict[str, Any]) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid(exc) from None
