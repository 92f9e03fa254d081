"""The DBOS application of the peer benchmark: S no-op steps in one durable workflow.

Shared by the driver (`dbos_workflow`, which also runs the workflows itself in `direct`
mode) and the queue worker processes (`dbos_worker`). Every process must register the same
workflow and steps before `DBOS.launch()`, so the names below are fixed.
"""

from __future__ import annotations

from collections.abc import Callable

from dbos import DBOS, DBOSConfig

APP_NAME = "orchestrator-bench"
# Fixed, so the driver and every worker process run one application version: a workflow
# enqueued by a client without a version is dequeued only by executors of the latest one.
APP_VERSION = "bench-1"
QUEUE_NAME = "bench"
WORKFLOW_NAME = "bench_workflow"
READY_LINE = "dbos-worker-ready"


def define_workflow(steps: int) -> Callable[[str], str]:
    """Register `steps` step functions and the workflow that runs them in order.

    Each step receives the payload and returns it unchanged; DBOS checkpoints every step's
    output (one row in its system database) before the next one runs.
    """

    def make_step(index: int) -> Callable[[str], str]:
        def step(payload: str) -> str:
            return payload

        step.__name__ = step.__qualname__ = f"bench_step_{index}"
        return DBOS.step(name=f"bench_step_{index}")(step)

    step_functions = [make_step(index + 1) for index in range(steps)]

    @DBOS.workflow(name=WORKFLOW_NAME)
    def bench_workflow(payload: str) -> str:
        for step in step_functions:
            payload = step(payload)
        return payload

    return bench_workflow


def dbos_config(database_url: str, *, executor_id: str, log_level: str) -> DBOSConfig:
    """DBOS's defaults (pool of 20, every step checkpointed) with a fixed name and version.

    Each process needs its own executor id: a launching process recovers the PENDING
    workflows of its executor id, so two processes sharing one would take each other's work.
    """
    return {
        "name": APP_NAME,
        "system_database_url": database_url,
        "application_version": APP_VERSION,
        "executor_id": executor_id,
        "log_level": log_level,
    }
