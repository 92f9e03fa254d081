"""Worker SDK: handlers for external tasks, registered per topic."""

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
