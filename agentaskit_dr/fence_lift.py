"""Lifting a region's fence by hand (``unfence``): only once something confirms that no
other region holds the primary.

The same sources as the start gate (``primary_sources``): one placing the primary
elsewhere refuses, always; none answering refuses too (an old primary cut off from
everything may have been failed over), unless the operator lifts unconfirmed on purpose.
:func:`check_lift` asks without changing anything (``unfence`` asks it before asking the
operator), :func:`lift_fence` asks again and lifts.
"""

from __future__ import annotations

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused, lift_fence_over_sql
from agentaskit_dr.actuators.pg_control import (
    postmaster_pid,
    remove_standby_signal,
    standby_signal_present,
)
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import server_control
from agentaskit_dr.primary_sources import ask_sources

log = structlog.get_logger(__name__)


class LiftUnconfirmed(Exception):
    """No source answered: nothing confirms that the primary is not elsewhere."""

    def __init__(self, region: str, silent: tuple[str, ...]) -> None:
        super().__init__(f"refusing to lift {region}'s fence: nothing confirms the primary "
                         "is not elsewhere, nothing answered")
        self.region = region
        self.silent = silent


async def check_lift(config: WatchdogConfig, region: str, *,
                     allow_unconfirmed: bool = False) -> list[str]:
    """Ask the sources whether ``region``'s fence may be lifted; changes nothing.

    Refuses (PromotionRefused) while a source places the primary elsewhere: lifting the
    old primary's fence then makes two primaries, ``allow_unconfirmed`` or not. Refuses
    (LiftUnconfirmed) when no source answered, unless ``allow_unconfirmed``. Returns the
    lines to tell the operator before lifting (a lift unconfirmed on purpose says so).
    """
    sources = await ask_sources(config, region)
    if sources.elsewhere is not None:
        raise PromotionRefused(
            f"refusing to lift {region}'s fence: {sources.elsewhere}; fail back instead "
            "(sync-primary makes this server a standby of the new primary)"
        )
    said: list[str] = []
    if not sources.confirmed:
        if not allow_unconfirmed:
            log.error("unfence_unconfirmed", region=region, silent=list(sources.silent))
            raise LiftUnconfirmed(region, sources.silent)
        log.warning("unfence_unconfirmed_allowed", region=region, silent=list(sources.silent))
        said.append(f"lifting {region}'s fence unconfirmed, on purpose (--allow-unconfirmed): "
                    f"nothing answered: {'; '.join(sources.silent)}")
    return said


async def lift_fence(config: WatchdogConfig, region: str, *, remove_signal: bool,
                     allow_unconfirmed: bool = False) -> list[str]:
    """Lift ``region``'s fence by hand; the lines to tell the operator.

    Asks the sources first (:func:`check_lift`; its refusals change nothing). SQL part,
    when the server answers as a primary: the locked-out roles get LOGIN back and
    read-only is reset. Control part: ``standby.signal`` is removed only with
    ``remove_signal``.
    """
    said = await check_lift(config, region, allow_unconfirmed=allow_unconfirmed)
    control = server_control(config, region)
    if control is not None and standby_signal_present(control):
        if remove_signal:
            remove_standby_signal(control)
            said.append("removed standby.signal: the next start comes up as a primary")
        else:
            said.append("standby.signal left in place: the server starts in recovery; pass "
                        "--remove-standby-signal to start it as a primary")
    if control is not None and postmaster_pid(control) is None:
        said.append("server not running: start it, then run unfence again to lift the SQL part")
        return said
    dsn = config.regions[region].database.connect_dsn()
    roles = await lift_fence_over_sql(dsn, io_timeout=config.probe.timeout, flog=log)
    if roles is None:
        said.append("server is in recovery: nothing to lift over SQL")
    else:
        said.append(f"read-only default reset; LOGIN given back to: {', '.join(roles) or 'none'}")
    return said
