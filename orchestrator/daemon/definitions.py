"""Compiled process definitions by id: definitions never change, so each is compiled once."""

from __future__ import annotations

from orchestrator.definitions.loader import Process, compile_definition
from orchestrator.errors import NotFound
from orchestrator.store.rows import DefinitionRef, StoredDefinition
from orchestrator.store.store import Session


class DefinitionCache:
    """The process definitions this engine compiled (by id), and what its starts' lookups of
    a key (and version) found."""

    def __init__(self) -> None:
        self._by_id: dict[int, Process] = {}
        self._versions: dict[int, int] = {}
        #: The version a start without one resolved to last; a newer one may exist since
        #: (another engine deployed it), so a start that relies on this checks as it writes.
        self._latest: dict[str, DefinitionRef] = {}
        #: (key, version) -> definition: fixed once deployed.
        self._exact: dict[tuple[str, int], DefinitionRef] = {}

    def resolved(self, ref: DefinitionRef, *, latest: bool) -> None:
        """Note what a start's definition lookup found."""
        self._exact[(ref.key, ref.version)] = ref
        if latest:
            self._latest[ref.key] = ref

    def known(self, key: str, version: int | None) -> DefinitionRef | None:
        """A definition resolved before and compiled here; see `_latest` for version None."""
        ref = self._latest.get(key) if version is None else self._exact.get((key, version))
        return ref if ref is not None and ref.id in self._by_id else None

    async def get(self, db: Session, definition_id: int) -> Process:
        process = self._by_id.get(definition_id)
        if process is None:
            stored = await db.definition_by_id(definition_id)
            if stored is None:
                raise NotFound(f"process definition {definition_id} does not exist")
            process = self.remember(stored)
        return process

    def has(self, definition_id: int) -> bool:
        return definition_id in self._by_id

    def cached(self, definition_id: int) -> Process:
        """A definition already loaded by `get` or `preload` in this batch."""
        return self._by_id[definition_id]

    async def preload(self, db: Session, definition_ids: set[int]) -> None:
        for definition_id in definition_ids - self._by_id.keys():
            await self.get(db, definition_id)

    def remember(self, stored: StoredDefinition) -> Process:
        process = compile_definition(stored.graph)
        self._by_id[stored.id] = process
        self._versions[stored.id] = stored.version
        return process

    def version(self, definition_id: int) -> int | None:
        return self._versions.get(definition_id)
