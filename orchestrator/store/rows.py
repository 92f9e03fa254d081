"""Rows as the store hands them out (besides the task and instance rows of unit_of_work.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Row(Protocol):
    """A row by column name, for the few callers that read a handful of columns of a wide
    row (the reaper's and the dispatch watch's locked tasks, an operator's instance or
    incident)."""

    def __getitem__(self, column: str, /) -> Any: ...

    def items(self) -> Iterator[tuple[str, Any]]: ...


@dataclass(frozen=True)
class DefinitionRef:
    """What a lookup of a process definition by key (and version) found."""

    id: int
    key: str
    version: int


@dataclass(frozen=True)
class StoredDefinition:
    """A deployed definition's graph, as stored (compiled by the engine's DefinitionCache)."""

    id: int
    version: int
    graph: dict[str, Any]


@dataclass(frozen=True)
class SavedDefinition:
    """A deploy's outcome: the definition's id and version, and whether it is a new one."""

    id: int
    version: int
    created: bool


@dataclass(frozen=True)
class LedgerEntry:
    """A report recorded in the report ledger (in one of its task's slots)."""

    kind: str
    attempt: int
    payload_hash: bytes


@dataclass(frozen=True)
class StartKeyEntry:
    """What an idempotency key of a start was recorded with."""

    payload_hash: bytes
    instance_id: str


@dataclass(frozen=True)
class MessageEntry:
    """What the message ledger holds about a message id."""

    payload_hash: bytes
    #: buffered, correlated or expired.
    status: str
    instance_id: str | None


@dataclass(frozen=True)
class QueuedTopic:
    """A topic with queued tasks, and how long (ms) its longest-waiting one has waited."""

    topic: str
    oldest_ms: int | None


def plain(row: Row) -> dict[str, Any]:
    """A row as JSON-able values (for an operator's answer)."""
    return {key: _jsonable(value) for key, value in row.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    return str(value)
