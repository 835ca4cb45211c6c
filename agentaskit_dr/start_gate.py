"""The start gate: may this region's PostgreSQL server start as primary? (``start-gate``)

Run before the server's service starts it (``ExecStartPre=``, an init container). Three
kinds of source are asked at once, each bounded by ``probe.timeout``: the cluster record
in the lock store, the other region's server (``fencing``), and the peer watchdogs and
the witness (their ``GET /v1/observations``). Any of them saying the primary is elsewhere
refuses the start. When none of them answers, nothing confirms that this region still
holds the primary -- an old primary cut off from everything may have been failed over
(chaos seed 1000) -- and the start is refused too, unless
``start_gate.when_unconfirmed: allow`` or ``--allow-unconfirmed`` says otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import structlog

from agentaskit_dr.actuators.pg_control import (
    ServerControlFailed,
    standby_signal_present,
    write_recovery_config,
)
from agentaskit_dr.api.credentials import (
    CredentialError,
    PeerTokenError,
    load_credentials,
    read_peer_tokens,
)
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import (
    SourceAnswer,
    other_region,
    other_server_says,
    primary_conninfo_for,
    record_says,
    server_control,
)
from agentaskit_dr.runtime.peers import WireReport, read_report

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
    answers = await asyncio.gather(record_says(config, region),
                                   other_server_says(config, region),
                                   *peers_say(config, region))
    reason = next((answer.elsewhere for answer in answers if answer.elsewhere), None)
    if reason is None:
        if any(answer.silent is None for answer in answers):
            return GateAnswer(True, f"{region} may start as primary: no primary elsewhere")
        silent = "; ".join(answer.silent or "" for answer in answers)
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


def peers_say(config: WatchdogConfig, region: str) -> list[asyncio.Future[SourceAnswer]]:
    """One question per peer watchdog and witness (``peers``, ``witness``)."""
    return [asyncio.ensure_future(peer_says(config, region, label, url))
            for label, url in config.vantage_urls.items()]


async def peer_says(config: WatchdogConfig, region: str, label: str, url: str) -> SourceAnswer:
    """What the daemon at ``url`` reports: the primary region it watches, the failover it
    knows of and whether it runs one now."""
    timeout = config.probe.timeout
    try:
        async with asyncio.timeout(timeout):
            report = await _fetch(config, url, timeout)
    except TimeoutError:
        return SourceAnswer(silent=f"{label} {url}: no answer within {timeout:g}s")
    except (aiohttp.ClientError, OSError, ValueError, CredentialError,
            PeerTokenError) as exc:
        return SourceAnswer(silent=f"{label} {url}: {type(exc).__name__}: {exc}"[:300])
    return judge_report(region, label, report)


def judge_report(region: str, label: str, report: WireReport) -> SourceAnswer:
    """A peer's report read for the gate: the primary elsewhere, or a failover running."""
    who = f"{label} ({report.node}, {report.role} in {report.region})"
    epoch = "" if report.failover_epoch is None else f" since epoch {report.failover_epoch}"
    if report.primary_region != region:
        return SourceAnswer(f"{who} reports the primary in {report.primary_region}{epoch}")
    if report.failover_in_progress:
        return SourceAnswer(f"{who} is running a failover away from {region} now")
    return SourceAnswer()


async def _fetch(config: WatchdogConfig, url: str, timeout: float) -> WireReport:  # noqa: ASYNC109
    credentials = load_credentials(config)
    headers = {}
    if credentials.peer_token_file is not None:
        headers["Authorization"] = f"Bearer {read_peer_tokens(credentials.peer_token_file)[0]}"
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(ssl=credentials.client_ssl or True),
    ) as client, client.get(f"{url}/v1/observations", headers=headers) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await read_report(response)
