"""The status page's HTML, rendered from ``/v1/status`` and the evidence listing. Pure.

Every value is escaped; the caller redacts the status first. Sections the daemon has no
data for yet (WAL archive lag, backup freshness, DR drills, the DR testing schedule, the
recovery objectives) say "not configured": they fill in from the status keys
``wal_archive_lag_seconds``, ``backups``, ``drills``, ``dr_testing`` and ``objectives``
once something reports them (``backups``, ``drills`` and ``dr_testing``: a mapping
of name to a mapping of fields, shown as one table row each).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

#: How often the page refreshes itself, in seconds.
REFRESH_SECONDS = 5
NOT_CONFIGURED = '<p class="not-configured">not configured</p>'
#: Phases shown green / red; anything else is amber.
#: ``objectives``' entry of the switchovers' windows (drtesting.objectives.SWITCHOVER_WRITES).
SWITCHOVER_WRITES = "switchover_writes_blocked"
_CALM_PHASES = ("watching",)
_BAD_PHASES = ("failing_over", "failed")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One failover, failback or switchover evidence file as the page lists it."""

    kind: str
    run_id: str
    created_at: str | None
    outcome: str | None
    rto_seconds: float | None  # None for a switchover: it recovers nothing
    rpo_lag_bytes: int | None
    note: str | None = None
    #: A switchover's (or a failback's switchover's) measured write-unavailability window.
    writes_blocked_seconds: float | None = None

    @property
    def picture(self) -> str:
        """The page's URL of this run's timeline picture."""
        return f"/ui/timeline/{quote(self.kind)}/{quote(self.run_id)}.svg"


def render_page(main: str, *, node: str, phase: str) -> str:
    """The whole page around ``main`` (``render_main``'s fragment)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(phase)} · {_e(node)} · agentaskit-dr</title>
<link rel="icon" href="/ui/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/page.css">
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 2}"></noscript>
<script src="/ui/page.js" defer></script>
</head>
<body data-refresh="{REFRESH_SECONDS}">
<header>
<h1>agentaskit-dr <span class="node">{_e(node)}</span></h1>
<p id="connection" class="notice bad" hidden></p>
<p class="meta">Read-only view of this watchdog; refreshes every {REFRESH_SECONDS} s.</p>
</header>
<main id="main">
{main}
</main>
<footer>The same data as JSON: <a href="/v1/status">/v1/status</a> ·
<a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></footer>
</body>
</html>
"""


def render_main(status: Mapping[str, Any], runs: Sequence[RunRow], *, now: float,
                evidence_dir: str | None) -> str:
    """The refreshable part of the page: state, regions, lock, replication, runs, backups,
    drills."""
    return "\n".join([
        _state(status, now),
        _regions(status, now),
        _conditions(status, now),
        _leadership(status, now),
        _replication(status),
        _runs(status, runs, now, evidence_dir),
        _section("Backup freshness", status.get("backups")),
        _section("DR drills", status.get("drills")),
        _section("DR testing schedule", status.get("dr_testing")),
        _objectives(status.get("objectives")),
    ])


# ---------------------------------------------------------------- sections


def _state(status: Mapping[str, Any], now: float) -> str:
    phase = str(status.get("phase") or "unknown")
    tone = "ok" if phase in _CALM_PHASES else "bad" if phase in _BAD_PHASES else "warn"
    lines = [
        '<section class="state">',
        f'<span class="chip {tone}" id="phase">{_e(phase)}</span>',
        f"<span>{_e(status.get('role') or 'watchdog')} in <b>{_e(status.get('region'))}"
        f"</b>, primary region <b>{_e(status.get('primary_region'))}</b></span>",
        f'<span class="verdict">{_e(status.get("verdict"))}</span>',
        f'<span class="muted">as of {_clock(now)} UTC</span>',
        "</section>",
    ]
    cluster = _mapping(status.get("cluster"))
    if status.get("paused") or cluster.get("paused"):
        reason = status.get("pause_reason") or cluster.get("pause_reason")
        by = cluster.get("paused_by")
        lines.append(f'<p class="notice">Paused{" by " + _e(by) if by else ""}'
                     f"{': ' + _e(reason) if reason else ''}: nothing is decided or "
                     "actuated until resumed.</p>")
    if status.get("self_fenced"):
        lines.append('<p class="notice bad">This watchdog fenced its own primary.</p>')
    for name, text in _mapping(status.get("alerts")).items():
        lines.append(f'<p class="notice bad"><b>{_e(name)}</b>: {_e(text)}</p>')
    run = _mapping(status.get("run"))
    if run:
        lines.append(f'<p class="notice">Run <b>{_e(run.get("run_id"))}</b> in progress: '
                     f"step {_e(run.get('step'))}</p>")
    return "\n".join(lines)


def _regions(status: Mapping[str, Any], now: float) -> str:
    probes = _mapping(status.get("probes"))
    primary = status.get("primary_region")
    regions = [str(p.get("target")) for name, p in _probes(probes, "region_health:")]
    if primary is not None and str(primary) not in regions:
        regions.insert(0, str(primary))
    regions.sort(key=lambda name: name != primary)
    assessment = _mapping(status.get("assessment"))
    failing = [(name, _mapping(c)) for name, c in _mapping(status.get("conditions")).items()
               if _mapping(c).get("failing")]
    rows = []
    for region in regions:
        is_primary = region == primary
        health = next((p for _, p in _probes(probes, "region_health:")
                       if str(p.get("target")) == region), {})
        database = _mapping(probes.get("db:primary" if is_primary else "db:standby"))
        if is_primary and failing:
            since = "; ".join(f"{_e(name)} failing since {_ago(c.get('failing_since_ago'), now)}"
                              for name, c in failing)
        elif is_primary:
            since = (f"{_e(assessment.get('verdict'))} since "
                     f"{_ago(assessment.get('since_ago'), now)}")
        else:
            since = "—"
        rows.append([
            f"<b>{_e(region)}</b>", "primary" if is_primary else "standby",
            _probe_cell(health, "answered 2xx", "failing"),
            _database_cell(database, is_primary), since,
        ])
    if not rows:
        return _h2("Regions") + '<p class="muted">no probe has reported yet</p>'
    return _h2("Regions") + _table(
        ["Region", "Role", "Health checks", "Database", "Verdict and since when"], rows)


def _conditions(status: Mapping[str, Any], now: float) -> str:
    rows = []
    for name, value in _mapping(status.get("conditions")).items():
        clock = _mapping(value)
        held = (f"for {_seconds(clock.get('failing_for'))} of {_seconds(clock.get('threshold'))}"
                f", since {_ago(clock.get('failing_since_ago'), now)}")
        rows.append([_e(name),
                     '<span class="bad">failing</span>' if clock.get("failing")
                     else '<span class="ok">clear</span>',
                     held if clock.get("failing") else f"threshold "
                     f"{_seconds(clock.get('threshold'))}",
                     _e(clock.get("detail"))])
    peers = _mapping(status.get("peers"))
    peer_rows = [[_e(url), '<span class="ok">reached</span>' if ok else
                  '<span class="bad">not reached</span>'] for url, ok in peers.items()]
    note = status.get("failover_held_by") or status.get("primary_refusal")
    return "".join([
        _h2("Failover conditions"),
        _table(["Condition", "State", "Held", "Detail"], rows) if rows else
        '<p class="muted">no condition clocks</p>',
        f'<p class="notice">{_e(note)}</p>' if note else "",
        _h2("Peers"),
        _table(["Peer", "Link"], peer_rows) if peer_rows else
        '<p class="muted">no peers configured</p>',
    ])


def _leadership(status: Mapping[str, Any], now: float) -> str:
    cluster = _mapping(status.get("cluster"))
    rows = [
        ["Lock holder", _e(status.get("lock_holder") or "nobody")],
        ["Fencing epoch", _e(status.get("epoch") if status.get("epoch") is not None
                             else cluster.get("primary_epoch"))],
    ]
    if cluster.get("known"):
        rows += [
            ["Primary region (lock store)", f"{_e(cluster.get('primary_region'))} since epoch "
             f"{_e(cluster.get('primary_epoch'))}, run {_e(cluster.get('primary_run_id'))}"],
            ["Failovers acknowledged", f"{_e(cluster.get('ack_generation'))}"
             + (f" (last by {_e(cluster.get('acked_by'))}, "
                f"{_ago(cluster.get('acked_ago'), now)})" if cluster.get("acked_by") else "")],
        ]
    if cluster.get("read_error"):
        rows.append(["Lock store", f'<span class="bad">{_e(cluster.get("read_error"))}</span>'])
    return _h2("Lock and epoch") + _table(["", ""], rows, header=False)


def _replication(status: Mapping[str, Any]) -> str:
    lag = status.get("lag_bytes")
    archive = status.get("wal_archive_lag_seconds")
    rows = [
        ["Replication lag", "—" if lag is None else f"{_e(lag)} bytes"],
        ["WAL archive lag", '<span class="not-configured">not configured</span>'
         if archive is None else _seconds(archive)],
    ]
    return _h2("Replication") + _table(["", ""], rows, header=False)


def _runs(status: Mapping[str, Any], runs: Sequence[RunRow], now: float,
          evidence_dir: str | None) -> str:
    parts = [_h2("Failovers, failbacks and switchovers")]
    last = _mapping(status.get("last_failover"))
    if last:
        parts.append(f"<p>Last failover seen by this watchdog: decided "
                     f"{_ago(last.get('decided_ago'), now)} under epoch "
                     f"{_e(last.get('epoch'))}: {_e(last.get('reason'))}</p>")
    if not runs:
        where = f" in {_e(evidence_dir)}" if evidence_dir else ""
        parts.append(f'<p class="muted">no failover, failback or switchover evidence{where}</p>')
        return "".join(parts)
    rows = [[_e(run.kind), f'<a href="{_e(run.picture)}">{_e(run.run_id)}</a>',
             _e(run.created_at), _outcome(run.outcome or run.note),
             "—" if run.rto_seconds is None else _seconds(run.rto_seconds),
             _seconds(run.writes_blocked_seconds),
             "—" if run.rpo_lag_bytes is None else f"{_e(run.rpo_lag_bytes)} bytes"]
            for run in runs]
    parts.append(_table(["Kind", "Run", "Started (UTC)", "Outcome", "RTO", "Writes blocked",
                         "RPO (lag)"], rows))
    newest = {run.kind: run for run in reversed(runs) if run.note is None}
    for kind in ("failover", "failback", "switchover"):
        run = newest.get(kind)
        if run is not None:
            parts.append(f'<figure><img src="{_e(run.picture)}" alt="timeline of {_e(kind)} '
                         f'{_e(run.run_id)}"><figcaption>Latest {_e(kind)}: '
                         f"{_e(run.run_id)}</figcaption></figure>")
    return "".join(parts)


def _objectives(value: object) -> str:
    """RPO, RTO and MTTR: target, measured, met, and the evidence file it came from."""
    title = "Recovery objectives, measured"
    if not isinstance(value, Mapping):
        return _h2(title) + NOT_CONFIGURED
    rows = [[_e(str(name).upper()), _seconds(o.get("target_seconds")),
             _seconds(o.get("measured_seconds")),
             _e("not measured" if o.get("met") is None else o.get("met")),
             _e(o.get("evidence"))]
            for name, o in value.items() if isinstance(o, Mapping) and name != SWITCHOVER_WRITES]
    switches = value.get(SWITCHOVER_WRITES)
    if isinstance(switches, Mapping):
        # Its own line: planned switchovers are no failover and never count as RTO.
        rows.append(["Switchover writes blocked (not RTO)", "—",
                     f"{_seconds(switches.get('latest_seconds'))} latest, "
                     f"{_seconds(switches.get('worst_seconds'))} worst",
                     "no target", _e(switches.get("latest_evidence") or switches.get("note"))])
    return _h2(title) + _table(["", "Target", "Measured", "Met", "From"], rows)


def _section(title: str, value: object) -> str:
    """A section from an optional status key: "not configured" when absent."""
    if value is None:
        return _h2(title) + NOT_CONFIGURED
    if isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values()):
        columns = list(dict.fromkeys(k for v in value.values() for k in v))
        rows = [[_e(name), *(_e(_mapping(v).get(c)) for c in columns)]
                for name, v in value.items()]
        return _h2(title) + _table(["", *map(str, columns)], rows)
    return _h2(title) + f"<p>{_e(value)}</p>"


# ---------------------------------------------------------------- cells


def _probes(probes: Mapping[str, Any], prefix: str) -> list[tuple[str, Mapping[str, Any]]]:
    return [(name, _mapping(p)) for name, p in probes.items() if str(name).startswith(prefix)]


def _probe_cell(probe: Mapping[str, Any], good: str, bad: str) -> str:
    if not probe:
        return '<span class="muted">not probed</span>'
    ok = probe.get("ok")
    state = f'<span class="ok">{good}</span>' if ok else f'<span class="bad">{bad}</span>'
    detail = probe.get("detail") or probe.get("error")
    return (f"{state}{' — ' + _e(detail) if detail and not ok else ''} "
            f'<span class="muted">({_seconds(probe.get("age"))} ago)</span>')


def _database_cell(probe: Mapping[str, Any], primary: bool) -> str:
    if not probe:
        return '<span class="muted">not probed</span>'
    if probe.get("ok"):
        recovery = probe.get("in_recovery")
        expected = recovery is (not primary) or recovery is None
        what = "in recovery (standby)" if recovery else "accepts writes" if recovery is False \
            else "answers"
        state = f'<span class="{"ok" if expected else "warn"}">{what}</span>'
    else:
        state = f'<span class="bad">{_e(probe.get("refusal") or probe.get("error") or "down")}'\
                "</span>"
    return (f"{state} <span class=\"muted\">{_e(probe.get('target'))}, "
            f"{_seconds(probe.get('age'))} ago</span>")


def _outcome(outcome: object) -> str:
    tone = "ok" if outcome == "done" else "bad"
    return f'<span class="{tone}">{_e(outcome)}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, header: bool = True) -> str:
    head = ("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    # A narrow screen (a phone at 3 a.m.) scrolls a wide table instead of clipping it.
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _h2(title: str) -> str:
    return f"<h2>{_e(title)}</h2>"


def _e(value: object) -> str:
    """``value`` escaped for HTML text and attributes; "—" when missing."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value), quote=True)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"


def _ago(seconds: object, now: float) -> str:
    """``seconds`` ago as "12.3 s ago (11:45:57 UTC)"; "—" when unknown."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "—"
    if not math.isfinite(seconds):
        return "—"
    return f"{_seconds(seconds)} ago ({_clock(now - seconds)} UTC)"


def _clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%H:%M:%S")
