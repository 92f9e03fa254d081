"""Instance state and the effects a transition asks the shell to carry out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

InstanceStatus = Literal["active", "completed", "cancelled"]


@dataclass(frozen=True)
class Token:
    """A position in the graph. A token waiting at a service task names its task."""

    id: str
    node_id: str
    task_id: str | None = None


@dataclass(frozen=True)
class InstanceState:
    id: str
    status: InstanceStatus
    variables: dict[str, Any]
    tokens: tuple[Token, ...]
    #: Counter behind every id this instance derives, so transitions stay deterministic.
    seq: int = 0
    #: The stored row's version this state was read at. Transitions carry it along unchanged:
    #: the store writes their result only if the row is still at this version.
    version: int = 0

    def derive_id(self, seq: int) -> str:
        return str(uuid.uuid5(uuid.UUID(self.id), str(seq)))

    def token_for_task(self, task_id: str) -> Token | None:
        return next((token for token in self.tokens if token.task_id == task_id), None)


@dataclass(frozen=True)
class CreateTask:
    task_id: str
    node_id: str
    topic: str
    lock_ms: int
    max_attempts: int


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


Effect = CreateTask | RaiseIncident | InstanceEnded | Record


@dataclass(frozen=True)
class Transition:
    state: InstanceState
    effects: tuple[Effect, ...]
