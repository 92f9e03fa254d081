"""Deploying definitions and answering queries about instances."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.daemon.timers import start_timer_rows
from orchestrator.definitions.bpmn.detect import reads_as_xml
from orchestrator.definitions.bpmn.reader import load_bpmn
from orchestrator.definitions.loader import Process, content_hash, load_definition
from orchestrator.errors import NotFound
from orchestrator.store.store import Session, Store

#: A deploy waits this long for a concurrent deploy of the same key.
DEPLOY_LOCK_TIMEOUT_MS = 10_000


def load_processes(source: str) -> list[Process]:
    """Every process in a source: BPMN 2.0 XML (told apart by content) holds one or more,
    YAML or JSON one. Refused whole (DefinitionError) if any of them cannot run."""
    if reads_as_xml(source):
        return load_bpmn(source)
    return [load_definition(source)]


async def deploy(store: Store, source: str) -> tuple[list[dict[str, Any]], list[Process]]:
    """Store every process of a source, in one transaction: all or none. Identical content
    returns the existing version; changed, the next."""
    processes = load_processes(source)
    results: list[dict[str, Any]] = []
    async with store.transaction(
        lock_timeout_ms=DEPLOY_LOCK_TIMEOUT_MS, statement_timeout_ms=30_000
    ) as db:
        for process in processes:
            definition = process.definition
            digest = content_hash(definition)
            graph = definition.model_dump(mode="json", by_alias=True)
            saved = await db.save_definition(definition.key, digest, graph, source)
            if saved.created:  # a new version: its timer start events replace the old ones
                rows = start_timer_rows(process, saved.id, saved.version, datetime.now(UTC))
                await db.replace_start_timers(definition.key, rows)
            results.append(
                {
                    "process_key": definition.key,
                    "version": saved.version,
                    "definition_id": saved.id,
                    "created": saved.created,
                    "topics": sorted(process.topics),
                }
            )
    return results, processes


async def deployed_topics(db: Session) -> set[str]:
    topics: set[str] = set()
    for graph in await db.deployed_graphs():
        for node in graph["nodes"]:
            if node.get("type") == "service_task":
                topics.add(node["topic"])
            elif node.get("type") == "user_task":
                topics.add(node.get("topic", "user-task"))
    return topics


async def describe_instance(db: Session, instance_id: str) -> dict[str, Any]:
    row = await db.instance_row(instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id} does not exist")
    tasks = await db.instance_tasks(instance_id)
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
        "scopes": describe_scopes(row["tokens"], row["scopes"]),
        "parent_id": str(row["parent_id"]) if row["parent_id"] is not None else None,
        # The W3C trace its tasks carry: look the instance up in a tracing backend by it.
        "traceparent": row["traceparent"],
        "children": await db.instance_children(instance_id),
        "incidents": await db.instance_incidents(instance_id),
        "timers": await db.instance_timers(instance_id),
        "subscriptions": await db.instance_subscriptions(instance_id),
        "history": await db.instance_history(instance_id),
    }


async def stats(db: Session, process_key: str | None) -> dict[str, Any]:
    counts = await db.instance_counts(process_key)
    duplicates, conflicts = await db.ledger_totals()
    return {
        "instances": counts,
        "open_incidents": await db.open_incident_count(process_key),
        "duplicate_reports": duplicates,
        "conflicting_reports": conflicts,
        "counters": await db.counters(),
    }


def describe_scopes(tokens: list[list[Any]], scopes: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The instance's scopes, the process's first, each with the tokens that stand in it:
    where they wait (a task, a join) and, for a multi-instance body, its progress."""
    listed: list[dict[str, Any]] = [{"scope": None, "kind": "process", "tokens": []}]
    for scope in (scopes or {}).get("scopes", []):
        entry: dict[str, Any] = {
            "scope": scope["id"],
            "kind": scope["kind"],
            "node_id": scope["node"],
            "parent": scope["parent"],
            "variables": scope["vars"],
            "tokens": [],
        }
        if "index" in scope:
            entry["element"] = scope["index"]
        if "loop" in scope:
            total, started, completed = scope["loop"][:3]
            entry["loop"] = {"elements": total, "started": started, "completed": completed}
        listed.append(entry)
    by_id = {entry["scope"]: entry for entry in listed}
    for token in tokens:
        node_id, task_id = token[1], token[2]
        scope_id = token[3] if len(token) > 3 else None
        waiting = {"node_id": node_id, "task_id": task_id}
        if len(token) > 4 and token[4] is not None:
            waiting["joined_by"] = token[4]
        by_id.get(scope_id, listed[0])["tokens"].append(waiting)
    return listed


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
