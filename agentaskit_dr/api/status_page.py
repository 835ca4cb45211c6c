"""The on-call status page: ``GET /`` and the few read-only routes it uses.

- ``GET /``: the page, rendered here from the same data as ``/v1/status`` (redacted:
  no password written in a URL or DSN reaches it) and the evidence directory's failovers
  and failbacks; no token, nothing fetched from anywhere else.
- ``GET /ui/main``: the refreshable part of the page, which ``page.js`` fetches every
  few seconds (with scripts off, the page reloads itself instead).
- ``GET /ui/page.css``, ``/ui/page.js``, ``/ui/icon.svg``: the page's own files.
- ``GET /ui/timeline/{kind}/{run_id}.svg``: a run's timeline picture, drawn from its
  evidence file. ``kind`` is ``failover`` or ``failback`` and ``run_id`` a plain name
  (``evidence._check_name``): nothing else names a file, so no path leaves the evidence
  directory.

Every answer carries a Content-Security-Policy that allows this origin only. Files are
read in a worker thread: the API shares its event loop with the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from agentaskit_dr.api._answers import error_answer
from agentaskit_dr.api.status_html import RunRow, render_main, render_page
from agentaskit_dr.config import redact

log = structlog.get_logger(__name__)

#: Kinds of evidence the page lists and draws.
RUN_KINDS = ("failover", "failback", "switchover")
#: Runs listed on the page, newest first.
RUNS_SHOWN = 10
_SVG_SUFFIX = ".svg"
_ASSETS = {
    "page.css": "text/css",
    "page.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

StatusSource = Callable[[], Mapping[str, Any]]
#: The evidence directory (its runs read in the default layout and the one before it), or
#: the run evidence roots to read, in order (``evidence_layout.run_roots``); None: no runs.
EvidenceDir = Callable[[], Path | Sequence[Path] | None]


def add_status_page(app: web.Application, status: StatusSource,
                    evidence_dir: EvidenceDir) -> None:
    """Register the page's routes; ``status`` is the controller's ``/v1/status`` body and
    ``evidence_dir`` where the runs' evidence files are (None: show no runs)."""
    page = _StatusPage(status, evidence_dir)
    app.router.add_get("/", page.page)
    app.router.add_get("/ui/main", page.main)
    app.router.add_get("/ui/timeline/{kind}/{name}", page.timeline)
    for name in _ASSETS:
        app.router.add_get(f"/ui/{name}", _asset(name))


class _StatusPage:
    def __init__(self, status: StatusSource, evidence_dir: EvidenceDir) -> None:
        self._status = status
        self._evidence_dir = evidence_dir
        self._listing = _RunListing()

    async def page(self, request: web.Request) -> web.Response:
        status, main = await self._main()
        html = render_page(main, node=str(status.get("node") or "watchdog"),
                           phase=str(status.get("phase") or "unknown"))
        return _answer(html, "text/html", cache="no-store")

    async def main(self, request: web.Request) -> web.Response:
        _, main = await self._main()
        return _answer(main, "text/html", cache="no-store")

    def _roots(self) -> list[Path] | None:
        from agentaskit_dr.runtime.evidence_layout import run_roots

        given = self._evidence_dir()
        if given is None:
            return None
        return run_roots(given) if isinstance(given, Path) else list(given) or None

    async def timeline(self, request: web.Request) -> web.Response:
        kind, name = request.match_info["kind"], request.match_info["name"]
        directory = self._roots()
        if kind not in RUN_KINDS or not name.endswith(_SVG_SUFFIX) or directory is None:
            return error_answer(404, f"no timeline at {request.path}")
        run_id = name.removesuffix(_SVG_SUFFIX)
        try:
            svg = await asyncio.to_thread(_timeline_svg, directory, kind, run_id)
        except (OSError, ValueError) as exc:
            # Names that are not plain file names land here too (evidence._check_name).
            log.info("timeline_not_served", kind=kind, run_id=run_id, reason=str(exc))
            return error_answer(404, f"no timeline for {kind} {run_id!r}")
        return _answer(svg, "image/svg+xml", cache="max-age=60")

    async def _main(self) -> tuple[Mapping[str, Any], str]:
        status: Mapping[str, Any] = redact(dict(self._status()))
        directory = self._roots()
        runs: list[RunRow] = []
        where = None if directory is None else " and ".join(map(str, directory))
        if directory is not None:
            try:
                runs = await asyncio.to_thread(self._listing.rows, directory)
            except OSError as exc:
                log.warning("evidence_not_listed", directory=where, reason=str(exc))
                where = f"{directory} (cannot be listed: {exc.strerror or exc})"
        main = render_main(status, runs, now=time.time(), evidence_dir=where)
        return status, main


class _RunListing:
    """The runs of an evidence directory, read again only when its files change (the
    page asks every few seconds; the files change once per failover or failback)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._rows: list[RunRow] = []

    def rows(self, roots: list[Path]) -> list[RunRow]:
        key = (*roots, *sorted((str(path), path.stat().st_mtime_ns, path.stat().st_size)
                               for root in roots for path in root.glob("*/[!.]*.json")))
        if key != self._key:
            self._rows, self._key = _runs(roots), key
        return self._rows


def _runs(roots: list[Path]) -> list[RunRow]:
    from agentaskit_dr.runtime.evidence_layout import list_runs

    rows = [
        RunRow(kind=s.kind, run_id=s.run_id, created_at=s.created_at, outcome=s.outcome,
               rto_seconds=s.rto_seconds, rpo_lag_bytes=s.rpo_lag_bytes,
               writes_blocked_seconds=s.writes_blocked_seconds,
               note=None if s.note is None else redact(s.note))
        for s in list_runs(roots) if s.kind in RUN_KINDS
    ]
    return rows[:RUNS_SHOWN]


def _timeline_svg(roots: list[Path], kind: str, run_id: str) -> str:
    from agentaskit_dr.runtime.evidence import read_evidence
    from agentaskit_dr.runtime.evidence_layout import find_root
    from agentaskit_dr.runtime.timeline_svg import timeline_svg

    directory = find_root(roots, kind, run_id)
    # read_evidence refuses names that are not plain; a symlink out is refused here.
    path = (directory / kind / f"{run_id}.json").resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ValueError(f"{path} is outside the evidence directory")
    return timeline_svg(redact(read_evidence(directory, kind, run_id)))


def _asset(name: str) -> Callable[[web.Request], Any]:
    body = resources.files("agentaskit_dr.api").joinpath("static", name).read_text("utf-8")
    content_type = _ASSETS[name]

    async def handler(request: web.Request) -> web.Response:
        return _answer(body, content_type, cache="max-age=300")

    return handler


def _answer(text: str, content_type: str, *, cache: str) -> web.Response:
    response = web.Response(text=text, content_type=content_type, charset="utf-8")
    response.headers.update(_HEADERS)
    response.headers["Cache-Control"] = cache
    return response
