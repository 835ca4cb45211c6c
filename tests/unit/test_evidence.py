"""Evidence documents built from hand-made journals, and the files they are written to."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agentaskit_dr.ports import JournalEntry, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import (
    EVIDENCE_SCHEMA_VERSION,
    failover_evidence,
    list_evidence,
    read_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.incident_review import draft_incident_review, write_incident_review
from agentaskit_dr.runtime.rpo import promotion_rpo, rpo_words

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PLAN = ("check-primary", "promote", "update-dns")


def step(
    name: str, status: StepStatus, at: float, epoch: int = 3, detail: str = ""
) -> JournalEntry:
    return JournalEntry(step=name, status=status, epoch=epoch, at=T0 + at, detail=detail)


def resumed_failover(run_id: str = "fo-1", created: float = 100.0) -> RunJournal:
    """Epoch 3 crashed while promoting; epoch 4 resumed, promoted and switched DNS."""
    return RunJournal(
        run_id=run_id, kind="failover", plan=PLAN, created_at=T0 + created, created_epoch=3,
        reason="primary database unreachable for 121 s",
        entries=(
            step("check-primary", StepStatus.STARTED, 130.0),
            step("check-primary", StepStatus.DONE, 130.5, detail="down from 2/2 vantages"),
            step("promote", StepStatus.STARTED, 131.0),
            step("promote", StepStatus.STARTED, 140.0, epoch=4),
            step("promote", StepStatus.DONE, 140.25, epoch=4, detail="pg_promote | ok"),
            step("update-dns", StepStatus.STARTED, 141.0, epoch=4),
            step("update-dns", StepStatus.DONE, 143.0, epoch=4),
        ),
        finished="done",
    )


def evidence_of(journal: RunJournal, outcome: str = "done") -> dict[str, object]:
    return failover_evidence(
        journal, detected_at=T0 + 5.0, decided_at=T0 + 129.0, lag_bytes=8192,
        lag_seconds=0.4, outcome=outcome, extra={"drill": False},
    )


def test_rto_runs_from_detection_to_the_last_step_done() -> None:
    document = evidence_of(resumed_failover())
    assert document["schema_version"] == EVIDENCE_SCHEMA_VERSION
    assert (document["run_id"], document["kind"], document["outcome"]) == ("fo-1", "failover",
                                                                           "done")
    assert document["epochs"] == [3, 4]
    assert document["detected_at"] == "2026-01-01T00:00:05.000Z"
    assert document["decided_at"] == "2026-01-01T00:02:09.000Z"
    assert document["recovered_at"] == "2026-01-01T00:02:23.000Z"
    assert document["detection_seconds"] == 124.0
    assert document["rto_seconds"] == 138.0
    assert document["decision_to_recovery_seconds"] == 14.0
    # Nothing said what the lag was measured against: a lower bound, never a claim.
    assert document["rpo"] == {
        "lag_bytes": 8192, "lag_seconds": 0.4, "basis": None, "lower_bound": True,
        "rpo_lag_bytes_at_last_view": None, "last_view_age_seconds": None, "measured": None}
    assert document["extra"] == {"drill": False}


def test_actuation_time_counts_the_attempt_that_completed_the_step() -> None:
    steps = evidence_of(resumed_failover())["steps"]
    assert isinstance(steps, list)
    assert [(s["step"], s["status"], s["attempts"], s["actuation_seconds"]) for s in steps] == [
        ("check-primary", "done", 1, 0.5),
        ("promote", "done", 2, 0.25),  # epoch 4's attempt, not the crashed one
        ("update-dns", "done", 1, 2.0),
    ]
    assert steps[1]["started_at"] == "2026-01-01T00:02:20.000Z"


def test_timeline_keeps_journal_order_with_utc_stamps_and_epochs() -> None:
    timeline = evidence_of(resumed_failover())["timeline"]
    assert isinstance(timeline, list)
    assert [(e["step"], e["status"], e["epoch"]) for e in timeline] == [
        ("check-primary", "started", 3), ("check-primary", "done", 3), ("promote", "started", 3),
        ("promote", "started", 4), ("promote", "done", 4), ("update-dns", "started", 4),
        ("update-dns", "done", 4),
    ]
    assert timeline[1]["at"] == "2026-01-01T00:02:10.500Z"
    assert timeline[1]["detail"] == "down from 2/2 vantages"


def test_a_run_that_did_not_complete_its_plan_has_no_rto() -> None:
    journal = resumed_failover()
    failed = RunJournal(
        run_id="fo-2", kind="failover", plan=PLAN, created_at=T0, created_epoch=3, reason="r",
        entries=(*journal.entries[:5], step("update-dns", StepStatus.FAILED, 141.0, epoch=4)),
        finished="failed",
    )
    document = evidence_of(failed, outcome="failed")
    assert document["recovered_at"] is None
    assert document["rto_seconds"] is None
    assert document["decision_to_recovery_seconds"] is None
    assert document["detection_seconds"] == 124.0


def test_missing_measurements_stay_none_and_bad_ones_are_refused() -> None:
    document = failover_evidence(
        resumed_failover(), detected_at=None, decided_at=None, lag_bytes=None, lag_seconds=None,
        outcome="done",
    )
    assert (document["detection_seconds"], document["rto_seconds"]) == (None, None)
    with pytest.raises(ValueError, match="lag_bytes must not be negative, got -1"):
        failover_evidence(resumed_failover(), detected_at=None, decided_at=None, lag_bytes=-1,
                          lag_seconds=None, outcome="done")


def test_written_evidence_reads_back_whole_with_mode_0644(tmp_path: Path) -> None:
    document = evidence_of(resumed_failover())
    path = write_evidence(tmp_path / "evidence", "failover", "fo-1", document)
    assert path == tmp_path / "evidence" / "failover" / "fo-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_evidence(tmp_path / "evidence", "failover", "fo-1") == document
    assert [p.name for p in path.parent.iterdir()] == ["fo-1.json"]  # no temporary file left behind

    document["outcome"] = "done, re-measured"
    write_evidence(tmp_path / "evidence", "failover", "fo-1", document)
    assert read_evidence(tmp_path / "evidence", "failover", "fo-1")["outcome"] == \
        "done, re-measured"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_evidence(tmp_path, "failover", "fo-1", evidence_of(resumed_failover()))
    before = path.read_text()
    with pytest.raises(ValueError, match=r"evidence for .*fo-1\.json is not JSON-serialisable"):
        write_evidence(tmp_path, "failover", "fo-1", {"bad": object()})
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["fo-1.json"]


def test_names_that_would_escape_the_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"evidence run_id '\.\./x' must be"):
        write_evidence(tmp_path, "failover", "../x", {})
    with pytest.raises(ValueError, match="evidence kind 'a/b' must be"):
        read_evidence(tmp_path, "a/b", "fo-1")


def test_reading_a_missing_or_broken_file_names_the_path(tmp_path: Path) -> None:
    missing = re.escape(f"no evidence file at {tmp_path / 'failover' / 'x.json'}")
    with pytest.raises(FileNotFoundError, match=missing):
        read_evidence(tmp_path, "failover", "x")
    (tmp_path / "failover").mkdir()
    (tmp_path / "failover" / "x.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"evidence file .*x\.json is not valid JSON"):
        read_evidence(tmp_path, "failover", "x")
    (tmp_path / "failover" / "x.json").write_text('{"schema_version": 99}')
    with pytest.raises(ValueError, match="has schema_version 99, this version reads 1"):
        read_evidence(tmp_path, "failover", "x")


def test_listing_is_newest_first_and_skips_bad_files_with_a_note(tmp_path: Path) -> None:
    write_evidence(tmp_path, "failover", "fo-old", evidence_of(resumed_failover("fo-old", 0.0)))
    write_evidence(tmp_path, "failover", "fo-new", evidence_of(resumed_failover("fo-new", 900.0)))
    failback = resumed_failover("fb-mid", 500.0)
    failback = RunJournal(
        run_id="fb-mid", kind="failback", plan=(), created_at=failback.created_at,
        created_epoch=5, reason="primary recovered",
    )
    write_evidence(tmp_path, "failback", "fb-mid", evidence_of(failback))
    (tmp_path / "failover" / "garbage.json").write_text("[]")
    (tmp_path / "failover" / "partial.json").write_text('{"schema_version": 1}')
    write_incident_review(tmp_path, "failover", "fo-new", evidence_of(resumed_failover()))

    with capture_logs() as logs:
        listing = list_evidence(tmp_path)
    assert [(s.kind, s.run_id) for s in listing] == [
        ("failover", "fo-new"), ("failback", "fb-mid"), ("failover", "fo-old"),
        ("failover", "garbage"), ("failover", "partial"),
    ]
    newest = listing[0]
    assert (newest.outcome, newest.rto_seconds, newest.rpo_lag_bytes, newest.note) == (
        "done", 138.0, 8192, None)
    assert listing[1].rto_seconds is None  # an empty plan completed nothing
    assert listing[3].note is not None
    assert "holds a list, not an object" in listing[3].note
    assert listing[4].note is not None
    assert "not a complete evidence document: KeyError" in listing[4].note
    assert [e["event"] for e in logs] == ["evidence_file_skipped"] * 2

    assert [s.run_id for s in list_evidence(tmp_path, "failback")] == ["fb-mid"]
    assert list_evidence(tmp_path / "nothing-here") == []


def test_incident_review_has_a_timeline_row_per_entry_and_plans_failback(tmp_path: Path) -> None:
    document = evidence_of(resumed_failover())
    review = draft_incident_review(document)
    assert review.startswith("# Incident review (draft): failover fo-1\n")
    assert "| 2026-01-01T00:02:20.250Z | promote | done | 4 | pg_promote \\| ok |" in review
    rows = [line for line in review.splitlines() if line.startswith("| 2026-01-01T")]
    assert len(rows) == 7
    assert "| RTO, detected → recovered | 138.0 s |" in review
    assert ("| RPO at promotion | 8192 bytes (basis not recorded); lag 0.4 s |"
            in review)
    assert "| promote | done | 2 | 0.25 s |" in review
    assert "- [ ] Failback planned" in review

    path = write_incident_review(tmp_path, "failover", "fo-1", document)
    assert path == tmp_path / "failover" / "fo-1.md"
    assert path.read_text() == review
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_incident_review_of_a_sparse_document_shows_dashes() -> None:
    review = draft_incident_review({"run_id": "fo-9", "kind": "failback"})
    assert "| RTO, detected → recovered | — |" in review
    assert "Failback planned" not in review


def test_incident_review_shows_the_timeline_picture_written_beside_it(tmp_path: Path) -> None:
    document = evidence_of(resumed_failover())
    review = write_incident_review(tmp_path, "failover", "fo-1", document)
    picture = tmp_path / "failover" / "fo-1.svg"
    assert "![Timeline of fo-1](fo-1.svg)" in review.read_text()
    assert picture.read_text().startswith("<svg ")
    assert 'data-label="promote"' in picture.read_text()
    assert stat.S_IMODE(picture.stat().st_mode) == 0o644
    # The listing reads only the JSON documents: the picture is not a broken evidence file.
    assert list_evidence(tmp_path) == []


def test_a_progress_mark_within_a_step_is_not_a_new_attempt() -> None:
    # restore_standby: started, marked "switched" 0.9 s later (same epoch), done at 1.0 s.
    run = RunJournal(
        run_id="failback-1", kind="failback", plan=("restore-standby",), created_at=T0,
        created_epoch=5, reason="home", finished="done",
        entries=(
            step("restore-standby", StepStatus.STARTED, 0.0, epoch=5),
            step("restore-standby", StepStatus.STARTED, 0.9, epoch=5, detail="switched"),
            step("restore-standby", StepStatus.DONE, 1.0, epoch=5),
        ),
    )
    (times,) = evidence_of(run)["steps"]  # type: ignore[misc]
    assert times["attempts"] == 1
    assert times["actuation_seconds"] == 1.0


def test_a_start_after_a_failure_under_the_same_epoch_is_a_new_attempt() -> None:
    run = RunJournal(
        run_id="fo-2", kind="failover", plan=("update-dns",), created_at=T0, created_epoch=3,
        reason="x", finished="done",
        entries=(
            step("update-dns", StepStatus.STARTED, 0.0),
            step("update-dns", StepStatus.FAILED, 1.0),
            step("update-dns", StepStatus.STARTED, 5.0),
            step("update-dns", StepStatus.DONE, 5.5),
        ),
    )
    (times,) = evidence_of(run)["steps"]  # type: ignore[misc]
    assert times["attempts"] == 2
    assert times["actuation_seconds"] == 0.5


def test_a_lag_at_the_last_view_reads_as_a_lower_bound_in_the_review() -> None:
    document = failover_evidence(
        resumed_failover(), detected_at=T0, decided_at=T0, lag_bytes=0, lag_seconds=0.0,
        outcome="done", rpo_detail=promotion_rpo(
            lag_bytes=0, final_lsn=None, primary_last_lsn=1000, promoted_at=T0 + 9.5,
            last_seen_at=T0 + 2.0))
    rpo = document["rpo"]
    assert isinstance(rpo, dict)
    assert (rpo["basis"], rpo["lower_bound"], rpo["rpo_lag_bytes_at_last_view"],
            rpo["last_view_age_seconds"]) == ("last_view", True, 0, 7.5)
    review = draft_incident_review(document)
    assert ("| RPO at promotion | at least 0 bytes: lag at the last view of the old primary, "
            "7.5 s before the promotion (lower bound; measured when the old primary is "
            "resynced); lag 0.0 s |") in review


def test_a_fenced_old_primarys_final_position_makes_the_lag_exact() -> None:
    rpo = promotion_rpo(lag_bytes=0, final_lsn=5000, primary_last_lsn=4000,
                        promoted_at=T0, last_seen_at=T0 - 3)
    assert (rpo["basis"], rpo["lower_bound"], rpo["rpo_lag_bytes_at_last_view"]) == (
        "fenced_final_position", False, None)
    assert rpo_words({**rpo, "measured": {"lost_wal_bytes": 520, "lost_commits": 5}}) == (
        "measured at the resync: 520 bytes of WAL, 5 committed transaction(s) lost")
