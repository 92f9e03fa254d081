"""The working copy of an instance while one event moves its tokens.

A Run holds mutable copies of the instance's tokens, scopes and variables, and the effects
decided so far; `walk.py` moves tokens through nodes on it, `activities.py` runs activities
and loops. Nothing here does I/O or reads a clock: `finish` freezes it into a Transition.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.definitions.expressions import Expression, evaluate
from orchestrator.definitions.graph import Process
from orchestrator.engine import variables
from orchestrator.engine.state import (
    CalledBy,
    CloseWait,
    Effect,
    InstanceState,
    InstanceStatus,
    Loop,
    Record,
    Scope,
    ScopeKind,
    Token,
    Transition,
    Wait,
    WaitKind,
    WithdrawTask,
)
from orchestrator.model.definition import CallActivity

#: A walk that moves tokens more often than this without waiting is a loop of gateways.
MAX_STEPS_PER_WALK = 100_000


@dataclass
class WorkScope:
    """A scope being changed: the same fields as state.Scope, mutable."""

    id: str
    kind: ScopeKind
    node_id: str
    parent: str | None
    variables: dict[str, Any]
    index: int | None = None
    loop: Loop | None = None

    def frozen(self) -> Scope:
        return Scope(
            self.id, self.kind, self.node_id, self.parent, self.variables, self.index, self.loop
        )


@dataclass(frozen=True)
class Arrival:
    """A token reaching a node, by a flow (None: it starts there)."""

    token: Token
    flow_id: str | None = None


@dataclass
class Run:
    process: Process
    id: str
    status: InstanceStatus
    variables: dict[str, Any]
    tokens: dict[str, Token]
    scopes: dict[str, WorkScope]
    seq: int
    version: int
    called_by: CalledBy | None
    waits: dict[str, Wait] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)
    arrivals: deque[Arrival] = field(default_factory=deque)
    #: Scopes that lost a token to an end event: they end if nothing is left in them.
    emptied: set[str | None] = field(default_factory=set)
    steps: int = 0

    @classmethod
    def of(cls, process: Process, state: InstanceState) -> Run:
        scopes = {
            s.id: WorkScope(s.id, s.kind, s.node_id, s.parent, dict(s.variables), s.index, s.loop)
            for s in state.scopes
        }
        return cls(
            process,
            state.id,
            state.status,
            dict(state.variables),
            {t.id: t for t in state.tokens},
            scopes,
            state.seq,
            state.version,
            state.called_by,
            {w.id: w for w in state.waits},
        )

    def finish(self) -> Transition:
        self._close_orphaned_waits()
        state = InstanceState(
            self.id,
            self.status,
            self.variables,
            tuple(self.tokens.values()),
            self.seq,
            self.version,
            tuple(scope.frozen() for scope in self.scopes.values()),
            self.called_by,
            tuple(self.waits.values()),
        )
        return Transition(state, tuple(self.effects))

    # --- waits ---------------------------------------------------------------------------

    def open_wait(self, kind: WaitKind, node_id: str, owner: str) -> Wait:
        wait = Wait(self.new_id(), kind, node_id, owner)
        self.waits[wait.id] = wait
        return wait

    def close_wait(self, wait_id: str) -> None:
        wait = self.waits.pop(wait_id, None)
        if wait is not None:
            self.effects.append(CloseWait(wait.id, wait.kind))

    def close_waits_of(self, owner: str, *, but: str | None = None) -> None:
        for wait in [w for w in self.waits.values() if w.owner == owner and w.id != but]:
            self.close_wait(wait.id)

    def _close_orphaned_waits(self) -> None:
        """A wait whose token or scope is gone (withdrawn, interrupted, ended) ends too."""
        if not self.waits:  # most instances wait on nothing but workers
            return
        alive = set(self.tokens) | set(self.scopes)
        if self.status == "active":
            alive.add(self.id)  # the process scope's own (its event subprocesses')
        for wait in list(self.waits.values()):
            if wait.owner not in alive:
                self.close_wait(wait.id)

    # --- ids, variables, expressions -------------------------------------------------

    def new_id(self) -> str:
        derived = InstanceState.derive_id_of(self.id, self.seq)
        self.seq += 1
        return derived

    def visible(self, scope_id: str | None) -> dict[str, Any]:
        return variables.visible(self.variables, self.scopes, scope_id)

    def assign(self, scope_id: str | None, values: dict[str, Any]) -> None:
        variables.assign(self.variables, self.scopes, scope_id, values)

    def value(self, source: str, context: dict[str, Any]) -> Any:
        expression: Expression = self.process.expression(source)
        return evaluate(expression, context)

    def record(self, kind: str, node_id: str | None = None, **detail: Any) -> None:
        self.effects.append(Record(kind, node_id, detail=detail))

    # --- tokens and scopes -----------------------------------------------------------

    def place(self, token: Token) -> Token:
        self.tokens[token.id] = token
        return token

    def spawn(self, node_id: str, scope: str | None) -> Token:
        return self.place(Token(self.new_id(), node_id, scope=scope))

    def drop(self, token: Token) -> None:
        self.tokens.pop(token.id, None)

    def send(self, token: Token, node_id: str, flow_id: str | None) -> None:
        """Move `token` to `node_id`; the walk enters it when it gets there."""
        moved = self.place(Token(token.id, node_id, scope=token.scope))
        self.arrivals.append(Arrival(moved, flow_id))

    def open_scope(
        self,
        kind: ScopeKind,
        node_id: str,
        parent: str | None,
        values: dict[str, Any] | None = None,
        **extra: Any,
    ) -> WorkScope:
        scope = WorkScope(self.new_id(), kind, node_id, parent, dict(values or {}), **extra)
        self.scopes[scope.id] = scope
        return scope

    def inside(self, scope_id: str | None, outer: str | None) -> bool:
        """Whether `scope_id` is `outer` or lies within it."""
        while True:
            if scope_id == outer:
                return True
            if scope_id is None:
                return False
            scope_id = self.scopes[scope_id].parent

    def cut(self, outer: str | None, *, keep: str | None = None) -> None:
        """Withdraw every token inside `outer` (and its open tasks and child instances), and
        close every scope below it; `outer` itself stays. `keep`: a token not to touch."""
        for token in list(self.tokens.values()):
            if token.id != keep and self.inside(token.scope, outer):
                self._withdraw(token)
        for scope in list(self.scopes.values()):
            if scope.id != outer and self.inside(scope.id, outer):
                del self.scopes[scope.id]

    def withdraw(self, token: Token) -> None:
        """Take `token` away, withdrawing the task or child it waits for."""
        self._withdraw(token)

    def _withdraw(self, token: Token) -> None:
        self.drop(token)
        if token.task_id is not None:
            is_call = isinstance(self.process.nodes[token.node_id], CallActivity)
            self.effects.append(WithdrawTask(token.task_id, call=is_call))

    def close_scope(self, scope_id: str) -> WorkScope:
        self.cut(scope_id)
        return self.scopes.pop(scope_id)

    def has_work_in(self, scope_id: str | None) -> bool:
        """Whether any token or scope is left directly in `scope_id`."""
        return any(t.scope == scope_id for t in self.tokens.values()) or any(
            s.parent == scope_id for s in self.scopes.values()
        )

    def set_loop(self, scope: WorkScope, loop: Loop) -> None:
        scope.loop = loop

    def count_step(self) -> bool:
        self.steps += 1
        return self.steps <= MAX_STEPS_PER_WALK


def loop_with(loop: Loop, **changes: Any) -> Loop:
    return replace(loop, **changes)
