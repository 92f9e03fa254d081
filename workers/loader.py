"""Import a worker the way `celery -A` does: `package.module:attribute`."""

from __future__ import annotations

import importlib

from workers._worker import Worker


def load_worker(spec: str) -> Worker:
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    worker = getattr(module, attribute or "worker", None)
    if not isinstance(worker, Worker):
        raise SystemExit(f"{spec}: expected a workers.Worker instance, got {type(worker).__name__}")
    return worker
