"""The process graph: the form every definition (YAML, JSON, later BPMN XML) is turned into.

Node and flow ids are the element ids of BPMN 2.0, so a BPMN file maps onto this model one
element to one node.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

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


class VariableMapping(_Strict):
    """One input or output mapping: `target` receives the value of the expression `source`.

    `source` is an expression in any of the three syntaxes (FEEL `=...`, JUEL `${...}`, or the
    plain condition language); a BPMN literal text arrives here as a quoted string literal.
    """

    target: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=2000)


class MultiInstance(_Strict):
    """Runs the activity once per element of a collection (or `cardinality` times).

    Parallel unless `sequential`. Each element runs in its own scope holding
    `element_variable` (the element) and `loopCounter` (1-based). `output_element` (an
    expression, evaluated in the element's scope when it ends) is gathered, in element order,
    into `output_collection`. `completion_condition`, checked after each element, ends the
    rest early (their open tasks are withdrawn).
    """

    sequential: bool = False
    collection: str | None = Field(None, max_length=2000)
    cardinality: str | None = Field(None, max_length=2000)
    element_variable: str | None = None
    output_collection: str | None = None
    output_element: str | None = Field(None, max_length=2000)
    completion_condition: str | None = Field(None, max_length=2000)


class _Element(_Strict):
    """What every node has: its BPMN id and name, and the embedded subprocess it sits in
    (`parent`, None at the process level)."""

    id: str
    name: str | None = None
    parent: str | None = None

    _omitted_when_unset: ClassVar[tuple[str, ...]]

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Options left unset are not written out: a definition deployed before they existed
        keeps its content hash (and its version on a redeploy)."""
        data = handler(self)
        if isinstance(data, dict):
            for name in self._omitted_when_unset:
                if name in data and data[name] in (None, [], {}, ()):
                    del data[name]
            for name, default in _OMITTED_AT_DEFAULT.items():
                if name in data and data[name] is default:
                    del data[name]
        return data


#: Options whose unset value (None or empty) is not written out, under either spelling.
_OMITTED_WHEN_UNSET = (
    "dispatch_timeout",
    "dispatch_timeout_ms",
    "max_redispatches",
    "parent",
    "inputs",
    "outputs",
    "multi_instance",
    "headers",
    "fetch_variables",
    "timer",
    "message",
)
_Element._omitted_when_unset = _OMITTED_WHEN_UNSET
#: Flags not written out at their default, for the same reason.
_OMITTED_AT_DEFAULT = {"error": False, "interrupting": True, "triggered_by_event": False}


class _Activity(_Element):
    """An activity: input mappings make local variables of its own scope; output mappings
    (when given) decide what reaches the enclosing scope."""

    inputs: tuple[VariableMapping, ...] = ()
    outputs: tuple[VariableMapping, ...] = ()
    multi_instance: MultiInstance | None = None


class StartEvent(_Element):
    """A none start event; in an event subprocess, the event that starts it: a `timer`, a
    `message`, or a business error (`error`, with `error_code` or, without, any code)."""

    _omitted_when_unset = (*_OMITTED_WHEN_UNSET, "error_code")

    type: Literal["start_event"]
    timer: TimerDefinition | None = None
    message: MessageDefinition | None = None
    error: bool = False
    error_code: str | None = Field(None, min_length=1, max_length=200)
    #: An event subprocess's start: whether it ends what its scope was doing.
    interrupting: bool = True

    @property
    def triggered(self) -> bool:
        return self.timer is not None or self.message is not None or self.error


class EndEvent(_Element):
    type: Literal["end_event"]


class ErrorEndEvent(_Element):
    """Throws a business error to the nearest enclosing subprocess or call activity with an
    error boundary event that catches its code; an incident when nothing catches it."""

    type: Literal["error_end_event"]
    error_code: str = Field(min_length=1, max_length=200)
    error_message: str | None = None


class TerminateEndEvent(_Element):
    """Ends its scope (the process, or the embedded subprocess it sits in) at once: every
    other token of that scope is withdrawn with its open tasks and child instances."""

    type: Literal["terminate_end_event"]


class ServiceTask(_Activity):
    """An external task: the engine publishes it to the topic's queue; a worker does it.
    BPMN service, send and business-rule tasks with an external implementation are these."""

    type: Literal["service_task"]
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
    #: Static key/values passed to the worker in the task message (zeebe:taskHeaders).
    headers: dict[str, str] = Field(default_factory=dict)
    #: Only these variables go to the worker (None: every variable visible from the task).
    fetch_variables: tuple[str, ...] | None = None

    @field_validator("lock_ms", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration_ms(value)

    @field_validator("dispatch_timeout_ms", mode="before")
    @classmethod
    def _optional_duration(cls, value: object) -> int | None:
        return None if value is None else parse_duration_ms(value)


class UserTask(_Activity):
    """A human task, run as an external task on `topic` (by default `user-task`)
    so that a tasklist application completes it over the same queues and ledger. Its lease
    never expires unless `lock` is set."""

    type: Literal["user_task"]
    topic: str = "user-task"
    lock_ms: int | None = Field(None, alias="lock", ge=500, le=86_400_000)
    assignee: str | None = None
    candidate_groups: tuple[str, ...] = ()
    candidate_users: tuple[str, ...] = ()
    form_key: str | None = None
    due_date: str | None = None
    retry: RetryPolicy = RetryPolicy()
    #: Static key/values for the tasklist (zeebe:taskHeaders); not written out when empty.
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("lock_ms", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int | None:
        return None if value is None else parse_duration_ms(value)


class ManualTask(_Activity):
    """A plain or manual task: the token passes straight through (mappings still apply)."""

    type: Literal["manual_task"]


class ExclusiveGateway(_Element):
    """Takes the first outgoing flow whose condition holds, else the default flow."""

    type: Literal["exclusive_gateway"]
    default: str | None = None


class ParallelGateway(_Element):
    """Fork: a token on every outgoing flow. Join: fires once every incoming flow has a token."""

    type: Literal["parallel_gateway"]


class InclusiveGateway(_Element):
    """Fork: a token on every flow whose condition holds, else the default. Join: fires when
    no token of its scope can still reach it, with the tokens that arrived."""

    type: Literal["inclusive_gateway"]
    default: str | None = None


class SubProcess(_Activity):
    """An embedded subprocess: its nodes name it as `parent`; it runs in a scope of its own.

    With `triggered_by_event` it is an event subprocess: no flows; its start event's
    timer, message or error starts it inside the scope it sits in, ending what that scope
    was doing if the start event is interrupting."""

    type: Literal["subprocess"]
    triggered_by_event: bool = False


class CallActivity(_Activity):
    """Starts an instance of `called_element` (the latest version, or `version`), waits for
    it to end and maps variables in and out. With `propagate_all_in`/`_out` every variable
    crosses (Camunda's variables="all"); `inputs`/`outputs` map single ones."""

    type: Literal["call_activity"]
    called_element: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
    version: int | None = Field(None, ge=1)
    propagate_all_in: bool = False
    propagate_all_out: bool = False


class ErrorBoundaryEvent(_Element):
    """Catches a business error of the activity it is attached to (a task, a subprocess or
    a call activity), interrupting it.

    With `error_code` it catches that code only; without, every code (a catch-all). The
    worker's variables are merged into the instance; `code_variable` and `message_variable`
    name variables that receive the error's code and message (as Camunda's errorCodeVariable).
    """

    type: Literal["error_boundary_event"]
    attached_to: str
    error_code: str | None = Field(None, min_length=1, max_length=200)
    code_variable: str | None = None
    message_variable: str | None = None


class TimerDefinition(_Strict):
    """When a timer fires: after a `duration` (ISO 8601, `PT15M`), at a `date` (ISO 8601), or
    on a `cycle` (`R3/PT10M`, `R/PT1H`, or cron). `value` may be an expression (`${...}`,
    `=...`) that gives that text when the timer starts."""

    kind: Literal["duration", "date", "cycle"]
    value: str = Field(min_length=1, max_length=2000)


class MessageDefinition(_Strict):
    """The message a node waits for: its `name`, and the expression whose value (taken when
    the wait starts) a message's correlation key must equal."""

    name: str = Field(min_length=1, max_length=500)
    correlation_key: str | None = Field(None, max_length=2000)


class TimerCatchEvent(_Element):
    """Waits until its timer fires."""

    type: Literal["timer_catch_event"]
    timer: TimerDefinition


class MessageCatchEvent(_Element):
    """Waits until its message is correlated."""

    type: Literal["message_catch_event"]
    message: MessageDefinition


class ReceiveTask(_Activity):
    """An activity that waits for its message (boundary events may sit on it)."""

    type: Literal["receive_task"]
    message: MessageDefinition


class TimerBoundaryEvent(_Element):
    """Fires on its timer while the activity it is attached to runs: interrupting, it ends
    the activity (its task is withdrawn, its worker told); not, it starts a branch of its own,
    again on each turn of a cycle."""

    type: Literal["timer_boundary_event"]
    attached_to: str
    timer: TimerDefinition
    interrupting: bool = True


class MessageBoundaryEvent(_Element):
    """Like a timer boundary event, on a message."""

    type: Literal["message_boundary_event"]
    attached_to: str
    message: MessageDefinition
    interrupting: bool = True


class EventBasedGateway(_Element):
    """Waits for the first of the events its flows lead to (timer and message catch events,
    receive tasks); the others are withdrawn."""

    type: Literal["event_based_gateway"]


Node = Annotated[
    StartEvent
    | EndEvent
    | ErrorEndEvent
    | TerminateEndEvent
    | ServiceTask
    | UserTask
    | ManualTask
    | ExclusiveGateway
    | ParallelGateway
    | InclusiveGateway
    | SubProcess
    | CallActivity
    | ErrorBoundaryEvent
    | TimerCatchEvent
    | MessageCatchEvent
    | ReceiveTask
    | TimerBoundaryEvent
    | MessageBoundaryEvent
    | EventBasedGateway,
    Field(discriminator="type"),
]

#: Nodes a token waits at for something outside the instance (a worker, a child instance).
WaitingActivity = ServiceTask | UserTask | CallActivity


class SequenceFlow(_Element):
    _omitted_when_unset = ("name", "parent")

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


def fetch_list(node: object) -> tuple[str, ...] | None:
    """The variables a task's worker asked for (None: every visible one)."""
    return node.fetch_variables if isinstance(node, ServiceTask) else None
