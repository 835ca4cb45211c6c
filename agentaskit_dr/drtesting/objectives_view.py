"""``agentaskit-dr objectives``: the plan's objectives table with measured values."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.drtesting.objectives import (
    PLAN_CLAIMS,
    SWITCHOVER_WRITES,
    Objective,
    SwitchoverWindows,
    measure_objectives,
    measure_switchovers,
)

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

_NAMES = {"rpo": "RPO", "rto": "RTO", "mttr": "MTTR"}


def current_objectives(config: BackupConfig | None, evidence_dir: Path,
                       now: float, archive_lag: float | None = None) -> list[Objective]:
    """The objectives at ``now``, with the config's targets (the plan's by default)."""
    from agentaskit_dr.config import ObjectivesConfig

    targets = config.objectives if config is not None else ObjectivesConfig()
    return measure_objectives(evidence_dir, rpo=targets.rpo, rto=targets.rto,
                              mttr=targets.mttr, drills=targets.drills_considered, now=now,
                              archive_lag=archive_lag,
                              layout=config.evidence_layout if config is not None else None)


def current_switchovers(config: BackupConfig | None, evidence_dir: Path) -> SwitchoverWindows:
    """The planned switchovers' write-unavailability windows, latest and worst."""
    return measure_switchovers(evidence_dir,
                               config.evidence_layout if config is not None else None)


def objectives_status(objectives: list[Objective],
                      switchovers: SwitchoverWindows) -> dict[str, Any]:
    """``/v1/status`` ``objectives``: name → target, measured, met, evidence; and beside
    them, under ``switchover_writes_blocked``, the switchovers' windows (no target)."""
    return {**{o.name: o.as_dict() for o in objectives}, SWITCHOVER_WRITES: switchovers.as_dict()}


def print_objectives(config: BackupConfig | None, evidence_dir: Path, *,
                     as_json: bool) -> int:
    """Print the table; exit 1 when a measured objective misses its target."""
    objectives = current_objectives(config, evidence_dir, time.time())
    switchovers = current_switchovers(config, evidence_dir)
    if as_json:
        print(json.dumps(objectives_status(objectives, switchovers), indent=2))
    else:
        _table(objectives, switchovers)
    return 1 if any(o.met is False for o in objectives) else 0


def _table(objectives: list[Objective], switchovers: SwitchoverWindows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Recovery objectives, measured")
    for column in ("Objective", "Target", "Plan claims", "Measured", "Met", "From"):
        table.add_column(column)
    for objective in objectives:
        met = {True: "yes", False: "NO", None: "not measured"}[objective.met]
        table.add_row(_NAMES[objective.name], _human(objective.target_seconds),
                      _human(PLAN_CLAIMS[objective.name]), _human(objective.measured_seconds),
                      met, objective.source or "—",
                      style="bold red" if objective.met is False else None)
    latest, worst = switchovers.latest, switchovers.worst
    table.add_row("Switchover writes blocked (not RTO)", "—", "—",
                  f"{_human(latest.seconds)} latest, {_human(worst.seconds)} worst",
                  "no target", latest.source or "—")
    console = Console(highlight=False)
    console.print(table)
    for objective in objectives:
        for measure in objective.measures:
            shown = _human(measure.seconds) if measure.seconds is not None else measure.note
            if measure.seconds is not None and measure.note:
                shown += f" ({measure.note})"
            console.print(f"  {_NAMES[objective.name]}: {measure.what}: {shown}")
    for measure in (latest, worst) if latest.seconds is not None else (latest,):
        shown = _human(measure.seconds) if measure.seconds is not None else measure.note
        if measure.seconds is not None and measure.note:
            shown += f" ({measure.note})"
        console.print(f"  Switchover writes blocked (not RTO): {measure.what}: {shown}")


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
