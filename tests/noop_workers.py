"""Workers for subprocess tests: complete every task of the topics in TEST_TOPICS at once."""

from __future__ import annotations

import os
from typing import Any

from workers import TaskContext, Worker

worker = Worker("noop", claim_after_ms=float(os.environ.get("TEST_CLAIM_AFTER_MS", "20")))


def _register(topic: str) -> None:
    @worker.task(topic, concurrency=int(os.environ.get("TEST_CONCURRENCY", "50")))
    async def handle(task: TaskContext) -> dict[str, Any]:
        return {f"{task.info.node_id}_attempt": task.attempt}


for _topic in filter(None, os.environ.get("TEST_TOPICS", "").split(",")):
    _register(_topic)
