"""The objectives measured from evidence files: worst RPO and RTO, mean MTTR, each with the
file it came from; nothing measured says so instead of claiming."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from agentaskit_dr.drtesting.objectives import measure_objectives

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC).timestamp()
TARGETS = {"rpo": 3600.0, "rto": 4 * 3600.0, "mttr": 2 * 3600.0, "drills": 4}


def failover(directory: Path, run_id: str, created: str, *, rto: float | None,
             lag: float | None, outcome: str = "done", folder_name: str = "failover",
             rpo: dict[str, object] | None = None) -> Path:
    folder = directory / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps({
        "schema_version": 1, "run_id": run_id, "kind": "failover", "created_at": created,
        "outcome": outcome, "rto_seconds": rto,
        "rpo": {"lag_bytes": 0, "lag_seconds": lag, **(rpo or {})},
    }))
    return path


def drill(directory: Path, stamp: str, seconds: float | None) -> Path:
    folder = directory / "drills"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sandbox-drill-{stamp}.json"
    path.write_text(json.dumps({"figures": {"kill_to_writable": seconds}}))
    return path


def backup(directory: Path, run_id: str, kind: str, finished: float, outcome: str = "ok") -> Path:
    folder = directory / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps({"kind": kind, "outcome": outcome,
                                "timeline": [{"at_unix": finished}]}))
    return path


def test_no_evidence_measures_nothing_and_says_why(tmp_path: Path) -> None:
    rpo, rto, mttr = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert (rpo.met, rto.met, mttr.met) == (None, None, None)
    notes = [m.note for m in rpo.measures]
    assert notes == ["no failover evidence in failover/",
                     "no failover evidence in failover/",
                     "not measured here: a watchdog's /v1/status has it while the primary "
                     "archives (archive_mode on, one segment archived)",
                     "no backup recorded as good in backups/"]


def test_rpo_is_the_worst_of_lag_at_failover_and_newest_backup_age(tmp_path: Path) -> None:
    failover(tmp_path, "fo-old", "2026-11-01T00:00:00+00:00", rto=50.0, lag=900.0)
    newest = failover(tmp_path, "fo-new", "2026-11-20T00:00:00+00:00", rto=30.0, lag=2.5)
    good = backup(tmp_path, "backup-b", "backup-incremental", NOW - 1800)
    backup(tmp_path, "backup-c", "backup-full", NOW - 60, outcome="failed")
    backup(tmp_path, "verify-1", "verify-backup", NOW - 10)
    rpo, _, _ = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert [m.seconds for m in rpo.measures] == [2.5, None, None, 1800.0]
    assert rpo.measures[0].source == str(newest)
    assert (rpo.measured_seconds, rpo.source, rpo.met) == (1800.0, str(good), True)


def test_a_wal_archive_lag_the_probe_read_counts_for_rpo_and_can_be_the_worst(
    tmp_path: Path,
) -> None:
    failover(tmp_path, "fo-new", "2026-11-20T00:00:00+00:00", rto=30.0, lag=2.5)
    backup(tmp_path, "backup-b", "backup-incremental", NOW - 1800)
    rpo, _, _ = measure_objectives(tmp_path, **TARGETS, now=NOW,  # type: ignore[arg-type]
                                   archive_lag=5400.0)
    assert [m.seconds for m in rpo.measures] == [2.5, None, 5400.0, 1800.0]
    assert rpo.measures[2].source == "the primary's pg_stat_archiver (probe)"
    assert (rpo.measured_seconds, rpo.met) == (5400.0, False)  # over the 1 h target


def test_rto_is_the_worst_of_the_last_failover_and_the_last_n_drills(tmp_path: Path) -> None:
    last = failover(tmp_path, "fo", "2026-11-20T00:00:00+00:00", rto=40.0, lag=0.0)
    drill(tmp_path, "20260101T000000Z", 999.0)  # older than the last 2: not counted
    slow = drill(tmp_path, "20260201T000000Z", 55.0)
    drill(tmp_path, "20260301T000000Z", 7.0)
    _, rto, _ = measure_objectives(tmp_path, **{**TARGETS, "drills": 2},  # type: ignore[arg-type]
                                   now=NOW)
    assert [m.seconds for m in rto.measures] == [40.0, 55.0, 7.0]
    assert rto.measures[0].source == str(last)
    assert (rto.measured_seconds, rto.source) == (55.0, str(slow))


def test_mttr_is_the_mean_of_recovered_failovers_against_its_target(tmp_path: Path) -> None:
    failover(tmp_path, "a", "2026-11-01T00:00:00+00:00", rto=3600.0, lag=0.0)
    failover(tmp_path, "b", "2026-11-02T00:00:00+00:00", rto=18000.0, lag=0.0)
    failover(tmp_path, "c", "2026-11-03T00:00:00+00:00", rto=None, lag=None, outcome="failed")
    _, rto, mttr = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert (mttr.measured_seconds, mttr.met) == (10800.0, False)
    assert mttr.as_dict()["measures"][0]["what"] == "mean detected → recovered of 2 failover(s)"
    assert rto.measures[0].note == "run failed: no RTO"  # the last one failed


def test_a_switchover_drill_in_the_drill_environment_counts_for_rto(tmp_path: Path) -> None:
    drill(tmp_path, "20260101T000000Z", 6.0)
    folder = tmp_path / "operational_audit" / "dr_drills"  # the plan's layout
    folder.mkdir(parents=True)
    staged = folder / "failover-drill-20260401T100000Z.json"
    staged.write_text(json.dumps({"figures": {"switchover_seconds": 42.0}}))
    _, rto, _ = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert [m.what for m in rto.measures[1:]] == [
        "drill sandbox-drill-20260101T000000Z: kill → writable",
        "drill failover-drill-20260401T100000Z: slowest switchover"]
    assert (rto.measured_seconds, rto.source) == (42.0, str(staged))


def test_failovers_in_the_plans_layout_count_too(tmp_path: Path) -> None:
    failover(tmp_path, "fo-old", "2026-11-01T00:00:00+00:00", rto=50.0, lag=1.0)
    newest = failover(tmp_path, "fo-new", "2026-11-20T00:00:00+00:00", rto=30.0, lag=2.0,
                      folder_name="TEST/dr/failover")
    rpo, rto, mttr = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert rpo.measures[0].source == str(newest)
    assert rto.measures[0].seconds == 30.0
    assert mttr.measured_seconds == 40.0


def test_a_lag_at_the_last_view_is_labelled_a_lower_bound(tmp_path: Path) -> None:
    failover(tmp_path, "fo", "2026-11-20T00:00:00+00:00", rto=30.0, lag=0.0,
             rpo={"basis": "last_view", "lower_bound": True})
    rpo, _, _ = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert rpo.measures[0].note.startswith("lower bound (last_view)")
    assert rpo.measures[1].note == ("not measured yet: its old primary was not resynced "
                                    "(sync-primary)")


def test_the_loss_measured_at_the_resync_counts_for_rpo_with_its_bytes(tmp_path: Path) -> None:
    measured = {"lost_wal_bytes": 520, "lost_commits": 5, "fork_lsn": "0/30180B0",
                "first_lost_commit_at": "2026-11-29 11:00:00.000000 UTC",
                "last_lost_commit_at": "2026-11-29 11:00:07.250000 UTC"}
    path = failover(tmp_path, "fo", "2026-11-20T00:00:00+00:00", rto=30.0, lag=0.0,
                    rpo={"basis": "last_view", "lower_bound": True, "measured": measured})
    rpo, _, _ = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    loss = rpo.measures[1]
    assert (loss.seconds, loss.bytes, loss.source) == (7.25, 520, str(path))
    assert loss.note == ("520 bytes of WAL and 5 committed transaction(s) beyond the fork at "
                         "0/30180B0")
    assert rpo.as_dict()["measures"][1]["bytes"] == 520


def test_a_resync_that_could_not_read_the_loss_says_why(tmp_path: Path) -> None:
    failover(tmp_path, "fo", "2026-11-20T00:00:00+00:00", rto=30.0, lag=0.0,
             rpo={"measured": {"lost_wal_bytes": None, "note": "pg_waldump: gone"}})
    rpo, _, _ = measure_objectives(tmp_path, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert (rpo.measures[1].seconds, rpo.measures[1].note) == (None,
                                                              "not measured: pg_waldump: gone")
