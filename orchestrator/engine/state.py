"""Instance state and the effects a transition asks the shell to carry out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.definitions.timers import TimerSpec

InstanceStatus = Literal["active", "completed", "cancelled"]


@dataclass(frozen=True)
class Token:
    """A position in the graph. A token waiting at a task or call activity names its task
    (a call activity's task id is also its child instance's id)."""

    id: str
    node_id: str
    task_id: str | None = None
    #: The scope it runs in (None: the process scope).
    scope: str | None = None
    #: At a joining gateway: the flow it arrived by, while it waits for the others.
    joined: str | None = None


ScopeKind = Literal["subprocess", "activity", "mi_body", "mi_element"]


@dataclass(frozen=True)
class Loop:
    """A multi-instance activity's progress (kept on its mi_body scope)."""

    total: int
    started: int
    completed: int
    #: The collection it runs over (None: a cardinality).
    items: tuple[Any, ...] | None = None
    #: The output elements so far, by index (None: no output collection).
    outputs: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Scope:
    """A variable scope below the process: an embedded subprocess, an activity with input
    mappings, a multi-instance body or one of its elements."""

    id: str
    kind: ScopeKind
    node_id: str
    parent: str | None
    variables: dict[str, Any]
    #: mi_element: its 0-based index in the collection.
    index: int | None = None
    #: mi_body: the loop's progress.
    loop: Loop | None = None


WaitKind = Literal["timer", "message"]


@dataclass(frozen=True)
class Wait:
    """A timer or message subscription the instance waits on. `node_id` is the event (a
    catch event, a receive task, a boundary event, an event-based gateway's target);
    `owner` is the token waiting there, or, for a boundary event, the token or scope of the
    activity it is attached to (it ends with that activity)."""

    id: str
    kind: WaitKind
    node_id: str
    owner: str


@dataclass(frozen=True)
class CalledBy:
    """The call activity that started this instance, and the error codes its instance can
    catch (None in `catches`: a catch-all), so an error end event here knows at once whether
    the error is caught up there or is an incident here."""

    instance_id: str
    task_id: str
    catches: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class InstanceState:
    id: str
    status: InstanceStatus
    #: The process scope's variables.
    variables: dict[str, Any]
    tokens: tuple[Token, ...]
    #: Counter behind every id this instance derives, so transitions stay deterministic.
    seq: int = 0
    #: The stored row's version this state was read at. Transitions carry it along unchanged:
    #: the store writes their result only if the row is still at this version.
    version: int = 0
    scopes: tuple[Scope, ...] = ()
    called_by: CalledBy | None = None
    waits: tuple[Wait, ...] = ()

    def derive_id(self, seq: int) -> str:
        return InstanceState.derive_id_of(self.id, seq)

    @staticmethod
    def derive_id_of(instance_id: str, seq: int) -> str:
        return str(uuid.uuid5(uuid.UUID(instance_id), str(seq)))

    def token_for_task(self, task_id: str) -> Token | None:
        return next((token for token in self.tokens if token.task_id == task_id), None)


@dataclass(frozen=True)
class CreateTask:
    """An external task to queue (or, with `call`, the row a call activity waits on)."""

    task_id: str
    node_id: str
    topic: str
    lock_ms: int
    max_attempts: int
    #: What its worker sees (see engine/variables.py, task_variables).
    variables: dict[str, Any] = field(default_factory=dict)
    #: More fields of the task message: "headers" (a service task's static headers) or
    #: "user_task" (assignee, candidate groups, form key, due date).
    message_fields: dict[str, Any] | None = None
    #: True for a call activity's wait: no message, never leased, settled by its child.
    call: bool = False


@dataclass(frozen=True)
class WithdrawTask:
    """An open task whose scope ended (terminated, interrupted, or its loop completed)."""

    task_id: str
    #: A call activity's: its child instance (same id) is cancelled too.
    call: bool = False


@dataclass(frozen=True)
class StartChild:
    """Start `process_key` (the latest version, or `version`) as `instance_id`."""

    instance_id: str
    process_key: str
    version: int | None
    variables: dict[str, Any]
    called_by: CalledBy


@dataclass(frozen=True)
class NotifyParent:
    """This called instance ended: settle its call activity's task in the calling instance
    (a completion with `variables`, or the business error `error_code`)."""

    called_by: CalledBy
    variables: dict[str, Any]
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class RaiseIncident:
    node_id: str
    message: str
    task_id: str | None = None


@dataclass(frozen=True)
class InstanceEnded:
    status: InstanceStatus


@dataclass(frozen=True)
class Record:
    """A line of the instance's history."""

    kind: str
    node_id: str | None = None
    task_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartTimer:
    """Start the timer `wait_id`: the shell sets its due time (definitions/timers.py,
    first_due) from its own clock, and fires it through step.timer_fired."""

    wait_id: str
    node_id: str
    spec: TimerSpec


@dataclass(frozen=True)
class OpenSubscription:
    """Wait for the message `name` whose correlation key equals `correlation_key`; a
    message correlated to it comes back through step.message_correlated."""

    wait_id: str
    node_id: str
    name: str
    correlation_key: str | None


@dataclass(frozen=True)
class CloseWait:
    """A timer or subscription no longer waited on (its event fired, or what it was part of
    ended): the shell deletes it."""

    wait_id: str
    kind: WaitKind


Effect = (
    CreateTask
    | WithdrawTask
    | StartChild
    | NotifyParent
    | RaiseIncident
    | InstanceEnded
    | Record
    | StartTimer
    | OpenSubscription
    | CloseWait
)


@dataclass(frozen=True)
class Transition:
    state: InstanceState
    effects: tuple[Effect, ...]
