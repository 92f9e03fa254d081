"""Incidents as a table for people reading a terminal at night."""

from __future__ import annotations

from typing import Any

_COLUMNS = (
    ("incident", "id"),
    ("instance", "instance_id"),
    ("process", "process_key"),
    ("business key", "business_key"),
    ("node", "node_id"),
    ("kind", "kind"),
    ("attempt", "attempt"),
    ("since", "created_at"),
    ("message", "message"),
)
_MESSAGE_WIDTH = 80


def incident_table(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return "no incidents\n"
    rows = [[header for header, _ in _COLUMNS]]
    for incident in incidents:
        row = [_cell(key, incident.get(key)) for _, key in _COLUMNS]
        if incident.get("resolved_at"):
            row[-1] = f"[{incident.get('resolution') or 'resolved'}] {row[-1]}"
        row[-1] = row[-1][:_MESSAGE_WIDTH]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    text = str(value).replace("\n", " ")
    # ISO timestamps to the second: 2026-11-27T23:55:10
    return text[:19] if key == "created_at" else text
