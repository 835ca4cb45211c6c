"""Where a switchover stands, read from the two servers: so a run that crashed half-way
resumes at the right step, and a run that cannot start is refused before any change.

The servers themselves are the switchover's journal: a primary stopped with
``standby.signal`` by the demote, a standby promoted under the run's epoch (its marker),
an old primary running in recovery. :func:`assess` reads them and names the next stage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agentaskit_dr.actuators.fence import PromotionRefused, session
from agentaskit_dr.actuators.pg_control import (
    ServerControl,
    postmaster_pid,
    standby_signal_present,
)
from agentaskit_dr.ports import MARKER_TABLE, StaleEpoch, refuse_newer_epoch

# pg_walfile_name() fails in recovery: the CASE asks it of a primary only.
_STATE = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE
            ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS timeline
"""
_MARKER = f"SELECT epoch, failover_id FROM {MARKER_TABLE} WHERE id = 1"  # noqa: S608


class SwitchoverRefused(PromotionRefused):
    """The switchover did not happen; ``rolled_back`` says the old primary is a primary
    again (False when it had not been touched yet, or could not be restarted)."""

    def __init__(self, reason: str, *, rolled_back: bool) -> None:
        super().__init__(reason)
        self.rolled_back = rolled_back


class Stage(enum.Enum):
    """The next step of a switchover."""

    DEMOTE = "demote"  # a fresh run: the primary answers as a primary
    CATCH_UP = "catch_up"  # the primary was stopped with standby.signal; the standby waits
    PROMOTE = "promote"  # ... and the standby left recovery: pg_promote was sent
    REJOIN = "rejoin"  # promoted under this epoch; the old primary is to stream from it


@dataclass(frozen=True)
class Situation:
    """``stage`` to run next; ``old_timeline``: the primary's timeline (0 when it no longer
    answers as a primary)."""

    stage: Stage
    old_timeline: int


@dataclass(frozen=True)
class _Server:
    in_recovery: bool
    receiver: str | None
    timeline: int
    marker: int | None
    marker_run: str | None


async def assess(
    *, primary_dsn: str, control: ServerControl, standby_dsn: str, epoch: int,
    switchover_id: str, io_timeout: float,
) -> Situation:
    """The next stage of the switchover ``switchover_id`` under ``epoch``; see the module doc.

    Raises SwitchoverRefused (nothing touched) when the servers are in no state this
    switchover starts from or leaves behind, StaleEpoch when a newer epoch acted.
    """
    try:
        standby = await _read(standby_dsn, "standby", io_timeout)
    except PromotionRefused as exc:
        raise SwitchoverRefused(f"preflight: {exc.reason}", rolled_back=False) from exc
    refuse_newer_epoch(standby.marker, epoch,
                       f"the standby was promoted under newer epoch {standby.marker}")
    try:
        primary: _Server | None = await _read(primary_dsn, "primary", io_timeout)
        silence = ""
    except PromotionRefused as exc:
        primary, silence = None, exc.reason
    if primary is not None and not primary.in_recovery:
        _check_fresh_start(primary, standby, epoch)
        return Situation(Stage.DEMOTE, primary.timeline)
    # The primary is no primary now: a switchover may have demoted it.
    running = postmaster_pid(control) is not None
    if primary is None and not standby_signal_present(control):
        raise SwitchoverRefused(
            f"preflight: the primary does not answer ({silence}) and has no standby.signal: "
            "no switchover stopped it", rolled_back=False)
    if standby.in_recovery:
        if primary is not None:
            raise SwitchoverRefused("the server to switch from is not a primary (it is in "
                                    "recovery)", rolled_back=False)
        if running:
            raise SwitchoverRefused(
                f"preflight: the primary runs but does not answer ({silence})",
                rolled_back=False)
        return Situation(Stage.CATCH_UP, 0)
    if standby.marker == epoch:
        return Situation(Stage.REJOIN, 0)
    # This run's promotion under an older epoch (a successor resumes it), or a pg_promote
    # sent before its marker while the primary was stopped: the promoter adopts either.
    if standby.marker_run == switchover_id or (
            standby.marker is None and primary is None and not running):
        return Situation(Stage.PROMOTE, 0)
    source = ("" if primary is None else
              "the server to switch from is not a primary (it is in recovery) and ")
    raise SwitchoverRefused(
        f"{source}the switchover target is already a primary, not promoted by this "
        f"switchover (marker epoch {standby.marker}, run {standby.marker_run})",
        rolled_back=False)


def _check_fresh_start(primary: _Server, standby: _Server, epoch: int) -> None:
    if primary.marker is not None and primary.marker >= epoch:
        raise StaleEpoch(f"the primary was promoted under epoch {primary.marker}, not "
                         f"older than this switchover's {epoch}")
    if not standby.in_recovery:
        raise SwitchoverRefused("the switchover target is not a standby (not in recovery)",
                                rolled_back=False)
    if standby.receiver != "streaming":
        raise SwitchoverRefused(
            f"the standby is not streaming (WAL receiver: {standby.receiver or 'none'}): "
            "it would not receive the primary's last WAL", rolled_back=False)


async def _read(dsn: str, role: str, io_timeout: float) -> _Server:
    async with session(dsn, role=role, io_timeout=io_timeout) as conn:
        row = await conn.fetchrow(_STATE)
        marker = None
        if await conn.fetchval("SELECT to_regclass($1::text) IS NOT NULL", MARKER_TABLE):
            marker = await conn.fetchrow(_MARKER)
    return _Server(in_recovery=bool(row["in_recovery"]), receiver=row["receiver"],
                   timeline=int(row["timeline"] or 0),
                   marker=None if marker is None else int(marker["epoch"]),
                   marker_run=None if marker is None else str(marker["failover_id"]))
