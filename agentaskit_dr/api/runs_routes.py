"""``POST /v1/failback`` and ``POST /v1/switchover``: planned runs started on the daemon.

Both need the operator bearer token (``api.token_file``), like pause, resume, ack and
failover. Body: ``{"to": REGION, "dry_run": bool}`` (``to`` required for a switchover;
for a failback it may only name the home region, the config file's ``primary_region``).

Answers: 202 ``{"started": true, "run_id": ...}`` once the run is open in the journal
(it goes on beside the engine loop; ``GET /v1/status`` shows its step); 200 with the plan
for a dry run; 400 naming the field of a bad body; 409 when this watchdog does not hold
the leader lock (naming the holder and its region: send the request there, this API does
not forward it) or a run is active (naming it); 401/403/503 as for the other controls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from agentaskit_dr.api._answers import error_answer, json_answer
from agentaskit_dr.api._auth import control_refusal
from agentaskit_dr.api._bodies import BadRequest, body_object, dry_run_field, read_body

log = structlog.get_logger(__name__)

_FIELDS = frozenset({"to", "dry_run"})

#: (HTTP status, JSON body): 202 started, 200 a dry run's plan.
RunAnswer = tuple[int, dict[str, Any]]


class RunRefused(Exception):
    """The run is not started (not the lock holder, a run is active...): HTTP 409."""


class RunBadRequest(BadRequest):
    """A field the request got wrong (the message names it): HTTP 400."""


class RunsController(Protocol):
    """What the routes need from the daemon (``runtime.planned_runs.PlannedRuns``)."""

    async def failback(self, *, to: str | None, dry_run: bool) -> RunAnswer:
        """Start the failback run (or answer its plan); RunRefused / RunBadRequest."""
        ...

    async def switchover(self, *, to: str, dry_run: bool) -> RunAnswer:
        """Start a switchover run to ``to`` (or answer its plan)."""
        ...


def add_run_routes(app: web.Application, runs: RunsController,
                   token_file: Path | None) -> None:
    """Register both endpoints on ``app``."""
    app.router.add_post("/v1/failback", _handler("failback", runs, token_file))
    app.router.add_post("/v1/switchover", _handler("switchover", runs, token_file))


def _handler(kind: str, runs: RunsController,
             token_file: Path | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        refusal = control_refusal(request, token_file)
        if refusal is not None:
            return refusal
        try:
            to, dry_run = _parse(await read_body(request), required_to=kind == "switchover")
        except BadRequest as exc:
            return error_answer(400, str(exc))
        logged = {"action": kind, "remote": request.remote, "to": to, "dry_run": dry_run}
        try:
            if kind == "switchover":
                assert to is not None  # required by _parse
                status, body = await runs.switchover(to=to, dry_run=dry_run)
            else:
                status, body = await runs.failback(to=to, dry_run=dry_run)
        except RunBadRequest as exc:
            return error_answer(400, str(exc))
        except RunRefused as exc:
            log.warning("api_control", result="refused", refusal=str(exc), **logged)
            return error_answer(409, str(exc))
        log.info("api_control", result="ok", status=status, **logged)
        return json_answer(body, status=status)

    return handle


def _parse(raw: bytes, *, required_to: bool) -> tuple[str | None, bool]:
    """(to, dry_run) from the body; BadRequest naming the first bad field."""
    body = body_object(raw, _FIELDS)
    to = body.get("to")
    if to is None and required_to:
        raise RunBadRequest("to: required (the region whose standby becomes the primary)")
    if to is not None and (not isinstance(to, str) or not to.strip() or len(to) > 100):
        raise RunBadRequest("to: expected a region name (a non-empty string)")
    return to, dry_run_field(body)
