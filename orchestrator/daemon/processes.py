"""Compiled process definitions by id: definitions never change, so each is compiled once."""

from __future__ import annotations

import asyncpg

from orchestrator.definitions.loader import Process, compile_definition
from orchestrator.errors import NotFound
from orchestrator.store.queries import Q


class ProcessCache:
    def __init__(self) -> None:
        self._by_id: dict[int, Process] = {}
        self._versions: dict[int, int] = {}

    async def get(self, conn: asyncpg.Connection, definition_id: int) -> Process:
        process = self._by_id.get(definition_id)
        if process is None:
            row = await conn.fetchrow(Q.definition_by_id, definition_id)
            if row is None:
                raise NotFound(f"process definition {definition_id} does not exist")
            process = self.remember(row)
        return process

    def has(self, definition_id: int) -> bool:
        return definition_id in self._by_id

    def cached(self, definition_id: int) -> Process:
        """A definition already loaded by `get` or `preload` in this batch."""
        return self._by_id[definition_id]

    async def preload(self, conn: asyncpg.Connection, definition_ids: set[int]) -> None:
        for definition_id in definition_ids - self._by_id.keys():
            await self.get(conn, definition_id)

    def remember(self, row: asyncpg.Record) -> Process:
        process = compile_definition(row["graph"])
        self._by_id[row["id"]] = process
        self._versions[row["id"]] = row["version"]
        return process

    def version(self, definition_id: int) -> int | None:
        return self._versions.get(definition_id)
