"""Deploying definitions and answering queries about instances."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.definitions.loader import Process, content_hash, load_definition
from orchestrator.errors import NotFound
from orchestrator.store.queries import Q


async def deploy(conn: asyncpg.Connection, source: str) -> tuple[dict[str, Any], Process]:
    """Store a definition. Identical content returns the existing version; changed, the next."""
    process = load_definition(source)
    definition = process.definition
    digest = content_hash(definition)
    async with conn.transaction():
        await conn.execute(Q.local_limits, "10000", "30000")  # a concurrent deploy of the key
        await conn.execute(Q.definition_lock, definition.key)
        row = await conn.fetchrow(Q.definition_by_hash, definition.key, digest)
        created = row is None
        if row is None:
            graph = definition.model_dump(mode="json", by_alias=True)
            row = await conn.fetchrow(Q.insert_definition, definition.key, digest, graph, source)
    result = {
        "process_key": definition.key,
        "version": row["version"],
        "definition_id": row["id"],
        "created": created,
        "topics": sorted(process.topics),
    }
    return result, process


async def deployed_topics(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(Q.deployed_graphs)
    topics: set[str] = set()
    for row in rows:
        for node in row["graph"]["nodes"]:
            if node.get("type") == "service_task":
                topics.add(node["topic"])
    return topics


async def describe_instance(conn: asyncpg.Connection, instance_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(Q.instance_row, instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id} does not exist")
    tasks = [plain(task) for task in await conn.fetch(Q.instance_tasks, instance_id)]
    return {
        "instance_id": str(row["id"]),
        "process_key": row["process_key"],
        "version": row["version"],
        "business_key": row["business_key"],
        "state": row["status"],
        "variables": row["variables"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "open_tasks": [t for t in tasks if t["status"] not in ("completed", "cancelled")],
        "tasks": tasks,
        "incidents": [plain(i) for i in await conn.fetch(Q.instance_incidents, instance_id)],
        "history": [plain(h) for h in await conn.fetch(Q.instance_history, instance_id)],
    }


async def stats(conn: asyncpg.Connection, process_key: str | None) -> dict[str, Any]:
    counts = {row["status"]: row["n"] for row in await conn.fetch(Q.instance_counts, process_key)}
    totals = await conn.fetchrow(Q.ledger_totals)
    return {
        "instances": counts,
        "open_incidents": await conn.fetchval(Q.open_incident_count, process_key),
        "duplicate_reports": totals["duplicates"],
        "conflicting_reports": totals["conflicts"],
        "counters": {row["name"]: row["value"] for row in await conn.fetch(Q.counters)},
    }


def plain(record: asyncpg.Record) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in record.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    return str(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
