"""The run leader's side of host-bound steps: here when this host controls the server,
else through the watchdog of that region (``POST /v1/host-steps/{step}``, peer credential).

The leader sends (run id, epoch, holder, region, params) to each configured peer in turn
(``peers``; the witness runs no steps); the first that has ``regions.<r>.database.control``
starts the step as a job and answers 202; the leader sends the same request again every
``poll`` seconds until the job answers done or failed, or ``within`` runs out. The job is
keyed by (step, run id) on the peer, so the repeats, a leader's retry after a lost answer
and a resumed run all get the one job, never a second action. See docs/architecture.md
"Where each step runs".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Lease
from agentaskit_dr.runtime.host_steps import HostStepFailed, control_key, perform

log = structlog.get_logger(__name__)

#: Seconds between two polls of a running job.
POLL = 0.2


class HostStepUnavailable(Exception):
    """No host can run the step: this one lacks the key and no peer took it. ``reasons``
    says what each peer answered."""

    def __init__(self, region: str, reasons: list[str]) -> None:
        self.region = region
        self.reasons = reasons
        asked = "; ".join(reasons) if reasons else "no peers are configured to ask"
        super().__init__(f"{control_key(region)} is not set on this host, and no watchdog "
                         f"could run it: {asked}")


class HostStepDelegate:
    """Runs host-bound steps for a run: locally when this host has the control of the
    server, else on the peer watchdog that has it."""

    def __init__(self, config: WatchdogConfig, *, poll: float = POLL) -> None:
        self.config = config
        self.poll = poll

    async def run(self, step: str, *, region: str, run_id: str, lease: Lease,
                  params: dict[str, Any], within: float,
                  still_leader: Callable[[], Awaitable[bool]],
                  progress: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
        """The step's result; HostStepFailed when it ran and failed (or the epoch is
        stale), HostStepUnavailable when no host can run it."""
        if self.config.regions[region].database.control is not None:
            return await perform(self.config, step, region=region, run_id=run_id,
                                 epoch=lease.epoch, holder=lease.holder, params=params,
                                 still_leader=still_leader, progress=progress)
        urls = {label: url for label, url in self.config.vantage_urls.items()
                if label != "witness"}
        if not urls:
            raise HostStepUnavailable(region, [])
        body = {"run_id": run_id, "epoch": lease.epoch, "holder": lease.holder,
                "region": region, "params": params}
        reasons = []
        async with self._session(within, region) as session:
            for label, url in urls.items():
                asking = _Asking(session, f"{url}/v1/host-steps/{step}", body,
                                 self._headers(), progress)
                answer = await asking.until_done(within, self.poll)
                if answer is not None:
                    log.warning("host_step_delegated", step=step, region=region, peer=url,
                                run_id=run_id, epoch=lease.epoch)
                    return answer
                reasons.append(f"{label} ({url}): {asking.refusal}")
        raise HostStepUnavailable(region, reasons)

    def _session(self, within: float, region: str) -> aiohttp.ClientSession:
        from agentaskit_dr.api.credentials import CredentialError, load_credentials

        try:
            ssl_context = load_credentials(self.config).client_ssl
        except CredentialError as exc:
            raise HostStepUnavailable(region, [f"credentials: {exc}"]) from exc
        timeout = min(within, max(self.config.probe.timeout * 2, 5.0))
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(ssl=ssl_context or True))

    def _headers(self) -> dict[str, str]:
        from agentaskit_dr.api.credentials import PeerTokenError, read_peer_tokens

        token_file = self.config.api.peer_token_file
        if token_file is None:
            return {}
        try:
            return {"Authorization": f"Bearer {read_peer_tokens(token_file)[0]}"}
        except PeerTokenError as exc:
            raise HostStepFailed(f"api.peer_token_file: {exc}") from exc


class _Asking:
    """One peer asked until its job ends; ``until_done`` is None when it refused."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                 headers: dict[str, str], progress: Callable[[str], Awaitable[None]]) -> None:
        self.session = session
        self.url = url
        self.body = body
        self.headers = headers
        self.progress = progress
        self.seen: set[str] = set()
        self.refusal = ""

    async def until_done(self, within: float, poll: float) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        accepted = False
        while True:
            status, answer = await self._ask()
            if status in (200, 202):
                accepted = True
                await self._progress(answer)
            if status == 200 and answer.get("state") == "done":
                return dict(answer.get("result") or {})
            if status == 200:
                raise HostStepFailed(f"{answer.get('reason') or 'failed'} (run by {self.url})")
            if status == 409 and answer.get("refusal") == "stale_epoch":
                raise HostStepFailed(str(answer.get("error")))
            if status != 202 and not accepted:
                self.refusal = (f"HTTP {status}: {answer.get('error')}" if status
                                        else str(answer.get("error")))
                return None
            if loop.time() + poll > deadline:
                raise HostStepFailed(f"no result from {self.url} within {within:g}s (last "
                                     f"answer: {answer.get('state') or answer.get('error')})")
            await asyncio.sleep(poll)

    async def _ask(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body); status 0 when the peer did not answer."""
        try:
            async with self.session.post(self.url, json=self.body,
                                         headers=self.headers) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {"error": (await response.text())[:200]}
                return response.status, answer if isinstance(answer, dict) else {}
        except (TimeoutError, aiohttp.ClientError) as exc:
            return 0, {"error": f"no answer: {type(exc).__name__}: {exc}"[:300]}

    async def _progress(self, answer: dict[str, Any]) -> None:
        for stage in answer.get("progress") or []:
            if isinstance(stage, str) and stage not in self.seen:
                self.seen.add(stage)
                await self.progress(stage)
