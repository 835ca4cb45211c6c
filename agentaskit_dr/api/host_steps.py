"""``POST /v1/host-steps/{step}``: a run's leader asks this watchdog to run a host-bound
step (``sync-primary``, ``switchover``) on the server of its region.

Peers only (the peer token or a verified client certificate), like ``/v1/fence-primary``;
with no peer credential configured the endpoint is off (403). The body::

    {"run_id": "...", "epoch": 7, "holder": "...", "region": "us-west-2", "params": {}}

The first request starts the step as a job and answers 202; the same request again
answers 202 while it runs, then 200 with ``{"state": "done", "result": ...}`` or
``{"state": "failed", "reason": ...}``. 409 refuses a stale epoch (``"refusal":
"stale_epoch"``) or a region this watchdog has no control of (``"no_control"``). The
work is done by a :class:`HostSteps` (``runtime.host_steps.HostStepJobs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from agentaskit_dr.api._answers import error_answer, json_answer
from agentaskit_dr.api._auth import PeerGate
from agentaskit_dr.api._bodies import BadRequest, body_object, epoch_field, read_body

log = structlog.get_logger(__name__)

STEPS = ("sync-primary", "switchover")
_FIELDS = frozenset({"run_id", "epoch", "holder", "region", "params"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")


class StepAnswer(Protocol):
    """An HTTP status and the JSON object to answer with."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> dict[str, Any]: ...


class HostSteps(Protocol):
    """What the endpoint needs from the daemon."""

    async def request(self, step: str, *, run_id: str, epoch: int, holder: str, region: str,
                      params: dict[str, Any]) -> StepAnswer:
        """Start the step's job or answer how it is doing."""
        ...


@dataclass(frozen=True, slots=True)
class _Served:
    host_steps: HostSteps | None
    peers: PeerGate


_SERVED = web.AppKey("host_steps", _Served)


def add_host_step_routes(app: web.Application, host_steps: HostSteps | None,
                         peers: PeerGate) -> None:
    """Serve ``POST /v1/host-steps/{step}`` on ``app`` (503 without ``host_steps``)."""
    app[_SERVED] = _Served(host_steps, peers)
    app.router.add_post("/v1/host-steps/{step}", _host_step)


async def _host_step(request: web.Request) -> web.Response:
    served = request.app[_SERVED]
    peers = served.peers
    if peers.open:
        return error_answer(403, "host steps need a peer credential: set api.peer_token_file "
                            "or api.tls.client_ca_file")
    refused = peers.refusal(request)
    if refused is not None:
        return refused
    step = request.match_info["step"]
    if step not in STEPS:
        return error_answer(404, f"step: unknown host step {step!r} (known: "
                            f"{', '.join(STEPS)})")
    host_steps = served.host_steps
    if host_steps is None:
        return error_answer(503, "this daemon runs no host steps (a witness, or no lock)")
    try:
        body = _parse(await read_body(request))
    except BadRequest as exc:
        return error_answer(400, str(exc))
    if step == "switchover" and "to" not in body["params"]:
        return error_answer(400, "params.to: the switchover needs the standby's region")
    answer = await host_steps.request(step, run_id=body["run_id"], epoch=body["epoch"],
                                      holder=body["holder"], region=body["region"],
                                      params=body["params"])
    # A running job is polled every fraction of a second: those answers are debug only.
    (log.debug if answer.status == 202 else log.info)(
        "host_step_request", step=step, status=answer.status, remote=request.remote,
        run_id=body["run_id"], epoch=body["epoch"], state=answer.body.get("state"))
    return json_answer(answer.body, status=answer.status)


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("body: expected a JSON object")
    body = body_object(raw, _FIELDS)
    for name in ("run_id", "holder", "region"):
        value = body.get(name)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise BadRequest(f"{name}: expected a name (letters, digits, ._:/@+-), got "
                              f"{type(value).__name__}")
    epoch = epoch_field(body)
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("params: expected a JSON object")
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 < timeout <= 86400):
        raise BadRequest("params.timeout: expected seconds between 0 and 86400")
    to = params.get("to")
    if to is not None and (not isinstance(to, str) or not _NAME.fullmatch(to)):
        raise BadRequest("params.to: expected a region name")
    return {"run_id": body["run_id"], "epoch": epoch, "holder": body["holder"],
            "region": body["region"], "params": params}
