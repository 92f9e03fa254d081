"""Starting instances exactly once per idempotency key, a whole batch of starts at a time.

Uniqueness comes from unique indexes (`INSERT ... ON CONFLICT DO NOTHING`), never from a read
followed by an insert, so it holds across engine replicas and concurrent transactions. Each
step works on the whole batch in one statement: a batch of 200 starts costs a handful of
round trips, not hundreds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from orchestrator.daemon import calls
from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_transition
from orchestrator.daemon.ledger import fingerprint
from orchestrator.definitions.loader import Process
from orchestrator.engine.state import CalledBy
from orchestrator.engine.step import start_instance
from orchestrator.errors import (
    BusinessKeyConflict,
    IdempotencyConflict,
    NotFound,
    OrchestratorError,
)
from orchestrator.model.wire import StartCommand
from orchestrator.store.errors import NeedsLocks
from orchestrator.store.rows import DefinitionRef
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import InstanceRow, PublishedRow, UnitOfWork
from orchestrator.tracing import new_traceparent

StartResult = dict[str, Any] | OrchestratorError


@dataclass
class _Start:
    """One start command on its way through the batch."""

    command: StartCommand
    definition: DefinitionRef | None = None
    process: Process | None = None
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    payload_hash: bytes = b""
    result: StartResult | None = None

    @property
    def key(self) -> str:
        return self.command.idempotency_key

    @property
    def unique_business_key(self) -> bool:
        return (
            self.command.business_key is not None
            and self.process is not None
            and self.process.definition.business_key.unique
        )


def _payload_hash(command: StartCommand) -> bytes:
    return fingerprint(
        [command.process_key, command.version, command.business_key, command.variables]
    )


def _new_start(command: StartCommand) -> _Start:
    """A call activity's child comes with its id (its call's task id); others get a new one."""
    if command.instance_id is not None:
        return _Start(command, instance_id=command.instance_id)
    return _Start(command)


def _called_by(command: StartCommand) -> CalledBy | None:
    called = command.called_by
    if called is None:
        return None
    return CalledBy(called.instance_id, called.task_id, tuple(called.catches))


class StartBatch:
    def __init__(self, db: Session, context: EngineContext, uow: UnitOfWork | None = None):
        self._db = db
        self._context = context
        self._uow = uow if uow is not None else UnitOfWork()

    async def run(
        self, starts: list[StartCommand]
    ) -> tuple[list[StartResult], list[PublishedRow], UnitOfWork]:
        """Inside the caller's transaction: look up, record the keys, create the winners."""
        batch = [_new_start(command) for command in starts]
        await self._resolve_definitions(batch)
        fresh = await self._record_keys([s for s in batch if s.result is None])
        winners = await self._claim_business_keys(fresh)
        for start in winners:
            self._create(start)
        return await self._write(batch)

    async def run_in_one_statement(
        self, starts: list[StartCommand]
    ) -> tuple[list[StartResult], list[PublishedRow], UnitOfWork]:
        """The common case in one autocommit statement: new keys of definitions this engine
        resolved before, no unique business key. The statement records the keys and writes
        the instances only if every key is new and no newer definition was deployed since;
        otherwise it writes nothing and raises SerializationError (or NeedsLocks
        before writing), and the batch goes through `run`."""
        return await self._write(self.decide_for_one_statement(starts))

    def decide_for_one_statement(self, starts: list[StartCommand]) -> list[_Start]:
        """`run_in_one_statement` up to its statement: the starts decided into the unit of
        work (which the caller may write together with other work). Raises NeedsLocks if it
        cannot."""
        processes = self._context.processes
        batch = [_new_start(command) for command in starts]
        if len({s.key for s in batch}) < len(batch):
            raise NeedsLocks("a key repeats within the batch")
        for start in batch:
            command = start.command
            start.definition = processes.known(command.process_key, command.version)
            if start.definition is None:
                raise NeedsLocks(f"definition {command.process_key!r} not resolved here yet")
            start.process = processes.cached(start.definition.id)
            if start.unique_business_key:
                raise NeedsLocks("business key uniqueness needs the locked way")
            start.payload_hash = _payload_hash(command)
            self._uow.start_keys.append((start.key, start.payload_hash, start.instance_id))
            if command.version is None:
                self._uow.latest_definitions.append((command.process_key, start.definition.version))
            self._create(start)
        return batch

    @staticmethod
    def results(batch: list[_Start]) -> list[StartResult]:
        return [s.result or OrchestratorError("start was not decided") for s in batch]

    async def _write(
        self, batch: list[_Start]
    ) -> tuple[list[StartResult], list[PublishedRow], UnitOfWork]:
        published = await self._db.write(self._uow)
        return self.results(batch), published, self._uow

    async def _resolve_definitions(self, batch: list[_Start]) -> None:
        found: dict[tuple[str, int | None], DefinitionRef | None] = {}
        for start in batch:
            wanted = (start.command.process_key, start.command.version)
            if wanted not in found:
                found[wanted] = await self._definition(*wanted)
            start.definition = found[wanted]
            if start.definition is None:
                suffix = f" version {wanted[1]}" if wanted[1] is not None else ""
                start.result = NotFound(f"no process definition {wanted[0]!r}{suffix} is deployed")
                self._tell_caller(start, str(start.result))
                continue
            start.process = await self._context.processes.get(self._db, start.definition.id)
            start.payload_hash = _payload_hash(start.command)

    def _tell_caller(self, start: _Start, reason: str) -> None:
        """A call activity's child that cannot start fails its call's task (durably, in this
        transaction's outbox): the caller holds an incident instead of waiting for ever."""
        called = start.command.called_by
        called_by = _called_by(start.command)
        if called is not None and called_by is not None:
            self._uow.outbox.append(calls.start_failed(called_by, called.attempt, reason))

    async def _definition(self, key: str, version: int | None) -> DefinitionRef | None:
        ref = await self._db.find_definition(key, version)
        if ref is None:
            return None
        self._context.processes.resolved(ref, latest=version is None)
        return ref

    async def _record_keys(self, batch: list[_Start]) -> list[_Start]:
        """Insert every idempotency key; answer the repeats; return the starts that won."""
        if not batch:
            return []
        won = await self._db.record_start_keys(
            [s.key for s in batch],
            [s.payload_hash for s in batch],
            [s.instance_id for s in batch],
        )
        fresh = [s for s in batch if (s.key, s.instance_id) in won]
        repeats = [s for s in batch if (s.key, s.instance_id) not in won]
        if repeats:
            await self._answer_repeats(repeats)
        return fresh

    async def _answer_repeats(self, repeats: list[_Start]) -> None:
        entries = await self._db.start_key_entries([s.key for s in repeats])
        duplicates: list[str] = []
        for start in repeats:
            entry = entries.get(start.key)
            if entry is None:  # pruned between our two statements
                start.result = IdempotencyConflict("idempotency key expired while starting; retry")
            elif entry.payload_hash != start.payload_hash:
                self._uow.count("starts_conflicting")
                start.result = IdempotencyConflict(
                    f"idempotency key {start.key!r} was already used with another process, "
                    "business key or variables"
                )
            else:
                duplicates.append(start.key)
                start.result = {"instance_id": entry.instance_id, "created": False}
        if duplicates:
            self._uow.count("starts_duplicate", len(duplicates))
            await self._db.count_start_duplicates(duplicates)

    async def _claim_business_keys(self, fresh: list[_Start]) -> list[_Start]:
        """Claim the business keys of definitions that want them unique; apply the policy to
        the starts that lost. Returns the starts that go on to create an instance."""
        claiming = [s for s in fresh if s.unique_business_key]
        if not claiming:
            return fresh
        claimed = await self._db.claim_business_keys(
            [s.command.process_key for s in claiming],
            [s.command.business_key for s in claiming],
            [s.instance_id for s in claiming],
        )
        lost = [s for s in claiming if s.instance_id not in claimed]
        if lost:
            await self._apply_business_key_policy(lost)
        return [s for s in fresh if s.result is None]

    async def _apply_business_key_policy(self, lost: list[_Start]) -> None:
        owners = await self._db.business_key_owners(
            [s.command.process_key for s in lost], [s.command.business_key for s in lost]
        )
        forget: list[str] = []
        existing: list[tuple[str, str]] = []
        for start in lost:
            owner = owners.get((start.command.process_key, start.command.business_key))
            policy = start.process.definition.business_key.on_duplicate if start.process else ""
            if policy == "return_existing" and owner is not None:
                existing.append((start.key, owner))
                start.result = {
                    "instance_id": owner,
                    "created": False,
                    "existing_business_key": True,
                }
            else:
                forget.append(start.key)
                start.result = BusinessKeyConflict(
                    f"an active instance of {start.command.process_key!r} already has business "
                    f"key {start.command.business_key!r}: {owner}"
                )
        if forget:
            self._uow.count("starts_rejected_business_key", len(forget))
            await self._db.forget_starts(forget)
        if existing:
            self._uow.count("starts_returned_existing", len(existing))
            await self._db.starts_return_existing(
                [k for k, _ in existing], [o for _, o in existing]
            )

    def _create(self, start: _Start) -> None:
        if start.process is None or start.definition is None:
            raise RuntimeError("start without a definition")
        command = start.command
        start_at = command.start_at if command.start_at in start.process.nodes else None
        transition = start_instance(
            start.process, start.instance_id, command.variables, _called_by(command), start_at
        )
        # Every instance has a trace: its caller's, else a new one.
        traceparent = command.traceparent or new_traceparent()
        row = InstanceRow(
            start.definition.id,
            command.process_key,
            command.business_key,
            transition.state.status,
            traceparent,
        )
        self._uow.new_instances.append((row, transition.state))
        info = InstanceInfo(
            start.instance_id, command.process_key, command.business_key, traceparent
        )
        apply_transition(self._uow, info, transition)
        self._uow.count("instances_started")
        start.result = {
            "instance_id": start.instance_id,
            "created": True,
            "process_key": start.definition.key,
            "version": start.definition.version,
        }
