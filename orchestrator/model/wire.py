"""Messages on the wire: JSON over AMQP 0-9-1, one pydantic model each, version field `v`.

Workers in any language need only these shapes (generated into `schemas/` as plain JSON Schema
draft 2020-12) and the topology described in `docs/wire-protocol.md`. The field descriptions
here are the schemas' descriptions: write them for someone who never reads this code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema
from pydantic.config import JsonDict

from orchestrator.tracing import valid_traceparent

WIRE_VERSION = 1
Variables = dict[str, Any]
#: The envelope: on every message, so required in the schemas. The Python models fill both in
#: (every message they write has them); the engine refuses a report or command without `v`.
ENVELOPE = ("v", "type")


def _envelope_required(schema: JsonDict) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return
    envelope: list[str] = [name for name in ENVELOPE if name in properties]
    rest = schema.get("required")
    others = [name for name in rest if name not in envelope] if isinstance(rest, list) else []
    schema["required"] = [*envelope, *others]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra=_envelope_required)

    v: Literal[1] = Field(1, description="Wire protocol version: 1.")


#: A UUID in its usual text form: the engine makes every task, instance and incident id.
Uuid = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]


#: A W3C traceparent; anything else reads as absent (a bad trace context never refuses a
#: message).
TraceParent = Annotated[str | None, BeforeValidator(valid_traceparent)]
#: The same on reports, taken as it comes: every report carries one, and the engine reads it
#: only for span links (tracing.links_to checks it then), so checking each as it is parsed
#: would cost every report for nothing (2 us a report, measured). Anything goes, nothing
#: is refused for it.
UncheckedTraceParent = Annotated[
    Any, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}]})
]
_TRACEPARENT = (
    "W3C Trace Context traceparent (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, "
    "lower case). Optional; a value that is not one is ignored."
)

_TASK_ID = "The task's id (a UUID), copied from the task message; the same for every attempt."
_ATTEMPT = "The attempt, copied from the task message (1, 2, ...)."


# --- engine -> worker: the task, on queue <ns>.task.<topic> ---------------------------------


class PreviousError(BaseModel):
    """The error of the previous attempt: a failure report, an expired lease or a release."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    message: str = Field(
        description="A failure's error_message, or why the engine ended the attempt "
        "(lease expired, released, a business error an operator retried)."
    )
    details: str | None = Field(None, description="A failure's error_details, if it sent any.")


class UserTaskDetails(BaseModel):
    """A user task's assignment, for a tasklist application (each field absent when unset)."""

    model_config = ConfigDict(extra="forbid")

    assignee: str | None = Field(None, description="The user it is assigned to.")
    candidate_groups: list[str] | None = Field(None, description="Groups that may claim it.")
    candidate_users: list[str] | None = Field(None, description="Users that may claim it.")
    form_key: str | None = Field(None, description="The form to show.")
    due_date: str | None = Field(None, description="When it is due (as the model gives it).")


class TaskMessage(_Wire):
    """One attempt of an external task. AMQP message_id is `<task_id>:<attempt>`."""

    type: Literal["task"] = "task"
    task_id: Uuid = Field(
        description="The task's id (a UUID): the same for every attempt of the task."
    )
    attempt: int = Field(
        ge=1,
        description="1 for the first attempt, one more for each retry, expired lease, release "
        "or operator retry. Reports name the attempt they are about.",
    )
    topic: str = Field(description="The topic: the task came from queue <ns>.task.<topic>.")
    instance_id: Uuid = Field(description="The process instance the task belongs to (a UUID).")
    process_key: str = Field(description="Key of the instance's process definition.")
    node_id: str = Field(description="Id of the service task in the process definition.")
    business_key: str | None = Field(
        None, description="The instance's business key; null when it was started without one."
    )
    variables: Variables = Field(
        {}, description="The instance's variables when this attempt was created."
    )
    lock_ms: int = Field(
        ge=1,
        description="The visibility deadline in ms: how long the worker that claims the task "
        "holds it, counted from when the engine processes the claim (not from publishing). "
        "Extend it with extend_lock.",
    )
    retries_left: int = Field(
        ge=0,
        description="How many more attempts the retry policy allows if this one fails: 0 means "
        "a failure raises an incident (unless the failure's own `retries` says otherwise).",
    )
    previous_error: PreviousError | None = Field(
        None,
        description="From the second attempt on: why the attempt before this one ended without "
        "an outcome. Null on the first attempt.",
    )
    idempotency_key: str = Field(
        description="The same for every attempt of this task: pass it to the services the "
        "handler calls so that a repeated attempt has no second effect. Treat it as opaque."
    )
    created_at_ms: int = Field(
        description="When the engine decided this attempt (Unix ms): taken just before the "
        "transaction that creates it writes, so before its commit. The header "
        "x-orch-published-at-ms says when it was published, after the commit."
    )
    redispatch: int = Field(
        0,
        ge=0,
        description=(
            "0 for the first message of this attempt; k for its k-th re-send, after no worker "
            "claimed it within its dispatch deadline. Claim a re-sent message (with a "
            "request_id) before running it: another copy may have been taken meanwhile"
        ),
    )
    headers: dict[str, str] | None = Field(
        None,
        description="A service task's static headers (zeebe:taskHeaders); absent when none.",
    )
    user_task: UserTaskDetails | None = Field(
        None, description="On a user task's message only: who may do it, and with what form."
    )


# --- worker -> engine: reports, on exchange <ns>.reports, routing key "report" -------------


class _Report(_Wire):
    task_id: Uuid = Field(description=_TASK_ID)
    attempt: int = Field(ge=1, description=_ATTEMPT)
    worker_id: str = Field(
        max_length=200,
        description="Your worker process's id, unique among all workers and the same in all "
        "its reports: the engine records the lease holder by it, and sends unasked notices "
        "(task_revoked on a cancel) to the queue <ns>.worker.<worker_id>.",
    )
    traceparent: UncheckedTraceParent = Field(
        None,
        description=_TRACEPARENT + " The trace of the task this reports on (the task "
        "message's traceparent header), with your span's id if you record one.",
    )


class Claimed(_Report):
    """The worker has taken the task; the lease (lock_ms) starts when the engine processes
    this. With a request_id the engine answers with a lock_answer (held or not); without
    one, an accepted claim is not answered and a refused one gets a task_revoked."""

    type: Literal["claimed"] = "claimed"
    request_id: str | None = Field(
        None,
        description="Ask for an answer: the engine sends a lock_answer with this request_id "
        "to the message's reply_to. Any string unique among your open requests.",
    )


class Completed(_Report):
    """The task is done; `variables` are merged into the instance's variables."""

    type: Literal["completed"] = "completed"
    variables: Variables = Field(
        {},
        description="Set in the instance's variables: each top-level key replaces the one "
        "of that name.",
    )


class Failed(_Report):
    """The attempt failed. `retries` and `retry_delay_ms` override the definition's policy."""

    type: Literal["failed"] = "failed"
    error_message: str = Field(
        max_length=10_000,
        description="What went wrong: shown in the incident, and to the next attempt as "
        "previous_error.message.",
    )
    error_details: str | None = Field(
        None,
        max_length=100_000,
        description="More detail (a stack trace, say): the next attempt's "
        "previous_error.details and the incident's details.",
    )
    error_code: str | None = Field(
        None,
        description="A technical error code, matched against the task's retry policy "
        "(non_retryable_codes): a listed code raises an incident at once, whatever `retries` "
        "says. Not a business error: report bpmn_error for those.",
    )
    retries: int | None = Field(
        None,
        ge=0,
        description="Overrides the retry policy, as Camunda's retries: how many more "
        "attempts are allowed after this failure; 0 raises an incident now. The next "
        "attempt's retries_left is this minus 1. Absent: the task's retries_left decides.",
    )
    retry_delay_ms: int | None = Field(
        None,
        ge=0,
        description="Overrides the policy's backoff: the next attempt is dispatched this "
        "many ms after the engine processed the failure (0: at once). Absent: the policy's "
        "backoff.",
    )


class BpmnErrorReport(_Report):
    """A business error: routed to a matching error boundary event, else an incident."""

    type: Literal["bpmn_error"] = "bpmn_error"
    code: str = Field(
        min_length=1,
        max_length=200,
        description="The business error code: the error boundary event of the task that "
        "catches this code (or catches every code) takes over; with none, an incident.",
    )
    message: str | None = Field(None, max_length=10_000, description="A human-readable text.")
    variables: Variables = Field(
        {}, description="Set in the instance's variables when a boundary event catches it."
    )


class ExtendLock(_Report):
    """Heartbeat: extend the lease to now + lock_ms. Answered with a lock_answer."""

    type: Literal["extend_lock"] = "extend_lock"
    lock_ms: int = Field(
        ge=1,
        le=86_400_000,
        description="The new lease: it runs until lock_ms after the engine processes this "
        "request (not added to what is left). Usually the task's lock_ms; send it about every "
        "third of that.",
    )
    request_id: str = Field(
        description="Echoed in the lock_answer, sent to the message's reply_to."
    )


class Released(_Report):
    """The worker gives the task back unfinished (shutdown): dispatch a new attempt now."""

    type: Literal["released"] = "released"


Report = Annotated[
    Claimed | Completed | Failed | BpmnErrorReport | ExtendLock | Released,
    Field(discriminator="type"),
]
REPORT_ADAPTER: TypeAdapter[Report] = TypeAdapter(Report)
#: A message body on the reports exchange: one report, or a non-empty array of them (workers
#: batch the reports that are ready at the same moment). Only for the schema: the engine
#: parses an array element by element, so that a bad one is dead-lettered alone.
ReportMessage = Report | Annotated[list[Report], Field(min_length=1)]
REPORT_MESSAGE_ADAPTER: TypeAdapter[ReportMessage] = TypeAdapter(ReportMessage)


# --- engine -> worker: answers, to the report's reply_to queue ------------------------------


class LockAnswer(_Wire):
    """The answer to an extend_lock, or to a claim with a request_id."""

    type: Literal["lock_answer"] = "lock_answer"
    task_id: Uuid = Field(description=_TASK_ID)
    attempt: int = Field(description="The attempt the request named.")
    request_id: str = Field(description="The request_id of the request this answers.")
    held: bool = Field(
        description="true: you hold this attempt's lease now. false: you do not (another "
        "attempt is current, another worker holds it, or the task is closed): stop, report "
        "nothing, ack the delivery."
    )
    cancelled: bool = Field(
        False, description="The instance was cancelled (held is then false): stop."
    )
    lock_expires_in_ms: int | None = Field(
        None,
        description="When held: the lease length the request set, from when the engine "
        "processed it (an extend_lock's lock_ms; a claim's task lock_ms). A repeated claim of "
        "an attempt you already hold does not renew the lease: use extend_lock. Null when "
        "not held.",
    )


class TaskRevoked(_Wire):
    """The worker does not hold this attempt (another took it, or the task is closed): stop."""

    type: Literal["task_revoked"] = "task_revoked"
    task_id: Uuid = Field(description=_TASK_ID)
    attempt: int = Field(description="The attempt you no longer hold.")
    reason: str = Field(
        description="Why: 'not the current holder' (a claim without request_id refused: "
        "another worker or a newer attempt has the task), 'cancelled' (the instance was "
        "cancelled; also sent unasked to <ns>.worker.<worker_id>), 'closed' (the task ended "
        "some other way). Treat other values like 'closed'."
    )


class ReportAnswer(_Wire):
    """Sent for a report that was not applied: a duplicate, a conflict or a stale attempt."""

    type: Literal["report_answer"] = "report_answer"
    task_id: Uuid = Field(description=_TASK_ID)
    attempt: int = Field(description="The attempt the report named.")
    status: Literal["duplicate", "conflict", "stale", "cancelled", "closed"] = Field(
        description="duplicate: the same outcome was recorded before; conflict: a different "
        "outcome was recorded first; stale: a failure for an attempt that is no longer "
        "current; cancelled: the instance was cancelled; closed: the task ended some other "
        "way. In every case the report was not applied and nothing is to be done."
    )
    recorded_kind: str | None = Field(
        None,
        description="duplicate and conflict: the type of the report recorded first (completed "
        "or bpmn_error: the task's one outcome; failed: this attempt's failure).",
    )
    recorded_attempt: int | None = Field(
        None, description="duplicate and conflict: the attempt whose outcome was recorded."
    )


WorkerNotice = Annotated[LockAnswer | TaskRevoked | ReportAnswer, Field(discriminator="type")]
NOTICE_ADAPTER: TypeAdapter[WorkerNotice] = TypeAdapter(WorkerNotice)


# --- client -> engine: commands, on exchange <ns>.commands, routing key "command" ----------


class CalledByWire(BaseModel):
    """The call activity that starts an instance (see StartCommand.called_by)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_id: Uuid = Field(description="The calling instance.")
    task_id: Uuid = Field(description="The call activity's task in it (the child's id).")
    catches: list[str | None] = Field(
        [], description="Error codes the caller catches around the call (null: every code)."
    )
    attempt: int = Field(1, ge=1, description="The call activity task's attempt.")


class StartCommand(_Wire):
    """Start an instance. Answered with {instance_id, created}."""

    type: Literal["start"] = "start"
    process_key: str = Field(description="Key of the process definition to start.")
    version: int | None = Field(None, description="A deployed version; null: the latest.")
    business_key: str | None = Field(
        None,
        max_length=500,
        description="Your key for the instance; unique among active instances if the "
        "definition says so.",
    )
    idempotency_key: str = Field(
        min_length=1,
        max_length=500,
        description="One key per start you mean, global across all processes: the same key "
        "and payload (process_key, version, business_key, variables) return the same "
        "instance (created: false), also after it ended, for a retention window (7 days by "
        "default); the same key with another payload is refused with idempotency_conflict. "
        "Resend a start whose reply does not come with the same key.",
    )
    variables: Variables = Field({}, description="The instance's initial variables.")
    instance_id: Uuid | None = Field(
        None,
        description="Engine-internal, for a call activity's child: the new instance's id "
        "(the id of the call activity's task). Clients leave it out.",
    )
    called_by: CalledByWire | None = Field(
        None,
        description="Engine-internal, for a call activity's child: the calling instance. "
        "Clients leave it out.",
    )
    start_at: str | None = Field(
        None,
        description="Engine-internal: the timer or message start event that starts the "
        "instance (default: the none start event). Clients leave it out.",
    )
    traceparent: TraceParent = Field(
        None,
        description=_TRACEPARENT + " The caller's trace: the instance and all its tasks join "
        "it (the message's traceparent header stands in when this is absent; with neither, "
        "the engine starts a new trace). Not part of the idempotent payload.",
    )


class DeployCommand(_Wire):
    """Deploy a definition: identical content returns the existing version."""

    type: Literal["deploy"] = "deploy"
    source: str = Field(max_length=1_048_576, description="The definition, in YAML or JSON.")
    filename: str | None = Field(None, description="Where the source came from, for messages.")


class GetInstanceCommand(_Wire):
    """An instance's state, variables, tasks, incidents and history."""

    type: Literal["get_instance"] = "get_instance"
    instance_id: Uuid = Field(description="The instance's id (a UUID).")


class StatsCommand(_Wire):
    """Instance counts, open incidents, repeated reports and the engines' counters."""

    type: Literal["stats"] = "stats"
    process_key: str | None = Field(
        None,
        description="Count only this process's instances and open incidents. The report "
        "totals and the engine counters are always global.",
    )


class ListIncidentsCommand(_Wire):
    """Open incidents (or also resolved ones), newest first."""

    type: Literal["list_incidents"] = "list_incidents"
    process_key: str | None = Field(None, description="Only this process's incidents.")
    instance_id: Uuid | None = Field(None, description="Only this instance's incidents.")
    include_resolved: bool = Field(False, description="Also resolved incidents.")
    limit: int = Field(100, ge=1, le=10_000, description="At most this many.")


class RetryCommand(_Wire):
    """Resolve an incident (or the open incident of a task) and dispatch its task again.
    `retries` is how many attempts it gets before the next incident, as Camunda's retries:
    1 runs it once more."""

    type: Literal["retry"] = "retry"
    incident_id: Uuid | None = Field(None, description="The incident to resolve.")
    task_id: Uuid | None = Field(None, description="Or the task whose open incident it is.")
    retries: int = Field(
        1, ge=1, le=1000, description="Attempts the task gets before the next incident."
    )


class CancelCommand(_Wire):
    """End an active instance: its open tasks are withdrawn, late reports are not applied."""

    type: Literal["cancel"] = "cancel"
    instance_id: Uuid = Field(description="The instance to cancel (a UUID).")
    reason: str | None = Field(None, max_length=1000, description="Kept in its history.")


class SetVariablesCommand(_Wire):
    """Set variables of an active instance, as an operator: in the process scope, or locally
    in one of its scopes (the `scope` ids `get_instance` lists). Nothing else moves: tasks
    already sent keep the values they were sent with. Setting the same values again changes
    nothing, so a resend is safe. Answered with {instance_id, scope, names}."""

    type: Literal["set_variables"] = "set_variables"
    instance_id: Uuid = Field(description="The instance (a UUID).")
    variables: Variables = Field(
        min_length=1, description="The variables to set (JSON values), at least one."
    )
    scope: str | None = Field(
        None,
        max_length=200,
        description="A scope of the instance (an embedded subprocess, a multi-instance "
        "element...); null: the process scope.",
    )


#: A message waits in the buffer this long by default when no instance waits for it.
DEFAULT_MESSAGE_TTL_MS = 3_600_000
#: The longest a message may wait in the buffer: 30 days.
MAX_MESSAGE_TTL_MS = 30 * 86_400_000
_MESSAGE_NAME = (
    "The message's name: the `message.name` of the catch events, receive tasks and boundary "
    "events that wait for it. A name no deployed definition uses is refused."
)
_CORRELATION_KEY = (
    "Which waiting instance it is for: it must equal the correlation key the waiting event "
    "evaluated when it started waiting (its `message.correlation_key`, or else the instance's "
    "business key), compared as text. null matches only a wait with no key either."
)
_MESSAGE_VARIABLES = "Set in the instance's variables (where the waiting event is) when correlated."
_MESSAGE_ID = (
    "The message's id, unique per message you mean: a message with an id seen before is not "
    "applied again (answered duplicate); the same id with other contents is refused. Resend "
    "with the same id."
)
_TTL_MS = (
    "When no instance waits for it yet: how long it waits in the buffer for one (ms; default "
    "3,600,000, an hour; at most 30 days). 0: not buffered (answered not_correlated)."
)


class CorrelateCommand(_Wire):
    """Correlate a message to the instance waiting for it (the oldest waiting, if several),
    or buffer it until one waits. Answered with {status, instance_id, message_id}."""

    type: Literal["correlate"] = "correlate"
    name: str = Field(min_length=1, max_length=500, description=_MESSAGE_NAME)
    correlation_key: str | None = Field(None, max_length=2000, description=_CORRELATION_KEY)
    variables: Variables = Field({}, description=_MESSAGE_VARIABLES)
    message_id: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description=_MESSAGE_ID + " Absent: the engine makes one (no protection against a "
        "resend); the Python client always sends one.",
    )
    ttl_ms: int | None = Field(None, ge=0, le=MAX_MESSAGE_TTL_MS, description=_TTL_MS)


class DeliverBufferedCommand(_Wire):
    """Engine-internal: an instance started waiting for (name, correlation_key); correlate
    the oldest message buffered for it, if there is one. Sent by the engine to itself;
    clients never send it. Not answered."""

    type: Literal["deliver_buffered"] = "deliver_buffered"
    name: str = Field(min_length=1, max_length=500, description="The subscription's message name.")
    correlation_key: str | None = Field(
        None, max_length=2000, description="The subscription's correlation key."
    )


Command = Annotated[
    StartCommand
    | DeployCommand
    | GetInstanceCommand
    | StatsCommand
    | ListIncidentsCommand
    | RetryCommand
    | CancelCommand
    | SetVariablesCommand
    | CorrelateCommand
    | DeliverBufferedCommand,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


class CommandError(BaseModel):
    code: str = Field(
        description="not_found, idempotency_conflict, business_key_conflict, invalid_state, "
        "invalid_command, invalid_definition, service_unavailable (resend later), or error "
        "(the engine failed on it)."
    )
    message: str = Field(description="A human-readable text.")


class CommandReply(_Wire):
    """The answer to a command, sent to its reply_to with the same correlation_id."""

    type: Literal["reply"] = "reply"
    ok: bool = Field(description="true: see result; false: see error.")
    result: dict[str, Any] | None = Field(None, description="What the command answers.")
    error: CommandError | None = Field(None, description="Why the command was refused.")


# --- any producer -> engine: messages, on exchange <ns>.messages --------------------------


class MessageBody(BaseModel):
    """A message for the instances waiting on message events, from any AMQP producer. The
    AMQP message_id property may stand in for `message_id`. Correlated exactly once, as a
    correlate command is; nothing is answered (a message the engine cannot take is
    dead-lettered with its reason)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = Field(description="Wire protocol version: 1.")
    name: str = Field(min_length=1, max_length=500, description=_MESSAGE_NAME)
    correlation_key: str | None = Field(None, max_length=2000, description=_CORRELATION_KEY)
    variables: Variables = Field({}, description=_MESSAGE_VARIABLES)
    message_id: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description=_MESSAGE_ID + " Absent: the AMQP message_id property is the id; a message "
        "with neither is dead-lettered.",
    )
    ttl_ms: int | None = Field(None, ge=0, le=MAX_MESSAGE_TTL_MS, description=_TTL_MS)


SCHEMA_MODELS: dict[str, Any] = {
    "task": TaskMessage,
    "report": REPORT_ADAPTER,
    "report_message": REPORT_MESSAGE_ADAPTER,
    "worker_notice": NOTICE_ADAPTER,
    "command": COMMAND_ADAPTER,
    "command_reply": CommandReply,
    "message": MessageBody,
}
