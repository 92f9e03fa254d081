"""Workers holding a task that a transition withdrew are told to stop (after commit).

A task is withdrawn when its scope ends: an interrupting boundary event fired (a timer, a
message, an error), a terminate end event, a loop's completion condition. The statement
that cancels it returns who held it (UnitOfWork.revoked); the worker gets `task_revoked`
in its inbox, which cancels its handler. Best effort, like every notice: a worker that
misses it learns at its next heartbeat or report, which is answered and not applied.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from orchestrator.broker.topology import Topology
from orchestrator.daemon.reports import Notice
from orchestrator.model.wire import TaskRevoked
from orchestrator.store.unit_of_work import UnitOfWork


def revoke_notices(uows: Iterable[UnitOfWork], topology: Topology) -> list[Notice]:
    return [notice for uow in uows for notice in notices_for(uow.revoked, topology)]


def notices_for(revoked: Iterable[tuple[str, int, str]], topology: Topology) -> list[Notice]:
    """A `task_revoked` for each (task id, attempt, worker id) in the worker's inbox."""
    notices = []
    for task_id, attempt, worker_id in revoked:
        body = TaskRevoked(task_id=task_id, attempt=attempt, reason="closed")
        notices.append(Notice(topology.worker_inbox(worker_id), orjson.dumps(body.model_dump())))
    return notices
