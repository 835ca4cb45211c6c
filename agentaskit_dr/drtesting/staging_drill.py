"""The failover drill in a drill environment: a planned switchover to the other region and
back, asked of the running watchdogs over their API (``POST /v1/switchover``).

The environment is the watchdog config ``drills.failover.config`` names (its API address,
its peers, its operator token). The lock holder is found with a dry run (the others
answer 409); each leg is started there and followed on ``/v1/status`` until no planned
run is active and the cluster's primary region is the leg's target. The watchdogs write
each switchover's own evidence (``switchover/<run id>.json`` on their host).

When the drill environment is production (``allow_production: true``), every watchdog
that answers is asked first: the drill is refused, and nothing is switched, unless each
says the cluster is watching (not failing over or failed over), healthy, not paused, not
self-fenced, with no condition failing and no planned run active
(:func:`production_blockers`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentaskit_dr.api.client import ApiClient, ApiError

if TYPE_CHECKING:
    import ssl

    from agentaskit_dr.config import WatchdogConfig


#: How long a leg whose run ended may still show the old primary (the status reads the
#: run and the cluster record each on its own interval) before it counts as failed.
SETTLE = 30.0


class DrillFailed(Exception):
    """A leg did not start or did not end at its target; the message says which and why."""


@dataclass(slots=True)
class Leg:
    """One switchover of the drill."""

    to: str
    run_id: str | None = None
    seconds: float | None = None
    holder: str | None = None


@dataclass(slots=True)
class StagingDrill:
    """The drill's two legs, and the first failure if any."""

    home: str
    legs: list[Leg] = field(default_factory=list)
    error: str | None = None
    refused: bool = False
    """Not started: the production cluster was not in a state to drill."""

    def as_dict(self) -> dict[str, Any]:
        """The drill's evidence document's ``figures``."""
        return {"home_region": self.home, "error": self.error, "refused": self.refused,
                "legs": [{"to": leg.to, "run_id": leg.run_id, "seconds": leg.seconds,
                          "holder": leg.holder} for leg in self.legs],
                "switchover_seconds": max((leg.seconds for leg in self.legs
                                           if leg.seconds is not None), default=None)}


def api_urls(config: WatchdogConfig) -> list[str]:
    """This watchdog's API address, then its peers'."""
    urls = []
    if config.api.listen is not None:
        from agentaskit_dr.api.server import parse_listen

        host, port = parse_listen(config.api.listen)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        urls.append(f"{'https' if config.api.tls else 'http'}://{host}:{port}")
    return urls + [url.rstrip("/") for url in config.peers]


def production_blockers(status: Mapping[str, Any]) -> list[str]:
    """Why a production cluster, as one watchdog's ``/v1/status`` shows it, must not be
    drilled now (empty: it may)."""
    node = status.get("node") or "a watchdog"
    blockers = []
    if status.get("phase") != "watching":
        blockers.append(f"phase {status.get('phase')!r} (a failover is under way or not "
                        "yet acknowledged)")
    verdict = (status.get("assessment") or {}).get("verdict")
    if verdict not in ("healthy", None):
        blockers.append(f"the primary is assessed {verdict!r}")
    failing = sorted(name for name, clock in (status.get("conditions") or {}).items()
                     if isinstance(clock, Mapping) and clock.get("failing"))
    if failing:
        blockers.append(f"failing: {', '.join(failing)}")
    if status.get("paused"):
        blockers.append(f"the cluster is paused ({status.get('pause_reason') or 'no reason'})")
    if status.get("self_fenced"):
        blockers.append("it fenced its own primary")
    run = status.get("planned_run")
    if isinstance(run, Mapping):
        blockers.append(f"planned run {run.get('run_id')} ({run.get('kind')}) is active")
    return [f"{node}: {blocker}" for blocker in blockers]


async def run_staging_drill(
    urls: list[str], token: str, regions: list[str], *, leg_timeout: float, poll: float = 0.5,
    ssl_context: ssl.SSLContext | None = None, production: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> StagingDrill:
    """Switch over to the other region and back; every leg bounded by ``leg_timeout``.
    ``production``: refuse unless every answering watchdog sees a healthy cluster."""
    clients = [ApiClient(url, token=token, timeout=10.0, ssl_context=ssl_context)
               for url in urls]
    try:
        status = await _any_status(clients)
    except DrillFailed as exc:
        return StagingDrill(home="unknown", error=str(exc))
    home = str(status["primary_region"])
    if production:
        blockers = [blocker for answer in await _statuses(clients)
                    for blocker in production_blockers(answer)]
        if blockers:
            return StagingDrill(home=home, refused=True, error=(
                "the drill environment is production (allow_production) and it is not in "
                f"a state to drill; nothing was switched: {'; '.join(blockers)}"))
    away = next((name for name in regions if name != home), None)
    drill = StagingDrill(home=home)
    if away is None:
        drill.error = f"the status names no region besides {home} to switch over to"
        return drill
    for target in (away, home):
        leg = Leg(to=target)
        drill.legs.append(leg)
        try:
            await _leg(clients, leg, leg_timeout=leg_timeout, poll=poll, clock=clock, sleep=sleep)
        except DrillFailed as exc:
            drill.error = str(exc)
            break
    return drill


async def _statuses(clients: list[ApiClient]) -> list[dict[str, Any]]:
    """The status of every watchdog that answers."""
    answers = []
    for client in clients:
        try:
            answers.append(await client.get("/v1/status"))
        except ApiError:
            continue
    return answers


async def _any_status(clients: list[ApiClient]) -> dict[str, Any]:
    errors = []
    for client in clients:
        try:
            return await client.get("/v1/status")
        except ApiError as exc:
            errors.append(str(exc))
    raise DrillFailed(f"no watchdog of the drill environment answers: {'; '.join(errors)}")


async def _leg(clients: list[ApiClient], leg: Leg, *, leg_timeout: float, poll: float,
               clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
    refusals = []
    holder = None
    for client in clients:
        try:
            plan = await client.post("/v1/switchover", {"to": leg.to, "dry_run": True})
        except ApiError as exc:
            refusals.append(str(exc))
            continue
        if plan.get("would_run") is True:
            holder = client
            break
        refusals.append(f"{client.base_url}: blocked by "
                        f"{'; '.join(map(str, plan.get('blocked_by') or ['?']))}")
    if holder is None:
        raise DrillFailed(f"switchover to {leg.to}: no watchdog would run it: "
                          f"{'; '.join(refusals)}")
    leg.holder = holder.base_url
    start = clock()
    try:
        started = await holder.post("/v1/switchover", {"to": leg.to})
    except ApiError as exc:
        raise DrillFailed(f"switchover to {leg.to}: {exc}") from None
    leg.run_id = str(started.get("run_id"))
    seen_running = False
    ended_elsewhere: float | None = None
    while clock() - start < leg_timeout:
        await sleep(poll)
        try:
            status = await holder.get("/v1/status")
        except ApiError:
            continue  # the holder may be busy restarting its server: ask again
        running = status.get("planned_run")
        seen_running = seen_running or running is not None
        primary = (status.get("cluster") or {}).get("primary_region") or (
            status.get("primary_region"))
        if running is None and primary == leg.to:
            leg.seconds = round(clock() - start, 3)
            return
        if running is None and seen_running:
            # The run's end and the cluster record are read on their own intervals: give
            # the record time to catch up before calling the leg failed.
            ended_elsewhere = clock() if ended_elsewhere is None else ended_elsewhere
            if clock() - ended_elsewhere >= SETTLE:
                raise DrillFailed(f"switchover to {leg.to} (run {leg.run_id}) ended with the "
                                  f"primary in {primary}: see its evidence on "
                                  f"{holder.base_url}")
    raise DrillFailed(f"switchover to {leg.to} (run {leg.run_id}) did not end there within "
                      f"{leg_timeout:g}s")
