"""The daemon's HTTP(S) API: health, status, peer observations, metrics and authenticated control.

Health, status and metrics are open: operators and probes read them without a secret.
``GET /v1/observations`` needs a peer credential when one is configured (the peer token
of ``api.peer_token_file``, or a client certificate verified against
``api.tls.client_ca_file``). Every state-changing call (pause, resume, ack, failover)
needs ``Authorization: Bearer <token>``, where the token is the stripped content of
``api.token_file``, read at each control request so a rotated file takes effect at once.
Without a token file the control API is off (403); with an unreadable or empty one it
refuses everything (503), never falling back to "no token". See ``_auth``.

With ``api.tls`` the API serves HTTPS only (``ssl_context``).

Every answer is JSON except ``/metrics`` and the read-only status page (``/`` and
``/ui/...``, see ``status_page``). Bad requests get a 400 naming the field; the
controller's refusals a 409; its unexpected failures a 503 (logged as ``api_error``),
so no request ever gets a bare 500 or a traceback.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from agentaskit_dr.api._answers import error_answer as _error
from agentaskit_dr.api._answers import json_answer as _json
from agentaskit_dr.api._auth import PeerGate, control_refusal
from agentaskit_dr.api._bodies import (
    MAX_BODY_BYTES,
    BadRequest,
    Body,
    body_object,
    by_field,
    dry_run_field,
    epoch_field,
    read_body,
    reason_field,
    text_field,
)
from agentaskit_dr.api.host_steps import HostSteps, add_host_step_routes
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.runs_routes import RunsController, add_run_routes
from agentaskit_dr.api.status_page import EvidenceDir, add_status_page

log = structlog.get_logger(__name__)

class ControlRefused(Exception):
    """The controller refuses an action; the message is for the operator (HTTP 409)."""


class Controller(Protocol):
    """What the API needs from the running watchdog (implemented by the runtime)."""

    def status(self) -> dict[str, Any]:
        """JSON-able: region, role, phase, verdicts, lock holder/epoch, last failover, paused."""
        ...

    def observations(self) -> dict[str, Any]:
        """JSON-able: this watchdog's latest probe results, for its peers."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(ready?, reason): the config is loaded and the probes are running."""
        ...

    def alive(self) -> bool:
        """The engine loop is making progress."""
        ...

    async def pause(self, reason: str | None, by: str | None = None) -> dict[str, Any]:
        """Pause the cluster (every watchdog): nothing decided or actuated until resumed."""
        ...

    async def resume(self, by: str | None = None) -> dict[str, Any]:
        """Undo ``pause``, for the whole cluster."""
        ...

    async def acknowledge(self, by: str | None = None) -> dict[str, Any]:
        """Clear the anti-flap block after a failover, on every watchdog."""
        ...

    async def failover(self, *, dry_run: bool, reason: str | None) -> dict[str, Any]:
        """Start a manual failover (or only report what it would do); may raise ControlRefused."""
        ...

    async def fence_own_primary(self, *, epoch: int, failover_id: str) -> dict[str, Any]:
        """A peer's promoter asks this watchdog to fence its own region's primary under
        ``epoch``: ``{"fenced": bool, "server_answers": bool | None, "detail": str}``."""
        ...


@dataclass(frozen=True, slots=True)
class _Wiring:
    controller: Controller
    metrics: Metrics
    token_file: Path | None
    peers: PeerGate


_WIRING = web.AppKey("wiring", _Wiring)


def build_app(
    controller: Controller,
    *,
    metrics: Metrics,
    token_file: Path | None,
    peer_token_file: Path | None = None,
    client_certificates: bool = False,
    evidence_dir: EvidenceDir = lambda: None,
    host_steps: HostSteps | None = None,
    runs: RunsController | None = None,
) -> web.Application:
    """The aiohttp application; ``token_file`` None disables the control endpoints;
    ``peer_token_file`` and ``client_certificates`` (a verified client certificate is a
    peer) guard ``/v1/observations``, which is open when neither is given. The status
    page at ``/`` lists the runs in ``evidence_dir()`` (``status_page``)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
    peers = PeerGate(peer_token_file, client_certificates=client_certificates)
    app[_WIRING] = _Wiring(controller, metrics, token_file, peers)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/observations", _observations)
    app.router.add_post("/v1/fence-primary", _fence_primary)
    add_host_step_routes(app, host_steps, peers)
    app.router.add_get("/metrics", _metrics)
    add_status_page(app, controller.status, evidence_dir)
    for path, action in _ACTIONS.items():
        app.router.add_post(path, _control(action))
    if runs is not None:  # POST /v1/failback and /v1/switchover (api/runs_routes.py)
        add_run_routes(app, runs, token_file)
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8787"`` for IPv6) as (host, port); port 0 picks a free one."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    valid_port = port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535
    if not sep or not host or not valid_port:
        raise ValueError(f"api.listen: expected 'host:port' with a port 0-65535, got {listen!r}")
    return host, int(port_text)


class ApiServer:
    """The API served on one TCP address; ``port`` is the bound port once started."""

    def __init__(
        self,
        controller: Controller,
        *,
        metrics: Metrics,
        token_file: Path | None,
        peer_token_file: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 5.0,
        evidence_dir: EvidenceDir = lambda: None,
        host_steps: HostSteps | None = None,
        runs: RunsController | None = None,
    ) -> None:
        client_certificates = (ssl_context is not None
                               and ssl_context.verify_mode != ssl.CERT_NONE)
        self._app = build_app(controller, metrics=metrics, token_file=token_file,
                              peer_token_file=peer_token_file,
                              client_certificates=client_certificates,
                              evidence_dir=evidence_dir,
                              host_steps=host_steps, runs=runs)
        self._ssl_context = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError("the API server is not started")
        return self._port

    async def start(self, listen: str) -> None:
        """Bind ``listen`` ("host:port") and serve; raises OSError if the address is taken."""
        if self._runner is not None:
            raise RuntimeError("the API server is already started")
        host, port = parse_listen(listen)
        runner = web.AppRunner(
            self._app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=self._ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("api_started", host=host, port=self._port,
                 scheme="https" if self._ssl_context is not None else "http",
                 observations="open" if self._app[_WIRING].peers.open else "peers only")

    async def stop(self) -> None:
        """Stop serving and close open connections; harmless when not started."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        log.info("api_stopped", port=self._port)
        self._port = None


# ---------------------------------------------------------------- read endpoints


async def _healthz(request: web.Request) -> web.Response:
    alive = request.app[_WIRING].controller.alive()
    return _json({"ok": alive}, status=200 if alive else 503)


async def _readyz(request: web.Request) -> web.Response:
    ready, reason = request.app[_WIRING].controller.ready()
    return _json({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[_WIRING].controller.status())


async def _observations(request: web.Request) -> web.Response:
    wiring = request.app[_WIRING]
    return wiring.peers.refusal(request) or _json(wiring.controller.observations())


async def _fence_primary(request: web.Request) -> web.Response:
    """A peer's promoter asks this watchdog to fence its own primary before promoting.

    Only a peer may ask (the peer token or a verified client certificate); with no peer
    credential configured the endpoint is off (403): stopping a primary is not for anyone
    who can reach the port.
    """
    wiring = request.app[_WIRING]
    if wiring.peers.open:
        return _error(403, "fence requests need a peer credential: set api.peer_token_file "
                      "or api.tls.client_ca_file")
    refused = wiring.peers.refusal(request)
    if refused is not None:
        return refused
    try:
        body = body_object(await read_body(request), frozenset({"epoch", "failover_id"}))
        epoch = epoch_field(body)
        failover_id = text_field(body, "failover_id") or ""
    except BadRequest as exc:
        return _error(400, str(exc))
    log.warning("fence_requested_by_peer", epoch=epoch, failover_id=failover_id,
                remote=request.remote)
    return _json(await wiring.controller.fence_own_primary(epoch=epoch,
                                                           failover_id=failover_id))


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_WIRING].metrics.render()
    # The exposition content type carries parameters (version, charset), so set it whole.
    return web.Response(body=body, headers={"Content-Type": content_type})


# ---------------------------------------------------------------- control endpoints


@dataclass(frozen=True, slots=True)
class _Action:
    """One control endpoint: the body fields it takes, how to read them, the call to make."""

    name: str
    fields: frozenset[str]
    read: Callable[[Body], dict[str, Any]]
    call: Callable[[Controller, dict[str, Any]], Awaitable[dict[str, Any]]]


_ACTIONS = {
    "/v1/pause": _Action(
        "pause", frozenset({"reason", "by"}),
        lambda body: {"reason": reason_field(body), **by_field(body)},
        lambda controller, params: controller.pause(**params),
    ),
    "/v1/resume": _Action(
        "resume", frozenset({"by"}), by_field,
        lambda controller, params: controller.resume(**params),
    ),
    "/v1/ack": _Action(
        "ack", frozenset({"by"}), by_field,
        lambda controller, params: controller.acknowledge(**params),
    ),
    "/v1/failover": _Action(
        "failover", frozenset({"dry_run", "reason"}),
        lambda body: {"dry_run": dry_run_field(body), "reason": reason_field(body)},
        lambda controller, params: controller.failover(**params),
    ),
}


def _control(action: _Action) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that authenticates, validates the body, calls the controller and logs."""

    async def handler(request: web.Request) -> web.Response:
        refusal = control_refusal(request, request.app[_WIRING].token_file)
        if refusal is not None:
            return refusal
        try:
            params = action.read(body_object(await read_body(request), action.fields))
        except BadRequest as exc:
            return _error(400, str(exc))
        logged = {"action": action.name, "remote": request.remote, **params}
        try:
            result = await action.call(request.app[_WIRING].controller, params)
        except ControlRefused as exc:
            log.warning("api_control", result="refused", refusal=str(exc), **logged)
            return _error(409, str(exc))
        except Exception:
            log.warning("api_control", result="error", **logged)
            raise
        log.info("api_control", result="ok", **logged)
        return _json(result)

    return handler


# ---------------------------------------------------------------- JSON answers


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Router errors as JSON; anything unexpected logged and answered 503, never 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = f"{exc.reason.lower()}: {request.method} {request.path}"
        return _error(exc.status, message, headers=headers)
    except Exception:
        log.exception("api_error", method=request.method, path=request.path)
        return _error(503, "internal error, see logs")
