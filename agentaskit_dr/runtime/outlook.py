"""This daemon's own vantage point, built from its latest probe reports.

The same view is assessed locally (with the peers' views) and published to the peers at
``GET /v1/observations``, so every vantage point speaks one format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentaskit_dr.actuators.pg_control import postmaster_pid, standby_signal_present
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import RegionView, Role, Vantage
from agentaskit_dr.fencing import server_control
from agentaskit_dr.ports import HttpAnswer, PostgresObservation, RegionHealthObservation
from agentaskit_dr.runtime.scheduler import ProbeReport

PRIMARY_DB = "db:primary"
STANDBY_DB = "db:standby"
#: The refusal named for a primary slot whose server answers as a standby.
IN_RECOVERY = "in_recovery"
IN_RECOVERY_DETAIL = "it answers as a standby (in recovery) where the primary should be"


def stale_after(config: WatchdogConfig) -> float:
    """How old a report may be and still count as fresh: two rounds plus a timeout."""
    return config.peer_stale_after


def _fresh(report: ProbeReport | None, now: float, limit: float) -> ProbeReport | None:
    return report if report is not None and now - report.at <= limit else None


def _health_report(latest: Mapping[str, ProbeReport], region: str) -> ProbeReport | None:
    for report in latest.values():
        observation = report.observation
        if isinstance(observation, RegionHealthObservation) and observation.region == region:
            return report
    return None


def own_vantage(
    config: WatchdogConfig,
    latest: Mapping[str, ProbeReport],
    others: Sequence[Vantage],
    now: float,
) -> Vantage:
    """This daemon's view of both regions from its own fresh probe reports."""
    limit = stale_after(config)
    db_probe = {config.primary_region: PRIMARY_DB, config.secondary_region: STANDBY_DB}
    regions: dict[str, RegionView] = {}
    wal_streaming: bool | None = None
    for name in config.regions:
        db = _fresh(latest.get(db_probe[name]), now, limit)
        health = _fresh(_health_report(latest, name), now, limit)
        db_reachable = None
        db_refusal = None
        if db is not None and isinstance(db.observation, PostgresObservation):
            db_reachable = db.observation.reachable
            db_refusal = db.observation.refusal
            if name == config.primary_region and db.observation.status_read and (
                db.observation.in_recovery
            ):
                db_refusal = IN_RECOVERY
            if name == config.secondary_region and db.observation.reachable and (
                db.observation.in_recovery
            ):
                status = db.observation.receiver_status
                # A status the role may not read says nothing either way.
                wal_streaming = None if status == "unreadable" else status == "streaming"
        health_ok = None
        if health is not None and isinstance(health.observation, RegionHealthObservation):
            health_ok = health.observation.healthy
        heard = any(o.fresh and o.role is Role.WATCHDOG and o.region == name for o in others)
        regions[name] = RegionView(db_reachable=db_reachable, health_ok=health_ok,
                                   watchdog_reached=heard or None,
                                   db_observed_at=db.at if db is not None else None,
                                   db_refusal=db_refusal)
    return Vantage(name=f"{config.holder} (self)", role=Role(config.role), region=config.region,
                   fresh=True, regions=regions, wal_streaming=wal_streaming)


def wire_report(
    config: WatchdogConfig,
    own: Vantage,
    latest: Mapping[str, ProbeReport],
    links: Mapping[str, bool],
    now: float,
) -> dict[str, Any]:
    """The ``GET /v1/observations`` body (``peers.WireReport`` parses it back)."""
    ages = [now - report.at for report in latest.values()]
    return {
        "node": config.holder,
        "role": config.role,
        "region": config.region,
        "primary_region": config.primary_region,
        "age": round(max(0.0, min(ages, default=0.0)), 3),
        "regions": {
            # db_reachable: the database answered; db_refusal: it answered with an error.
            name: {"db_reachable": view.db_reachable, "db_refusal": view.db_refusal,
                   "health_ok": view.health_ok,
                   "watchdog_reached": view.watchdog_reached,
                   "db_age": None if view.db_observed_at is None
                   else round(max(0.0, now - view.db_observed_at), 3)}
            for name, view in own.regions.items()
        },
        "wal_streaming": own.wal_streaming,
        "peers": dict(links),
        "server_held": server_held(config),
        "probes": probe_summaries(latest, now),
    }


def server_held(config: WatchdogConfig) -> str | None:
    """This watchdog's region, when it controls that region's server and the server is
    stopped with ``standby.signal`` in place (a self-fence lift elsewhere may count it as
    a standby); None otherwise. Two file checks, read when the report is asked for."""
    if config.role != "watchdog":
        return None
    held = server_control(config, config.region)
    if held is None:
        return None
    if postmaster_pid(held) is None and standby_signal_present(held):
        return config.region
    return None


def probe_summaries(latest: Mapping[str, ProbeReport], now: float) -> dict[str, Any]:
    """Each probe's latest observation in a line of JSON, for the wire report and status."""
    return {name: _probe_summary(report, now) for name, report in sorted(latest.items())}


def _probe_summary(report: ProbeReport, now: float) -> dict[str, Any]:
    observation = report.observation
    if isinstance(observation, PostgresObservation):
        # ok: the server answered; refusal/sqlstate: it answered with an error.
        return {"target": observation.target, "ok": observation.reachable,
                "refusal": observation.refusal, "sqlstate": observation.sqlstate,
                "latency": round(observation.latency, 4), "error": observation.error,
                "in_recovery": observation.in_recovery, "age": round(now - report.at, 3)}
    return {"target": observation.region, "ok": observation.healthy,
            "answers": {answer.value: observation.count(answer) for answer in HttpAnswer},
            "detail": observation.detail, "age": round(now - report.at, 3)}
