"""Probes: each looks at one target and turns every failure into an observation.

A probe never raises (except on cancellation) and finishes within its own timeout.
"""

from agentaskit_dr.probes.postgres import PostgresProbe, replication_lag_bytes
from agentaskit_dr.probes.region_health import RegionHealthProbe

__all__ = ["PostgresProbe", "RegionHealthProbe", "replication_lag_bytes"]
