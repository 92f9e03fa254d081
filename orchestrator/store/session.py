"""What an engine's database session may wait for, as PostgreSQL settings of the session.

A replica that freezes inside a transaction (a stopped process, a paused VM) or whose host
vanishes without closing its sockets must not hold its row locks for long: PostgreSQL ends
its transaction after `idle_in_transaction_timeout_ms`, and its keepalives notice a silent
peer. Every other engine bounds how long it waits for a lock (`lock_timeout_ms`) and how long
a statement may run (`statement_timeout_ms`); the client gives up a little later than the
server would, so a connection that went silent is abandoned rather than waited on forever.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How much longer than the server's statement limit the client waits for an answer.
CLIENT_MARGIN_S = 5.0


@dataclass(frozen=True)
class SessionLimits:
    lock_timeout_ms: int = 100
    statement_timeout_ms: int = 10_000
    idle_in_transaction_timeout_ms: int = 5_000
    keepalive_idle_s: int = 5
    keepalive_interval_s: int = 2
    keepalive_count: int = 3

    def server_settings(self) -> dict[str, str]:
        """Sent with each connection's startup: no round trip of its own."""
        return {
            "lock_timeout": str(self.lock_timeout_ms),
            "statement_timeout": str(self.statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_in_transaction_timeout_ms),
            "tcp_keepalives_idle": str(self.keepalive_idle_s),
            "tcp_keepalives_interval": str(self.keepalive_interval_s),
            "tcp_keepalives_count": str(self.keepalive_count),
            # Unacknowledged data (a result sent into a partition) also ends the connection.
            "tcp_user_timeout": str(self._silent_peer_ms()),
        }

    def client_timeout_s(self) -> float:
        """asyncpg's own limit on a call, behind the server's."""
        return self.statement_timeout_ms / 1000 + CLIENT_MARGIN_S

    def _silent_peer_ms(self) -> int:
        return (self.keepalive_idle_s + self.keepalive_interval_s * self.keepalive_count) * 1000
