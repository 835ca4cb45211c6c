"""What the integration tests ask a real server about its state: standby or primary, and
the epoch of the fencing marker the last promotion recorded."""

from __future__ import annotations

from agentaskit_dr.local_servers.postgres import PostgresServer


def in_recovery(server: PostgresServer) -> bool:
    """A standby (replaying WAL), not a primary."""
    return server.sql("SELECT pg_is_in_recovery()") == "t"


def marker_epoch(server: PostgresServer) -> int:
    return int(server.sql("SELECT epoch FROM agentaskit_dr.failover_epoch WHERE id = 1"))
