"""Payload fingerprints and the in-batch view of the report ledger."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from orchestrator.model.wire import BpmnErrorReport, Completed, Failed
from orchestrator.store.rows import LedgerEntry
from orchestrator.store.store import Session
from orchestrator.store.unit_of_work import UnitOfWork

OUTCOME_SLOT = "outcome"


def fingerprint(value: Any) -> bytes:
    """A stable hash of a JSON-able value: key order does not matter."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).digest()[:16]


def report_fingerprint(report: Completed | Failed | BpmnErrorReport) -> bytes:
    if isinstance(report, Completed):
        return fingerprint(["completed", report.variables])
    if isinstance(report, BpmnErrorReport):
        return fingerprint(["bpmn_error", report.code, report.message, report.variables])
    return fingerprint(
        ["failed", report.error_message, report.error_code, report.retries, report.retry_delay_ms]
    )


def slot_of(report: Completed | Failed | BpmnErrorReport) -> str:
    return f"failed:{report.attempt}" if isinstance(report, Failed) else OUTCOME_SLOT


class BatchLedger:
    """The ledger rows of the batch's tasks, plus what this batch adds to them."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._entries: dict[tuple[str, str], LedgerEntry] = {}

    async def load(self, db: Session, task_ids: list[str]) -> None:
        self._entries.update(await db.ledger_entries(task_ids))

    def recorded(self, task_id: str, slot: str) -> LedgerEntry | None:
        return self._entries.get((task_id, slot))

    def recorded_for(
        self, report: Completed | Failed | BpmnErrorReport
    ) -> tuple[str, LedgerEntry] | None:
        """The entry a report repeats, with its slot. For an outcome: the slot an operator
        retry archived this attempt's outcome to, else the task's one outcome slot."""
        slots = [slot_of(report)]
        if slots[0] == OUTCOME_SLOT:
            slots.insert(0, f"{OUTCOME_SLOT}:{report.attempt}")
        for slot in slots:
            entry = self._entries.get((report.task_id, slot))
            if entry is not None:
                return slot, entry
        return None

    def insert(self, report: Completed | Failed | BpmnErrorReport, payload_hash: bytes) -> None:
        slot = slot_of(report)
        self._entries[(report.task_id, slot)] = LedgerEntry(
            report.type, report.attempt, payload_hash
        )
        self._uow.ledger_inserts[(report.task_id, slot)] = [
            report.task_id,
            slot,
            report.type,
            report.attempt,
            report.worker_id,
            payload_hash,
            0,
            0,
        ]
