"""Example workers for the order process (orchestrator/definitions/examples/order.bpmn).

Run them with: orchestrator worker workers.examples.order:worker
"""

from __future__ import annotations

import zlib
from typing import Any

from workers import BpmnError, TaskContext, Worker

worker = Worker("order-workers")

#: Orders of more items than this are out of stock in the example.
STOCK_LIMIT = 10
#: Payments above this amount are declined in the example.
CARD_LIMIT = 5_000
#: Fraud scores are 0 to FRAUD_SCORES - 1; the process refuses an order scored 80 or more.
FRAUD_SCORES = 90


@worker.task("reserve-stock", concurrency=50)
async def reserve_stock(task: TaskContext) -> dict[str, Any]:
    quantity = int(task.variables.get("quantity", 1))
    return {"reserved": quantity <= STOCK_LIMIT}


@worker.task("check-fraud", concurrency=50)
async def check_fraud(task: TaskContext) -> dict[str, Any]:
    # A stand-in for a scoring service: the same order always gets the same score, and
    # about one order in nine scores 80 or more.
    key = task.business_key or task.info.instance_id
    return {"fraud_score": zlib.crc32(key.encode()) % FRAUD_SCORES}


@worker.task("charge-payment", concurrency=50)
async def charge_payment(task: TaskContext) -> dict[str, Any]:
    if float(task.variables.get("amount", 0)) > CARD_LIMIT:
        raise BpmnError("PAYMENT_DECLINED", "the amount is over the card's limit")
    # A real payment service gets the idempotency key, so a retried attempt charges once.
    return {"payment_id": f"pay-{task.idempotency_key[:8]}"}


@worker.task("ship-order", concurrency=50)
async def ship_order(task: TaskContext) -> dict[str, Any]:
    return {"tracking_number": f"TRK-{task.business_key or task.info.instance_id[:8]}"}
