"""The timeline picture drawn from an evidence document: rows, order, durations, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from agentaskit_dr.ports import JournalEntry, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import failover_evidence
from agentaskit_dr.runtime.timeline_svg import timeline_rows, timeline_svg

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SVG = "{http://www.w3.org/2000/svg}"


def entry(name: str, status: StepStatus, at: float, data: dict[str, Any] | None = None,
          epoch: int = 3) -> JournalEntry:
    return JournalEntry(step=name, status=status, epoch=epoch, at=T0 + at, data=data or {})


def failover_document() -> dict[str, Any]:
    """Detected at +0 s, decided at +121 s; promote retried under epoch 4; DNS skipped."""
    run = RunJournal(
        run_id="fo-1", kind="failover", plan=("check_primary", "promote", "update_dns",
                                               "verify_services"),
        created_at=T0 + 121.0, created_epoch=3, reason="db_unreachable for 121s",
        entries=(
            entry("check_primary", StepStatus.STARTED, 121.0),
            entry("check_primary", StepStatus.DONE, 121.5),
            entry("promote", StepStatus.STARTED, 122.0),
            entry("promote", StepStatus.STARTED, 124.0, epoch=4),
            entry("promote", StepStatus.DONE, 124.25, epoch=4),
            entry("update_dns", StepStatus.SKIPPED, 124.5, epoch=4),
            entry("verify_services", StepStatus.STARTED, 125.0, epoch=4),
            entry("verify_services", StepStatus.DONE, 128.0, epoch=4),
        ),
        finished="done",
    )
    return failover_evidence(run, detected_at=T0, decided_at=T0 + 121.0, lag_bytes=0,
                             lag_seconds=None, outcome="done")


def failback_document() -> dict[str, Any]:
    """A failback whose switchover (inside restore_standby) kept writes off for 0.75 s."""
    switchover = {"write_unavailable_seconds": 0.75,
                  "phases": {"preflight": 0.5, "checkpoint": 1.0, "stop": 0.25}}
    run = RunJournal(
        run_id="failback-1", kind="failback", plan=("sync_primary", "restore_standby"),
        created_at=T0, created_epoch=5, reason="primary back",
        entries=(
            entry("sync_primary", StepStatus.STARTED, 0.0),
            entry("sync_primary", StepStatus.DONE, 2.0),
            entry("restore_standby", StepStatus.STARTED, 10.0),
            entry("restore_standby", StepStatus.DONE, 14.0),
        ),
        finished="done",
    )
    return failover_evidence(run, detected_at=T0, decided_at=T0, lag_bytes=0, lag_seconds=0.0,
                             outcome="done", extra={"switchover": switchover})


def rows_of(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}g"))


def test_rows_are_detection_decision_then_each_step_in_plan_order_then_the_window() -> None:
    origin, rows = timeline_rows(failover_document())
    assert origin == T0
    assert [(row.kind, row.label) for row in rows] == [
        ("detection", "detection"), ("decision", "decision"),
        ("step", "check_primary"), ("step", "promote"), ("step", "update_dns"),
        ("step", "verify_services"), ("window", "no writable primary (≥)"),
    ]
    svg = timeline_svg(failback_document())  # steps span it all: one panel
    _, failback_rows = timeline_rows(failback_document())
    assert [g.get("data-label") for g in rows_of(svg)] == [row.label for row in failback_rows]
    # An operator's failback has no detection: decided when it started.
    assert [row.label for row in failback_rows] == [
        "decision", "sync_primary", "restore_standby", "writes unavailable (switchover)"]
    tops = [float(g.find(f"{SVG}text").get("y")) for g in rows_of(svg)]  # type: ignore[union-attr]
    assert tops == sorted(tops)


def test_steps_that_are_a_small_part_of_the_whole_get_their_own_panel_and_axis() -> None:
    # Detection took 121 s, the runbook 7 s: an overview, then the steps on their own axis.
    svg = timeline_svg(failover_document())
    assert [g.get("data-label") for g in rows_of(svg)] == [
        "detection", "decision", "runbook", "no writable primary (≥)",
        "check_primary", "promote", "update_dns", "verify_services",
    ]
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert "Runbook steps (own time axis)" in texts
    assert "7.000 s" in texts  # the runbook bar: 121.0 -> 128.0
    # The steps' axis starts at the first step (121 s), not at detection.
    axis = [t for t in texts if t and t.endswith(" s") and t[0].isdigit()]
    assert "121 s" in axis or "121.0 s" in axis, axis
    assert "0 s" in axis  # the overview's axis starts at detection
    tops = [float(g.find(f"{SVG}text").get("y")) for g in rows_of(svg)]  # type: ignore[union-attr]
    assert tops == sorted(tops)


def test_each_step_shows_the_duration_of_the_attempt_that_completed_it() -> None:
    _, rows = timeline_rows(failover_document())
    steps = {row.label: row for row in rows if row.kind == "step"}
    # The second attempt (epoch 4) completed promote: 124.0 -> 124.25.
    assert (steps["promote"].start, steps["promote"].end) == (124.0, 124.25)
    assert steps["promote"].figure == "0.250 s (2 attempts)"
    assert steps["check_primary"].figure == "0.500 s"
    assert steps["verify_services"].figure == "3.000 s"
    # A skipped step is a tick where it was journaled, with no duration.
    assert (steps["update_dns"].start, steps["update_dns"].end) == (124.5, None)
    assert steps["update_dns"].figure == "skipped"
    detection = rows[0]
    assert (detection.start, detection.end, detection.figure) == (0.0, 121.0, "2.0 min")
    figures = [t.text for t in ET.fromstring(timeline_svg(failover_document())).iter(f"{SVG}text")]
    assert "0.250 s (2 attempts)" in figures
    assert "2.0 min" in figures


def test_the_failover_window_runs_from_detection_to_the_promotion() -> None:
    _, rows = timeline_rows(failover_document())
    window = rows[-1]
    assert (window.kind, window.start, window.end) == ("window", 0.0, 124.25)


def test_the_failback_window_is_the_switchovers_measured_one_inside_restore_standby() -> None:
    _, rows = timeline_rows(failback_document())
    window = rows[-1]
    assert window.kind == "window"
    assert window.label == "writes unavailable (switchover)"
    # restore_standby started at +10 s; preflight 0.5 s and checkpoint 1 s come first.
    assert (window.start, window.end) == (11.5, 12.25)
    assert window.figure == "0.750 s"


def test_text_from_the_evidence_is_escaped_and_the_svg_stays_well_formed() -> None:
    document = failover_document()
    hostile = '<script>alert("x")</script> & co'
    document["plan"] = [hostile, *document["plan"]]
    document["run_id"] = 'fo-"1"<b>'
    svg = timeline_svg(document)
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    tree = ET.fromstring(svg)  # well-formed XML despite the markup in the document
    texts = [t.text for t in tree.iter(f"{SVG}text")]
    assert hostile in texts
    assert any('fo-"1"<b>' in (t or "") for t in texts)
    labels = [g.get("data-label") for g in rows_of(svg)]
    assert hostile in labels


def test_a_document_without_times_gives_a_picture_that_says_so() -> None:
    assert timeline_rows({"kind": "failover", "run_id": "fo-0"}) == (None, [])
    svg = timeline_svg({"kind": "failover", "run_id": "fo-0", "timeline": "garbage"})
    assert "no timeline in this evidence file" in svg
    ET.fromstring(svg)


def test_broken_stamps_and_fields_are_skipped_not_fatal() -> None:
    document = failover_document()
    document["decided_at"] = "not a time"
    document["steps"] = [{"step": "promote", "status": "done", "started_at": 7,
                          "done_at": None, "actuation_seconds": "fast"}, "junk"]
    _, rows = timeline_rows(document)
    assert rows[0].kind == "step"  # no decision: no detection, no tick
    ET.fromstring(timeline_svg(document))
