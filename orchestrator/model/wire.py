"""Messages on the wire: JSON over AMQP 0-9-1, one pydantic model each, version field `v`.

Workers in any language need only these shapes (generated into `schemas/`) and the topology
described in `docs/wire-protocol.md`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

WIRE_VERSION = 1
Variables = dict[str, Any]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1


# --- engine -> worker: the task, on queue <ns>.task.<topic> ---------------------------------


class PreviousError(BaseModel):
    """The error of the previous attempt: a failure report, an expired lease or a release."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    message: str
    details: str | None = None


class TaskMessage(_Wire):
    """One attempt of an external task. AMQP message_id is `<task_id>:<attempt>`."""

    type: Literal["task"] = "task"
    task_id: str
    attempt: int = Field(ge=1)
    topic: str
    instance_id: str
    process_key: str
    node_id: str
    business_key: str | None = None
    variables: Variables = {}
    lock_ms: int = Field(
        ge=1, description="Visibility deadline, counted from when a worker takes it"
    )
    retries_left: int = Field(ge=0)
    previous_error: PreviousError | None = Field(
        None, description="Why the attempt before this one ended without an outcome"
    )
    #: Pass this to the services the handler calls: it is the same for every attempt.
    idempotency_key: str
    created_at_ms: int = Field(description="When the engine committed this attempt (Unix ms)")
    redispatch: int = Field(
        0,
        ge=0,
        description=(
            "0 for the first message of this attempt; k for its k-th re-send, after no worker "
            "claimed it within its dispatch deadline. Claim a re-sent message (with a "
            "request_id) before running it: another copy may have been taken meanwhile"
        ),
    )


# --- worker -> engine: reports, on exchange <ns>.reports, routing key "report" -------------


class _Report(_Wire):
    task_id: str
    attempt: int = Field(ge=1)
    worker_id: str = Field(max_length=200)


class Claimed(_Report):
    """The worker has taken the task; the lease (lock_ms) starts now. With a request_id the
    engine answers with a LockAnswer (held or not) instead of only revoking a refused claim."""

    type: Literal["claimed"] = "claimed"
    request_id: str | None = None


class Completed(_Report):
    """The task is done; `variables` are merged into the instance's variables."""

    type: Literal["completed"] = "completed"
    variables: Variables = {}


class Failed(_Report):
    """The attempt failed. `retries` and `retry_delay_ms` override the definition's policy."""

    type: Literal["failed"] = "failed"
    error_message: str = Field(max_length=10_000)
    error_details: str | None = Field(None, max_length=100_000)
    error_code: str | None = None
    retries: int | None = Field(None, ge=0)
    retry_delay_ms: int | None = Field(None, ge=0)


class BpmnErrorReport(_Report):
    """A business error: routed to a matching error boundary event, else an incident."""

    type: Literal["bpmn_error"] = "bpmn_error"
    code: str = Field(min_length=1, max_length=200)
    message: str | None = Field(None, max_length=10_000)
    variables: Variables = {}


class ExtendLock(_Report):
    """Heartbeat: extend the lease to now + lock_ms. Answered with a LockAnswer."""

    type: Literal["extend_lock"] = "extend_lock"
    lock_ms: int = Field(ge=1, le=86_400_000)
    request_id: str


class Released(_Report):
    """The worker gives the task back unfinished (shutdown): dispatch a new attempt now."""

    type: Literal["released"] = "released"


Report = Annotated[
    Claimed | Completed | Failed | BpmnErrorReport | ExtendLock | Released,
    Field(discriminator="type"),
]
REPORT_ADAPTER: TypeAdapter[Report] = TypeAdapter(Report)


# --- engine -> worker: answers, to the report's reply_to queue ------------------------------


class LockAnswer(_Wire):
    type: Literal["lock_answer"] = "lock_answer"
    task_id: str
    attempt: int
    request_id: str
    held: bool
    cancelled: bool = False
    lock_expires_in_ms: int | None = None


class TaskRevoked(_Wire):
    """The worker does not hold this attempt (another took it, or the task is closed): stop."""

    type: Literal["task_revoked"] = "task_revoked"
    task_id: str
    attempt: int
    reason: str


class ReportAnswer(_Wire):
    """Sent for a report that was not applied: a duplicate, a conflict or a stale attempt."""

    type: Literal["report_answer"] = "report_answer"
    task_id: str
    attempt: int
    status: Literal["duplicate", "conflict", "stale", "cancelled", "closed"]
    recorded_kind: str | None = None
    recorded_attempt: int | None = None


WorkerNotice = Annotated[LockAnswer | TaskRevoked | ReportAnswer, Field(discriminator="type")]
NOTICE_ADAPTER: TypeAdapter[WorkerNotice] = TypeAdapter(WorkerNotice)


# --- client -> engine: commands, on exchange <ns>.commands, routing key "command" ----------


class StartCommand(_Wire):
    type: Literal["start"] = "start"
    process_key: str
    version: int | None = None
    business_key: str | None = Field(None, max_length=500)
    idempotency_key: str = Field(min_length=1, max_length=500)
    variables: Variables = {}


class DeployCommand(_Wire):
    type: Literal["deploy"] = "deploy"
    source: str = Field(max_length=1_048_576)
    filename: str | None = None


class GetInstanceCommand(_Wire):
    type: Literal["get_instance"] = "get_instance"
    instance_id: str


class StatsCommand(_Wire):
    type: Literal["stats"] = "stats"
    process_key: str | None = None


class ListIncidentsCommand(_Wire):
    """Open incidents (or also resolved ones), newest first."""

    type: Literal["list_incidents"] = "list_incidents"
    process_key: str | None = None
    instance_id: str | None = None
    include_resolved: bool = False
    limit: int = Field(100, ge=1, le=10_000)


class RetryCommand(_Wire):
    """Resolve an incident (or the open incident of a task) and dispatch its task again.
    `retries` is how many attempts it gets before the next incident, as Camunda's retries:
    1 runs it once more."""

    type: Literal["retry"] = "retry"
    incident_id: str | None = None
    task_id: str | None = None
    retries: int = Field(1, ge=1, le=1000)


class CancelCommand(_Wire):
    """End an active instance: its open tasks are withdrawn, late reports are not applied."""

    type: Literal["cancel"] = "cancel"
    instance_id: str
    reason: str | None = Field(None, max_length=1000)


Command = Annotated[
    StartCommand
    | DeployCommand
    | GetInstanceCommand
    | StatsCommand
    | ListIncidentsCommand
    | RetryCommand
    | CancelCommand,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


class CommandError(BaseModel):
    code: str
    message: str


class CommandReply(_Wire):
    """The answer to a command, sent to its reply_to with the same correlation_id."""

    type: Literal["reply"] = "reply"
    ok: bool
    result: dict[str, Any] | None = None
    error: CommandError | None = None


SCHEMA_MODELS: dict[str, Any] = {
    "task": TaskMessage,
    "report": REPORT_ADAPTER,
    "worker_notice": NOTICE_ADAPTER,
    "command": COMMAND_ADAPTER,
    "command_reply": CommandReply,
}
