"""/metrics over HTTP, for the engine and the workers (ORCH_METRICS_PORT)."""

from __future__ import annotations

import asyncio
import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from orchestrator.errors import OrchestratorError

log = logging.getLogger(__name__)


class MetricsPortInUse(OrchestratorError):
    """The metrics port cannot be bound (another process has it, or it is privileged)."""


class MetricsServer:
    """prometheus_client's HTTP server of one registry, in a daemon thread of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None

    def start(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on `port`; MetricsPortInUse when the port cannot be had."""
        if self._server is None:
            try:
                self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
            except OSError as exc:
                raise MetricsPortInUse(
                    f"cannot serve metrics on ORCH_METRICS_PORT {port}: {exc.strerror or exc} "
                    "(two processes on one host need a port each)"
                ) from exc
            log.info("metrics served on port %d (/metrics)", port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
