"""Worker SDK: handlers for external tasks, registered per topic.

    worker = Worker("payments")

    @worker.task("charge-payment", concurrency=20)
    async def charge(task: TaskContext) -> dict[str, Any]:
        return {"payment_id": await psp.charge(task.variables["amount"], task.idempotency_key)}

Run it as a process of its own with `orchestrator worker mymodule:worker` (or
`worker.run()`): it stops on SIGTERM or SIGINT. Or run it beside other work in a running
event loop:

    async with worker:
        await application.serve()

Entering starts the worker (it connects and consumes); leaving shuts it down the way SIGTERM
does: it stops taking tasks, lets running handlers finish within `shutdown_grace_s`, and gives
the others back to the engine, which dispatches them again at once.
"""

from workers._context import LockStatus, TaskContext, TaskInfo
from workers._errors import BpmnError, LockLost, TaskFailure
from workers._outcome import Handler
from workers._worker import Worker

__all__ = [
    "BpmnError",
    "Handler",
    "LockLost",
    "LockStatus",
    "TaskContext",
    "TaskFailure",
    "TaskInfo",
    "Worker",
]
