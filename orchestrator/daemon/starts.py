"""Starting instances exactly once per idempotency key, many starts per transaction.

Uniqueness comes from unique indexes (`INSERT ... ON CONFLICT DO NOTHING`), never from a read
followed by an insert, so it holds across engine replicas and concurrent transactions.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from orchestrator.daemon.context import EngineContext
from orchestrator.daemon.effects import InstanceInfo, apply_transition
from orchestrator.daemon.ledger import fingerprint
from orchestrator.definitions.loader import Process
from orchestrator.engine.step import start_instance
from orchestrator.errors import (
    BusinessKeyConflict,
    IdempotencyConflict,
    NotFound,
    OrchestratorError,
)
from orchestrator.model.wire import StartCommand
from orchestrator.store.queries import Q
from orchestrator.store.unit_of_work import PublishedRow, UnitOfWork, state_to_row

StartResult = dict[str, Any] | OrchestratorError


class StartBatch:
    def __init__(self, conn: asyncpg.Connection, context: EngineContext):
        self._conn = conn
        self._context = context
        self._processes = context.processes
        self._uow = UnitOfWork()
        self._definitions: dict[tuple[str, int | None], asyncpg.Record] = {}

    async def run(self, starts: list[StartCommand]) -> tuple[list[StartResult], list[PublishedRow]]:
        results: list[StartResult] = []
        for command in starts:
            try:
                results.append(await self._start(command))
            except OrchestratorError as exc:
                results.append(exc)
        published = await self._uow.write(
            self._conn, self._context.outbox_claim_ms, self._context.engine_id
        )
        return results, published

    async def _definition(self, key: str, version: int | None) -> asyncpg.Record:
        cached = self._definitions.get((key, version))
        if cached is not None:
            return cached
        if version is None:
            row = await self._conn.fetchrow(Q.latest_definition, key)
        else:
            row = await self._conn.fetchrow(Q.definition_by_version, key, version)
        if row is None:
            suffix = f" version {version}" if version is not None else ""
            raise NotFound(f"no process definition {key!r}{suffix} is deployed")
        self._definitions[(key, version)] = row
        return row

    async def _start(self, command: StartCommand) -> dict[str, Any]:
        definition = await self._definition(command.process_key, command.version)
        process = await self._processes.get(self._conn, definition["id"])
        payload_hash = fingerprint(
            [command.process_key, command.version, command.business_key, command.variables]
        )
        instance_id = str(uuid.uuid4())
        key = command.idempotency_key
        if await self._conn.fetchval(Q.insert_start_ledger, key, payload_hash, instance_id) is None:
            return await self._repeated_start(command, payload_hash)
        if command.business_key is not None and process.definition.business_key.unique:
            existing = await self._claim_business_key(process, command, instance_id)
            if existing is not None:
                return existing
        self._create(process, definition, command, instance_id)
        return _result(instance_id, True, definition)

    async def _repeated_start(self, command: StartCommand, payload_hash: bytes) -> dict[str, Any]:
        entry = await self._conn.fetchrow(Q.start_ledger_entry, command.idempotency_key)
        if entry is None:  # removed by retention pruning between our two statements
            raise IdempotencyConflict("idempotency key expired while starting; retry")
        if entry["payload_hash"] != payload_hash:
            self._uow.count("starts_conflicting")
            raise IdempotencyConflict(
                f"idempotency key {command.idempotency_key!r} was already used with another "
                "process, business key or variables"
            )
        await self._conn.execute(Q.count_start_duplicate, command.idempotency_key)
        self._uow.count("starts_duplicate")
        return {"instance_id": str(entry["instance_id"]), "created": False}

    async def _claim_business_key(
        self, process: Process, command: StartCommand, instance_id: str
    ) -> dict[str, Any] | None:
        """None when the key is ours now; else the answer under the definition's policy."""
        args = (command.process_key, command.business_key)
        if await self._conn.fetchval(Q.claim_business_key, *args, instance_id) is not None:
            return None
        owner = await self._conn.fetchval(Q.business_key_owner, *args)
        if process.definition.business_key.on_duplicate == "reject" or owner is None:
            await self._conn.execute(Q.forget_start, command.idempotency_key)
            self._uow.count("starts_rejected_business_key")
            raise BusinessKeyConflict(
                f"an active instance of {command.process_key!r} already has business key "
                f"{command.business_key!r}: {owner}"
            )
        await self._conn.execute(Q.start_returns_existing, command.idempotency_key, owner)
        self._uow.count("starts_returned_existing")
        return {"instance_id": str(owner), "created": False, "existing_business_key": True}

    def _create(
        self, process: Process, definition: asyncpg.Record, command: StartCommand, instance_id: str
    ) -> None:
        transition = start_instance(process, instance_id, command.variables)
        _, status, variables, tokens, seq = state_to_row(transition.state)
        self._uow.new_instances.append(
            (
                instance_id,
                definition["id"],
                command.process_key,
                command.business_key,
                status,
                variables,
                tokens,
                seq,
            )
        )
        info = InstanceInfo(instance_id, command.process_key, command.business_key)
        apply_transition(self._uow, info, transition)
        self._uow.count("instances_started")


def _result(instance_id: str, created: bool, definition: asyncpg.Record) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "created": created,
        "process_key": definition["key"],
        "version": definition["version"],
    }
