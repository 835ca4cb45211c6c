"""Where is the cluster's primary? Every source asked at once, for the start gate and ``unfence``.

Three kinds of source, each bounded by ``probe.timeout``: the cluster record in the lock
store and the other region's server (``fencing``), and the peer watchdogs and the witness
(their ``GET /v1/observations``). :func:`ask_sources` gathers them; :class:`Sources` says
whether one of them places the primary elsewhere, which were silent, and whether any
answered at all (what confirms that the primary is not elsewhere).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from agentaskit_dr.api.credentials import (
    CredentialError,
    PeerTokenError,
    load_credentials,
    read_peer_tokens,
)
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import SourceAnswer, other_server_says, record_says
from agentaskit_dr.runtime.peers import WireReport, read_report


@dataclass(frozen=True)
class Sources:
    """What every source said of the primary's place, in the order asked."""

    answers: tuple[SourceAnswer, ...]

    @property
    def elsewhere(self) -> str | None:
        """The first reason a source gave for the primary being in another region."""
        return next((answer.elsewhere for answer in self.answers if answer.elsewhere), None)

    @property
    def silent(self) -> tuple[str, ...]:
        """One line per source that did not answer, and why."""
        return tuple(answer.silent for answer in self.answers if answer.silent is not None)

    @property
    def confirmed(self) -> bool:
        """At least one source answered: its answer (elsewhere or not) is the evidence."""
        return any(answer.silent is None for answer in self.answers)


async def ask_sources(config: WatchdogConfig, region: str) -> Sources:
    """Ask the lock store, the other region's server, the peers and the witness at once."""
    answers = await asyncio.gather(record_says(config, region),
                                   other_server_says(config, region),
                                   *peers_say(config, region))
    return Sources(tuple(answers))


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
