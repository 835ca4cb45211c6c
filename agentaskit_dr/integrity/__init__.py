"""``verify-data-integrity``: prove that the primary and its resynced standby hold the
same data (failback step 3; docs/architecture.md, "Failback: verify-data-integrity").

1. lineage and LSN (``_lineage``), 2. amcheck on the standby (``_amcheck``), 3. every
table hashed on both at one WAL position (``_compare``). Differences are findings in the
report, named by relation; a check that cannot be carried out raises IntegrityUnverified.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import asyncpg

from agentaskit_dr.integrity._amcheck import check_corruption
from agentaskit_dr.integrity._compare import MAX_WRITE_PAUSE, compare_tables
from agentaskit_dr.integrity._lineage import check_lineage, roles
from agentaskit_dr.integrity._report import (
    Corruption,
    IntegrityReport,
    IntegrityUnverified,
    Lineage,
    TableComparison,
)
from agentaskit_dr.integrity._session import PRIVILEGES_HINT, integrity_session, translated

if TYPE_CHECKING:
    from agentaskit_dr.config import WatchdogConfig

__all__ = [
    "MAX_WRITE_PAUSE",
    "PRIVILEGES_HINT",
    "Corruption",
    "IntegrityReport",
    "IntegrityUnverified",
    "Lineage",
    "TableComparison",
    "verify_data_integrity",
]

_CONNECT_TIMEOUT = 10.0


async def verify_data_integrity(config: WatchdogConfig, *, max_wait: float) -> IntegrityReport:
    """Check the config's two regions' servers. ``max_wait`` bounds each wait (the
    standby's catch-up, the consistent point), not the scans, which take what the data
    takes (see the cost per GiB in the docs)."""
    dsns = {name: region.database.connect_dsn() for name, region in config.regions.items()}
    connect_timeout = min(max_wait, _CONNECT_TIMEOUT)
    first, second = dsns
    async with contextlib.AsyncExitStack() as stack:
        conns = {
            name: await stack.enter_async_context(
                integrity_session(name, dsns[name], connect_timeout=connect_timeout))
            for name in (first, second)
        }
        stage = "asking each server its role"
        try:
            primary_region, standby_region = await roles(
                (first, conns[first]), (second, conns[second]))
            primary, standby = conns[primary_region], conns[standby_region]
            report = IntegrityReport(
                primary_region=primary_region, standby_region=standby_region,
                database=await primary.fetchval("SELECT current_database()"))
            stage = f"lineage of {standby_region} from {primary_region}"
            report.lineage = await check_lineage(
                primary, standby, standby_region=standby_region, max_wait=max_wait,
                problems=report.problems)
            if report.problems:
                return report  # not a caught-up copy of this primary: comparing tells nothing
            stage = f"amcheck on {standby_region}"
            report.relations_checked, report.amcheck_seconds, report.corruption = (
                await check_corruption(standby, standby_region=standby_region,
                                       database=report.database))
            report.problems.extend(
                f"{found.kind} {found.relation} is corrupt on {standby_region}: {found.detail}"
                for found in report.corruption)
            stage = f"comparing {primary_region} with {standby_region}"
            hasher = await stack.enter_async_context(
                integrity_session(primary_region, dsns[primary_region],
                                  connect_timeout=connect_timeout))
            await compare_tables(primary, hasher, standby, report=report, max_wait=max_wait)
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
            raise translated(stage, exc) from exc
        return report
