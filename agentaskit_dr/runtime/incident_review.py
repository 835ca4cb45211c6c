"""A run's draft incident review (``<run_id>.md``) and timeline picture (``<run_id>.svg``),
written next to its evidence file.

The plan's post-failover checklist starts with an incident review: the draft carries the
summary, the timeline, what was measured (RTO and RPO; for a switchover or a failback,
the write-unavailability window) and the checklist's follow-ups. Pure but for the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.runtime.evidence import (
    evidence_file,
    plain_name,
    writes_blocked,
)
from agentaskit_dr.runtime.rpo import rpo_words
from agentaskit_dr.runtime.timeline_svg import timeline_svg

log = structlog.get_logger(__name__)


def write_incident_review(
    directory: Path, kind: str, run_id: str, document: Mapping[str, Any]
) -> Path:
    """Write ``draft_incident_review(document)`` next to the evidence, as ``<run_id>.md``,
    and the timeline picture it shows, as ``<run_id>.svg``."""
    path = evidence_file(directory, kind, run_id, ".md")
    write_atomically(evidence_file(directory, kind, run_id, ".svg"), timeline_svg(document))
    write_atomically(path, draft_incident_review(document))
    log.info("incident_review_drafted", path=str(path), kind=kind, run_id=run_id)
    return path


def draft_incident_review(document: Mapping[str, Any]) -> str:
    """A Markdown draft of the incident review: summary, timeline, measured RTO and RPO,
    and the follow-ups of the plan's post-failover checklist. Missing fields show as "—"."""
    run_id, kind = document.get("run_id", "—"), document.get("kind", "—")
    rpo = document.get("rpo") or {}
    lines = [
        f"# Incident review (draft): {kind} {run_id}",
        "",
        "## Summary",
        "",
        f"- Run: `{run_id}` ({kind}), fencing epoch(s) "
        f"{', '.join(str(e) for e in document.get('epochs', [])) or '—'}",
        f"- Reason: {_cell(document.get('reason'))}",
        f"- Outcome: **{_cell(document.get('outcome'))}**",
        f"- Started: {_cell(document.get('created_at'))}",
        "",
        "## Timeline (UTC)",
        "",
        *_picture(run_id),
        "| At | Step | Status | Epoch | Detail |",
        "|---|---|---|---|---|",
        *(
            f"| {_cell(e.get('at'))} | {_cell(e.get('step'))} | {_cell(e.get('status'))} "
            f"| {_cell(e.get('epoch'))} | {_cell(e.get('detail'))} |"
            for e in document.get("timeline", [])
        ),
        "",
        "## Measured",
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| Detected (first failing observation) | {_cell(document.get('detected_at'))} |",
        f"| Decided | {_cell(document.get('decided_at'))} |",
        f"| Recovered (last step done) | {_cell(document.get('recovered_at'))} |",
        f"| Detection, detected → decided | {_seconds(document.get('detection_seconds'))} |",
        f"| RTO, detected → recovered | {_rto(document)} |",
        f"| Decided → recovered | {_seconds(document.get('decision_to_recovery_seconds'))} |",
        *_writes_blocked(document),
        f"| RPO at promotion | {_cell(rpo_words(rpo))}; lag "
        f"{_seconds(rpo.get('lag_seconds'))} |",
        "",
        "| Step | Last status | Attempts | Actuation |",
        "|---|---|---|---|",
        *(
            f"| {_cell(s.get('step'))} | {_cell(s.get('status'))} | {_cell(s.get('attempts'))} "
            f"| {_seconds(s.get('actuation_seconds'))} |"
            for s in document.get("steps", [])
        ),
        "",
        "## Follow-ups",
        "",
    ]
    if kind not in ("failback", "switchover"):
        lines.append("- [ ] Failback planned: verify the primary recovered, sync it, verify "
                     "data integrity, shift traffic back gradually, restore the standby")
    lines += [
        f"- [ ] Root cause of \"{_cell(document.get('reason'))}\" confirmed",
        "- [ ] Stakeholders notified and status page updated",
        "- [ ] Runbook and documentation updated with what this run taught",
        "- [ ] Automation reviewed: failed or repeated steps, detection and RTO above",
        "",
    ]
    return "\n".join(lines)


def _rto(document: Mapping[str, Any]) -> str:
    if document.get("kind") == "switchover":
        return "— (a planned switchover: nothing was down; see writes blocked)"
    return _seconds(document.get("rto_seconds"))


def _writes_blocked(document: Mapping[str, Any]) -> list[str]:
    """The row of the measured write-unavailability window, for a switch that has one."""
    if document.get("kind") not in ("switchover", "failback"):
        return []
    return [f"| Writes blocked, old primary stopped → first write on the new one "
            f"| {_seconds(writes_blocked(document))} |"]


def _picture(run_id: object) -> list[str]:
    """The Markdown lines showing ``<run_id>.svg`` (written beside the review), if any."""
    if not plain_name(run_id):
        return []
    return [f"![Timeline of {run_id}]({run_id}.svg)", ""]


def _cell(value: object) -> str:
    """``value`` for a Markdown table cell: one line, pipes escaped, "—" when missing."""
    if value is None or value == "":
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _seconds(value: object) -> str:
    return f"{value} s" if isinstance(value, int | float) else "—"
