"""``agentaskit-dr status`` on a terminal: the status as a few readable ``rich`` tables.

A summary (who, where, phase, verdict, lock, epoch, lag), the open alerts, the failover
conditions with how long they have held, the probes, the peers and the last failover. Any
key the tables do not know (an older or newer watchdog, the lock store's fallback answer)
follows as plain key/value lines, so nothing is hidden. Output that is not a terminal keeps the
aligned key/value lines of ``client.render_status`` (scripts read them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import IO, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from agentaskit_dr.api.client import render_status

#: Keys the tables below show; every other key goes to the "Other" table.
_SHOWN = frozenset({
    "node", "role", "region", "primary_region", "phase", "verdict", "assessment",
    "conditions", "paused", "pause_reason", "self_fenced", "primary_refusal",
    "failover_held_by", "probes", "epoch", "lock_holder", "lag_bytes", "peers",
    "last_failover", "run", "alerts", "cluster",
})
_PHASE_STYLE = {"watching": "bold green", "failing_over": "bold red", "failed": "bold red"}


def print_status(status: Mapping[str, Any], file: IO[str]) -> None:
    """``status`` as tables on a terminal ``file``, else as ``render_status`` lines."""
    if not file.isatty():
        print(render_status(dict(status)), file=file)
        return
    Console(file=file, highlight=False).print(status_tables(status))


def status_tables(status: Mapping[str, Any]) -> Group:
    """The tables, for a ``rich`` console."""
    parts: list[RenderableType] = [_summary(status)]
    for section in (_alerts(status), _conditions(status), _probes(status), _peers(status),
                    _last_failover(status), _other(status)):
        if section is not None:
            parts.append(section)
    return Group(*parts)


def _summary(status: Mapping[str, Any]) -> Table:
    table = _grid("Status")
    phase = str(status.get("phase") or "-")
    assessment = _mapping(status.get("assessment"))
    cluster = _mapping(status.get("cluster"))
    rows: list[tuple[str, str | Text]] = [
        ("node", f"{_v(status.get('node'))} ({_v(status.get('role'))} in "
                 f"{_v(status.get('region'))})"),
        ("primary region", _v(status.get("primary_region") or cluster.get("primary_region"))),
        ("phase", Text(phase, style=_PHASE_STYLE.get(phase, "bold yellow"))),
        ("verdict", _v(status.get("verdict"))),
    ]
    if assessment:
        rows.append(("assessment", f"{_v(assessment.get('verdict'))} for "
                     f"{_seconds(assessment.get('since_ago'))}: {_v(assessment.get('detail'))}"))
    rows += [
        ("lock holder", _v(status.get("lock_holder") or ("nobody" if "lock_holder" in status
                                                          else None))),
        ("epoch", _v(status.get("epoch") if status.get("epoch") is not None
                     else cluster.get("primary_epoch"))),
        ("replication lag", "-" if status.get("lag_bytes") is None
         else f"{status['lag_bytes']} bytes"),
    ]
    if status.get("paused") or cluster.get("paused"):
        reason = status.get("pause_reason") or cluster.get("pause_reason")
        rows.append(("paused", Text(f"yes: {reason or 'no reason given'}", style="bold yellow")))
    if status.get("self_fenced"):
        rows.append(("self-fenced", Text("yes: this watchdog fenced its own primary",
                                         style="bold red")))
    for key in ("primary_refusal", "failover_held_by"):
        if status.get(key):
            rows.append((key.replace("_", " "), Text(_v(status[key]), style="yellow")))
    run = _mapping(status.get("run"))
    if run:
        rows.append(("run in progress", f"{_v(run.get('run_id'))} at {_v(run.get('step'))}"))
    if cluster.get("known"):
        rows.append(("lock store", f"primary {_v(cluster.get('primary_region'))} since epoch "
                     f"{_v(cluster.get('primary_epoch'))} (run "
                     f"{_v(cluster.get('primary_run_id'))}); acks "
                     f"{_v(cluster.get('ack_generation'))}"))
    if cluster.get("read_error"):
        rows.append(("lock store", Text(_v(cluster.get("read_error")), style="red")))
    for label, value in rows:
        table.add_row(label, value)
    return table


def _conditions(status: Mapping[str, Any]) -> Table | None:
    conditions = _mapping(status.get("conditions"))
    if not conditions:
        return None
    table = _table("Failover conditions", "condition", "state", "failing for", "threshold",
                   "detail")
    for name, value in conditions.items():
        clock = _mapping(value)
        failing = bool(clock.get("failing"))
        table.add_row(str(name), Text("failing", style="bold red") if failing
                      else Text("clear", style="green"),
                      _seconds(clock.get("failing_for")) if failing else "-",
                      _seconds(clock.get("threshold")), _v(clock.get("detail")))
    return table


def _probes(status: Mapping[str, Any]) -> Table | None:
    probes = _mapping(status.get("probes"))
    if not probes:
        return None
    table = _table("Probes", "probe", "target", "answer", "age", "detail")
    for name, value in probes.items():
        probe = _mapping(value)
        ok = probe.get("ok")
        detail = probe.get("error") or probe.get("refusal") or probe.get("detail")
        if probe.get("in_recovery") is not None:
            detail = f"{'in recovery' if probe['in_recovery'] else 'accepts writes'}" + (
                f"; {detail}" if detail else "")
        table.add_row(str(name), _v(probe.get("target")),
                      Text("ok", style="green") if ok else Text("failing", style="bold red"),
                      _seconds(probe.get("age")), _v(detail))
    return table


def _peers(status: Mapping[str, Any]) -> Table | None:
    peers = _mapping(status.get("peers"))
    if not peers:
        return None
    table = _table("Peers", "peer", "link")
    for url, reached in peers.items():
        table.add_row(str(url), Text("reached", style="green") if reached
                      else Text("not reached", style="bold red"))
    return table


def _last_failover(status: Mapping[str, Any]) -> Table | None:
    last = _mapping(status.get("last_failover"))
    if not last:
        return None
    table = _grid("Last failover")
    table.add_row("decided", f"{_seconds(last.get('decided_ago'))} ago under epoch "
                  f"{_v(last.get('epoch'))}")
    table.add_row("completed", "-" if last.get("completed_ago") is None
                  else f"{_seconds(last.get('completed_ago'))} ago")
    table.add_row("reason", _v(last.get("reason")))
    return table


def _alerts(status: Mapping[str, Any]) -> Table | None:
    alerts = _mapping(status.get("alerts"))
    if not alerts:
        return None
    table = _table("Open alerts", "alert", "detail")
    for name, text in alerts.items():
        table.add_row(Text(str(name), style="bold red"), _v(text))
    return table


def _other(status: Mapping[str, Any]) -> RenderableType | None:
    rest = {key: value for key, value in status.items() if key not in _SHOWN}
    cluster = _mapping(status.get("cluster"))
    if cluster and not cluster.get("known"):
        rest["cluster"] = dict(cluster)
    if not rest:
        return None
    return Group(Text("Other", style="bold"), Text(render_status(rest)), Text(""))


# ---------------------------------------------------------------- helpers


def _grid(title: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", show_header=False,
                  box=box.SIMPLE, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    for index, column in enumerate(columns):
        table.add_column(column, no_wrap=index == 0, overflow="fold")
    return table


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _v(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _seconds(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:g} s"
