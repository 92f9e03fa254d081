"""Variable scopes: what an element sees, and where a variable it sets lands.

A scope sees its own variables over its parent's, up to the process's. Setting a variable
writes it into the nearest scope that already holds it, else into the process scope (the
semantics of Camunda's setVariable): a result of a task inside a subprocess reaches the
process unless the subprocess declared that variable locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator.engine.state import InstanceState


class ScopeLike(Protocol):
    @property
    def parent(self) -> str | None: ...
    @property
    def variables(self) -> dict[str, Any]: ...


def chain(scopes: Mapping[str, ScopeLike], scope_id: str | None) -> list[ScopeLike]:
    """The scopes from `scope_id` up to (not including) the process scope, innermost first."""
    found: list[ScopeLike] = []
    while scope_id is not None:
        scope = scopes[scope_id]
        found.append(scope)
        scope_id = scope.parent
    return found


def visible(
    root: dict[str, Any], scopes: Mapping[str, ScopeLike], scope_id: str | None
) -> dict[str, Any]:
    """Every variable seen from `scope_id` (the process's own dict when it is the process:
    callers never change what they get)."""
    if scope_id is None:
        return root
    merged = dict(root)
    for scope in reversed(chain(scopes, scope_id)):
        merged.update(scope.variables)
    return merged


def assign(
    root: dict[str, Any],
    scopes: Mapping[str, ScopeLike],
    scope_id: str | None,
    values: Mapping[str, Any],
) -> None:
    """Set each variable in the nearest scope from `scope_id` up that holds it, else in the
    process scope. Changes the dicts in place: callers pass their own working copies."""
    if scope_id is None:
        root.update(values)
        return
    enclosing = chain(scopes, scope_id)
    for name, value in values.items():
        holder = next((s.variables for s in enclosing if name in s.variables), root)
        holder[name] = value


def task_variables(
    state: InstanceState, task_id: str, only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """What the worker of an open task sees: every variable visible from its scope (or only
    those named in `only`, the task's fetch list)."""
    token = state.token_for_task(task_id)
    scope_id = token.scope if token is not None else None
    seen = visible(state.variables, {s.id: s for s in state.scopes}, scope_id)
    if only is None:
        return seen
    return {name: seen[name] for name in only if name in seen}
