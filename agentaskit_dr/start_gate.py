"""The start gate: may this region's PostgreSQL server start as primary? (``start-gate``)

Run before the server's service starts it (``ExecStartPre=``, an init container). Three
kinds of source are asked at once (``primary_sources``), each bounded by ``probe.timeout``:
the cluster record in the lock store, the other region's server, and the peer watchdogs
and the witness. Any of them saying the primary is elsewhere refuses the start. When
none of them answers, nothing confirms that this region still holds the primary -- an
old primary cut off from everything may have been failed over (chaos seed 1000) -- and
the start is refused too, unless ``start_gate.when_unconfirmed: allow`` or
``--allow-unconfirmed`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from agentaskit_dr.actuators.pg_control import (
    ServerControlFailed,
    standby_signal_present,
    write_recovery_config,
)
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import other_region, primary_conninfo_for, server_control
from agentaskit_dr.primary_sources import ask_sources

log = structlog.get_logger(__name__)

#: How to start anyway on purpose, said with every refusal for want of an answer.
ANYWAY = ("to start it as primary on purpose: agentaskit-dr start-gate --allow-unconfirmed, "
          "or start_gate.when_unconfirmed: allow")


@dataclass(frozen=True)
class GateAnswer:
    """The start gate's answer: ``allowed`` to start, and one line saying why."""

    allowed: bool
    reason: str


async def start_gate(config: WatchdogConfig, region: str, *,
                     allow_unconfirmed: bool = False) -> GateAnswer:
    """May ``region``'s server start (as primary)? Run before its service starts it.

    A data directory holding ``standby.signal`` starts in recovery: allowed. Otherwise
    refused while a source says the primary is elsewhere; in control mode the refusal
    first writes ``standby.signal`` + ``primary_conninfo``, so a start that happens anyway
    comes up read-only. Refused as well when no source answered, unless
    ``allow_unconfirmed`` or ``start_gate.when_unconfirmed: allow``; that refusal writes
    nothing (the primary may well be here: a later start with the sources back decides).
    """
    control = server_control(config, region)
    if control is not None and standby_signal_present(control):
        return GateAnswer(True, f"{region}: standby.signal present, the server starts in "
                                "recovery (read-only)")
    sources = await ask_sources(config, region)
    reason = sources.elsewhere
    if reason is None:
        if sources.confirmed:
            return GateAnswer(True, f"{region} may start as primary: no primary elsewhere")
        silent = "; ".join(sources.silent)
        if allow_unconfirmed or config.start_gate.when_unconfirmed == "allow":
            log.warning("start_gate_unconfirmed_allowed", region=region, silent=silent)
            return GateAnswer(True, f"{region} may start as primary, unconfirmed (allowed "
                                    f"on purpose): nothing answered: {silent}")
        log.error("start_gate_unconfirmed", region=region, silent=silent)
        return GateAnswer(False, f"refusing to start {region} as primary: nothing confirms "
                                 f"the primary is not elsewhere, nothing answered: {silent}; "
                                 f"{ANYWAY}")
    if control is None:
        return GateAnswer(False, f"refusing to start {region} as primary: {reason}")
    try:
        write_recovery_config(control, primary_conninfo_for(config, other_region(config, region)))
    except ServerControlFailed as exc:
        return GateAnswer(False, f"refusing to start {region} as primary: {reason}; and could "
                                 f"not write standby.signal: {exc}")
    log.warning("start_gate_demoted", region=region, reason=reason)
    return GateAnswer(False, f"refusing to start {region} as primary: {reason}; wrote "
                             "standby.signal, so a start anyway comes up read-only")
