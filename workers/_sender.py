"""Reports go out in batches: whatever became ready while the previous message was being
confirmed travels in the next one. One confirmed message carries many completions, which is
what lets a worker (and RabbitMQ) keep up with thousands of short tasks per second."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from orchestrator.model.wire import Report

Publish = Callable[[bytes, str], Awaitable[None]]

#: Keep a message well under the engine's 1 MiB limit; a larger report goes alone.
MAX_BATCH_BYTES = 256 * 1024
MAX_BATCH_REPORTS = 100


class ReportSender:
    def __init__(self, publish: Publish, *, in_flight: int = 16) -> None:
        self._publish = publish
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._slots = in_flight
        self._running = 0
        self._drains: set[asyncio.Future[None]] = set()

    async def send(self, report: Report) -> None:
        """Return once the broker confirmed the message that carried `report`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((orjson.dumps(report.model_dump(mode="json")), future))
        if self._running < self._slots:
            self._running += 1
            drain = asyncio.ensure_future(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                await self._flush(batch)
        finally:
            self._running -= 1

    def _take(self) -> list[tuple[bytes, asyncio.Future[None]]]:
        size = 0
        count = 0
        for body, _ in self._pending:
            if count and (size + len(body) > MAX_BATCH_BYTES or count >= MAX_BATCH_REPORTS):
                break
            size += len(body) + 1
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _flush(self, batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        if len(batch) == 1:
            body = batch[0][0]
        else:
            body = b"[" + b",".join(part for part, _ in batch) + b"]"
        error: BaseException | None = None
        try:
            await self._publish(body, f"reports:{uuid.uuid4().hex}")
        except Exception as exc:
            error = exc
        for _, future in batch:
            if not future.done():
                _settle(future, error)


def _settle(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
