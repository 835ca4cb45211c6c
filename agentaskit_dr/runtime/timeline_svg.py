"""A failover's, failback's or switchover's timeline as a picture: an SVG drawn from its
evidence document.

One row per phase, on a shared time axis that starts at the first failing observation
(or at the run's start when there is none): detection (first failing observation →
decision), the decision itself, each runbook step of the plan in order with the duration
of the attempt that completed it (a skipped step is a tick), and the write-unavailability
window. Pure: a document in, SVG text out; no clock, no files, no plotting library.

The window: for a failback, the switchover's measured ``write_unavailable_seconds``
(from the stop of the old primary to the first write on the new one), placed after its
preflight and checkpoint phases inside the ``restore_standby`` step; for a switchover run
the same, inside its ``switch_database`` step. For a failover,
no server takes writes from the first failing observation until the promotion step is
done: that span, a lower bound, since the primary may have failed before it was seen.

Only presentation attributes, no ``<style>`` or script: the file renders the same in a
browser, as an ``<img>`` on the status page, and in a Markdown viewer.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WIDTH = 980
LABEL_WIDTH = 200
FIGURE_WIDTH = 170
ROW_HEIGHT = 22
HEADER_HEIGHT = 58
AXIS_HEIGHT = 34
#: The chart's plot area, between the labels on the left and the figures on the right.
PLOT_LEFT = LABEL_WIDTH
PLOT_RIGHT = WIDTH - FIGURE_WIDTH - 10
#: A bar is never thinner than this, so a 1 ms step still shows.
MIN_BAR = 2.0
#: The runbook steps get a panel of their own when they span less than this share of
#: the whole timeline.
ZOOM_BELOW = 0.25

COLOURS = {
    "detection": "#1565c0", "decision": "#6a1b9a", "done": "#2e7d32", "skipped": "#9e9e9e",
    "failed": "#c62828", "started": "#ef6c00", "window": "#d32f2f", "text": "#212121",
    "muted": "#616161", "grid": "#e0e0e0",
}
_COMPLETE = ("done", "skipped")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the picture: ``start``/``end`` in seconds from the origin (``end`` None
    draws a tick), ``status`` picks the colour, ``figure`` is the text on the right."""

    kind: str  # "detection", "decision", "step", "window" (or "runbook", drawn only)
    label: str
    status: str
    start: float | None
    end: float | None
    figure: str


def timeline_rows(document: Mapping[str, Any]) -> tuple[float | None, list[Row]]:
    """The origin (Unix seconds, None when the document has no times) and the rows."""
    detected = _unix(document.get("detected_at"))
    decided = _unix(document.get("decided_at"))
    entries = [e for e in _list(document.get("timeline")) if isinstance(e, Mapping)]
    times = [t for t in (_entry_time(e) for e in entries) if t is not None]
    origin = detected if detected is not None else (min(times) if times else decided)
    if origin is None:
        return None, []

    def at(value: float | None) -> float | None:
        return None if value is None else value - origin

    rows: list[Row] = []
    if detected is not None and decided is not None and decided > detected:
        rows.append(Row("detection", "detection", "detection", 0.0, at(decided),
                        _duration(decided - detected)))
    if decided is not None:
        rows.append(Row("decision", "decision", "decision", at(decided), None,
                        f"+{_number(decided - origin)} s"))
    for step in _steps(document, entries):
        rows.append(Row("step", step.name, step.status, at(step.start), at(step.end),
                        _step_figure(step)))
    window = _window(document, entries, detected)
    if window is not None:
        start, seconds, label = window
        rows.append(Row("window", label, "window", start - origin, start - origin + seconds,
                        _duration(seconds)))
    return origin, rows


def timeline_svg(document: Mapping[str, Any]) -> str:
    """The timeline picture of one evidence document (see the module docstring).

    When the runbook took a small part of the whole (a detection of minutes, steps of
    seconds), its steps get a second panel with an axis of their own below the overview,
    where the runbook is one bar: otherwise every step would be a sliver.
    """
    origin, rows = timeline_rows(document)
    kind, run_id = str(document.get("kind") or "run"), str(document.get("run_id") or "?")
    title = f"{kind} {run_id}"
    outcome = document.get("outcome") or "—"
    started = _clock(origin) if origin is not None else "no times recorded"
    body: list[str] = []
    top = float(HEADER_HEIGHT)
    steps = [row for row in rows if row.kind == "step"]
    runbook = _runbook_row(steps)
    if runbook is not None and _span([runbook]) < ZOOM_BELOW * _span(rows):
        overview = [row for row in rows if row.kind != "step"]
        overview.insert(overview.index(next(r for r in overview if r.kind == "decision"))
                        + 1 if any(r.kind == "decision" for r in overview) else 0, runbook)
        top = _panel(body, overview, top, "Overview", from_zero=True)
        top = _panel(body, steps, top + 8, "Runbook steps (own time axis)", from_zero=False)
    elif rows:
        top = _panel(body, rows, top, None, from_zero=True)
    else:
        body.append(_text(PLOT_LEFT, top + 14, "no timeline in this evidence file",
                          fill=COLOURS["muted"]))
        top += ROW_HEIGHT
    height = int(top + 8)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" '
        f'role="img" aria-label={_attr("timeline of " + title)}>',
        f"<title>{_chars('Timeline of ' + title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(10, 20, f"{title}: {outcome}", size=15, weight="bold"),
        _text(10, 40, f"t = 0 at {started} (UTC); times in seconds from there",
              fill=COLOURS["muted"]),
        *body,
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _runbook_row(steps: Sequence[Row]) -> Row | None:
    """The whole runbook as one bar, for the overview: first step start to last step end."""
    times = [t for row in steps for t in (row.start, row.end) if t is not None]
    if len(times) < 2:
        return None
    failed = any(row.status == "failed" for row in steps)
    return Row("runbook", "runbook", "failed" if failed else "done", min(times), max(times),
               _duration(max(times) - min(times)))


def _span(rows: Sequence[Row]) -> float:
    times = [t for row in rows for t in (row.start, row.end) if t is not None]
    return max(times) - min(times) if times else 0.0


def _panel(parts: list[str], rows: Sequence[Row], top: float, heading: str | None, *,
           from_zero: bool) -> float:
    """Draw ``rows`` with their grid and time axis from ``top``; the y below the panel."""
    if heading is not None:
        parts.append(_text(10, top + 12, heading, weight="bold", fill=COLOURS["muted"]))
        top += 20
    times = [t for row in rows for t in (row.start, row.end) if t is not None]
    low = 0.0 if from_zero else min(times, default=0.0)
    step, ticks = _ticks(low, max([*times, low]))
    first, last = ticks[0], ticks[-1]

    def x(seconds: float) -> float:
        share = (seconds - first) / (last - first)
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * min(1.0, max(0.0, share))

    axis_y = top + len(rows) * ROW_HEIGHT + 6
    for tick in ticks:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" '
                     f'y2="{axis_y}" stroke="{COLOURS["grid"]}" stroke-width="1"/>')
        parts.append(_text(x(tick), axis_y + 16, f"{_number(tick, step)} s", anchor="middle",
                           fill=COLOURS["muted"]))
    for index, row in enumerate(rows):
        parts.append(_row_svg(row, top + index * ROW_HEIGHT, x))
    return axis_y + AXIS_HEIGHT - 6


# ---------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    status: str
    start: float | None
    end: float | None
    seconds: float | None
    attempts: int


def _steps(document: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> list[_Step]:
    """Each step in plan order (steps outside the plan after, in journal order)."""
    by_name: dict[str, Mapping[str, Any]] = {
        str(s["step"]): s for s in _list(document.get("steps"))
        if isinstance(s, Mapping) and s.get("step") is not None
    }
    names = [str(n) for n in _list(document.get("plan"))]
    names += [n for n in by_name if n not in names]
    names += [n for n in dict.fromkeys(str(e.get("step")) for e in entries) if n not in names]
    steps = []
    for name in names:
        summary = by_name.get(name, {})
        own = [e for e in entries if str(e.get("step")) == name]
        own_times = [t for t in (_entry_time(e) for e in own) if t is not None]
        status = str(summary.get("status") or (own[-1].get("status") if own else "") or "")
        start = _unix(summary.get("started_at"))
        end = _unix(summary.get("done_at"))
        if start is None and own_times:
            start = own_times[0] if status not in _COMPLETE else None
        if end is None and own_times:
            end = own_times[-1]
        if start is None:  # skipped without starting: a tick where it was journaled
            start, end = end, None
        attempts = _as_number(summary.get("attempts"))
        steps.append(_Step(name, status or "not started", start, end,
                           _as_number(summary.get("actuation_seconds")),
                           int(attempts) if attempts is not None else 0))
    return steps


def _step_figure(step: _Step) -> str:
    if step.status == "done" and step.seconds is not None:
        retries = f" ({step.attempts} attempts)" if step.attempts > 1 else ""
        return _duration(step.seconds) + retries
    return step.status


def _window(document: Mapping[str, Any], entries: Sequence[Mapping[str, Any]],
            detected: float | None) -> tuple[float, float, str] | None:
    """(start, seconds, label) of the write-unavailability window, when the evidence has it."""
    extra = document.get("extra")
    switch = extra.get("switchover") if isinstance(extra, Mapping) else None
    step = "restore_standby"
    if document.get("kind") == "switchover" and isinstance(extra, Mapping):
        switch, step = extra, "switch_database"  # a switchover run's figures are its own
    seconds = _as_number(switch.get("write_unavailable_seconds")) if isinstance(
        switch, Mapping) else None
    if isinstance(switch, Mapping) and seconds is not None:
        step_start = next((t for e in entries if e.get("step") == step
                           and e.get("status") == "started"
                           and (t := _entry_time(e)) is not None), None)
        if step_start is None:
            return None
        phases = switch.get("phases")
        lead = sum(_as_number(phases.get(p)) or 0.0 for p in ("preflight", "checkpoint")
                   ) if isinstance(phases, Mapping) else 0.0
        return step_start + lead, seconds, "writes unavailable (switchover)"
    promoted = next((_unix(s.get("done_at")) for s in _list(document.get("steps"))
                     if isinstance(s, Mapping) and s.get("step") == "promote"), None)
    if document.get("kind") == "failover" and detected is not None and promoted is not None:
        return detected, promoted - detected, "no writable primary (≥)"
    return None


def _row_svg(row: Row, top: float, x: Any) -> str:
    colour = COLOURS.get(row.status, COLOURS["started"])
    middle = top + ROW_HEIGHT / 2
    label_colour = COLOURS["window"] if row.kind == "window" else COLOURS["text"]
    parts = [f'<g data-row={_attr(row.kind)} data-label={_attr(row.label)}>',
             _text(PLOT_LEFT - 8, middle + 4, row.label, anchor="end", fill=label_colour)]
    if row.start is not None and row.end is not None:
        left, right = x(row.start), x(row.end)
        width = max(MIN_BAR, right - left)
        opacity = ' fill-opacity="0.55"' if row.kind == "window" else ""
        parts.append(f'<rect x="{left:.1f}" y="{top + 4}" width="{width:.1f}" '
                     f'height="{ROW_HEIGHT - 8}" rx="2" fill="{colour}"{opacity}/>')
    elif row.start is not None:
        at = x(row.start)
        shape = (f'<path d="M {at:.1f} {top + 4} l 6 {ROW_HEIGHT / 2 - 4} l -6 '
                 f'{ROW_HEIGHT / 2 - 4} l -6 {-(ROW_HEIGHT / 2 - 4)} z" fill="{colour}"/>'
                 if row.kind == "decision" else
                 f'<rect x="{at - 1:.1f}" y="{top + 5}" width="2" height="{ROW_HEIGHT - 10}" '
                 f'fill="{colour}"/>')
        parts.append(shape)
    parts.append(_text(PLOT_RIGHT + 12, middle + 4, row.figure,
                       fill=COLOURS["failed"] if row.status == "failed" else COLOURS["muted"]))
    parts.append("</g>")
    return "".join(parts)


# ---------------------------------------------------------------- helpers


def _text(x: float, y: float, content: str, *, anchor: str = "start", size: int = 12,
          weight: str = "normal", fill: str = COLOURS["text"]) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'font-weight="{weight}" fill="{fill}">{_chars(content)}</text>')


def _ticks(low: float, high: float) -> tuple[float, list[float]]:
    """A 1-2-5 tick step giving at most 8 intervals from ``low`` to ``high``, and the
    ticks (multiples of the step, covering both ends)."""
    span = high - low
    if span <= 0:
        return 1.0, [math.floor(low), math.floor(low) + 1.0]
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9)
    count = math.ceil(high / step - 1e-9) - first
    return step, [round((first + i) * step, 9) for i in range(max(1, count) + 1)]


def _number(value: float, step: float = 0.001) -> str:
    decimals = max(0, min(3, -math.floor(math.log10(step)))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def _clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _unix(value: object) -> float | None:
    """An evidence stamp (ISO 8601, ``Z`` for UTC) as Unix seconds; None when unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def _entry_time(entry: Mapping[str, Any]) -> float | None:
    at = _as_number(entry.get("at_unix"))
    return at if at is not None else _unix(entry.get("at"))


def _as_number(value: object) -> float | None:
    """A finite JSON number as a float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _chars(value: str) -> str:
    """``value`` as XML character data."""
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    """``value`` as a quoted XML attribute (line breaks kept as character references)."""
    quoted = html.escape(value, quote=True)
    return '"' + quoted.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;") + '"'
