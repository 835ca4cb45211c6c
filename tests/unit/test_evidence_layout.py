"""Evidence in the plan's layout (``evidence_layout``): new runs land there, evidence of
the layout before it still counts everywhere it is read, a custom layout is honoured, and
a layout that leaves ``evidence_dir`` is a clear config error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.appstate.evidence import JobResult, write_job
from agentaskit_dr.backup.evidence import job_evidence, write_job_evidence
from agentaskit_dr.config import ConfigError, EvidenceLayout, load_backup_config, load_config
from agentaskit_dr.drtesting.objectives import measure_objectives
from agentaskit_dr.oncall_reads import evidence as evidence_command
from agentaskit_dr.runtime.evidence import write_evidence
from agentaskit_dr.runtime.evidence_layout import run_root, run_roots
from agentaskit_dr.runtime.evidence_links import link_failback
from agentaskit_dr.runtime.incident_review import write_incident_review
from tests.unit.test_evidence import evidence_of, resumed_failover
from tests.unit.test_objectives import NOW, TARGETS
from tests.unit.test_runbook import write_config
from tests.unit.test_status_page import FakeController, failover_document, get, page_status

CUSTOM = EvidenceLayout(backup_logs="logs/backup", failover_tests="runs",
                        drills="audit/drills")


def backup_run(directory: Path, layout: EvidenceLayout | None, run_id: str, *,
               outcome: str = "ok", stored: int = 4096) -> Path:
    return write_job_evidence(directory, job_evidence(
        job="backup-full", run_id=run_id, started_at=NOW - 60, finished_at=NOW,
        outcome=outcome, reason="backup run --kind full", detail="" if outcome == "ok"
        else "pg_basebackup: exit 1", extra={"stored_bytes": stored}), layout)


def test_each_backup_job_run_is_one_json_line_in_its_log(tmp_path: Path) -> None:
    first = backup_run(tmp_path, None, "backup-full-1")
    second = backup_run(tmp_path, None, "backup-full-2", outcome="failed", stored=0)
    log = tmp_path / "TEST" / "dr" / "backup-full.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["run_id"], line["outcome"], line["bytes"], line["evidence"])
            for line in lines] == [("backup-full-1", "ok", 4096, str(first)),
                                   ("backup-full-2", "failed", 0, str(second))]
    assert lines[0]["started_at"] == "2026-11-29T11:59:00+00:00"
    assert lines[0]["finished_at"] == "2026-11-29T12:00:00+00:00"
    assert lines[1]["detail"] == "pg_basebackup: exit 1"
    # The JSON evidence stays where its readers (schedule, objectives) look.
    assert first.parent == tmp_path / "backups"

    result = JobResult("appstate-configs", "20261129T120000Z-abcd", NOW - 5, "unchanged", "")
    write_job(tmp_path, None, result)
    (line,) = (tmp_path / "TEST" / "dr" / "appstate-configs.log").read_text().splitlines()
    assert json.loads(line)["evidence"] == str(result.evidence)


def test_a_custom_layout_is_honoured(tmp_path: Path) -> None:
    backup_run(tmp_path, CUSTOM, "backup-full-1")
    assert (tmp_path / "logs" / "backup" / "backup-full.log").is_file()
    assert not (tmp_path / "TEST").exists()
    assert run_root(tmp_path, CUSTOM) == tmp_path / "runs"
    # Drills in the custom place count for RTO, and so do those of the older places.
    for folder, stamp, seconds in (("audit/drills", "20261101T100000Z", 12.0),
                                   ("operational_audit/dr_drills", "20261001T100000Z", 30.0),
                                   ("drills", "20260901T100000Z", 20.0)):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / f"sandbox-drill-{stamp}.json").write_text(
            json.dumps({"figures": {"kill_to_writable": seconds}}))
    _, rto, _ = measure_objectives(tmp_path, **TARGETS, now=NOW,  # type: ignore[arg-type]
                                   layout=CUSTOM)
    assert sorted(m.seconds for m in rto.measures[1:]) == [12.0, 20.0, 30.0]
    assert rto.measured_seconds == 30.0


def write_run(root: Path, run_id: str, created: str, rto: float) -> Path:
    document = evidence_of(resumed_failover(run_id))
    document.update(created_at=created, rto_seconds=rto)
    write_incident_review(root, "failover", run_id, document)
    return write_evidence(root, "failover", run_id, document)


@pytest.fixture
def both_layouts(tmp_path: Path) -> Path:
    """An evidence directory with a failover of the old layout and one of the new."""
    evidence_dir = tmp_path / "evidence"
    write_run(evidence_dir, "fo-old", "2026-11-01T00:00:00+00:00", 50.0)
    write_run(run_root(evidence_dir), "fo-new", "2026-11-20T00:00:00+00:00", 30.0)
    return evidence_dir


def test_old_and_new_failovers_both_count_in_the_objectives(both_layouts: Path) -> None:
    _, rto, mttr = measure_objectives(both_layouts, **TARGETS, now=NOW)  # type: ignore[arg-type]
    assert rto.measures[0].source == str(run_root(both_layouts) / "failover" / "fo-new.json")
    assert mttr.measured_seconds == 40.0  # the mean of both


async def test_old_and_new_failovers_both_show_in_evidence_list_and_show(
        both_layouts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, wired=False)
    assert config.evidence_dir == both_layouts
    await evidence_command(config, argparse.Namespace(action="list", run_id=None))
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["failover/fo-new", "failover/fo-old"]
    await evidence_command(config, argparse.Namespace(action="show", run_id="fo-old"))
    assert json.loads(capsys.readouterr().out)["run_id"] == "fo-old"


async def test_old_and_new_failovers_both_show_on_the_status_page(both_layouts: Path) -> None:
    controller = FakeController()
    controller.status_payload = page_status()
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: run_roots(both_layouts))
    async with TestClient(TestServer(app)) as client:
        _, _, html = await get(client, "/ui/main")
        for run_id in ("fo-new", "fo-old"):
            assert f'<a href="/ui/timeline/failover/{run_id}.svg">{run_id}</a>' in html
            status, content_type, _ = await get(client, f"/ui/timeline/failover/{run_id}.svg")
            assert (status, content_type) == (200, "image/svg+xml")


def test_a_failback_in_the_new_layout_links_an_old_layout_failover(tmp_path: Path) -> None:
    evidence_dir = tmp_path / "evidence"
    document: dict[str, Any] = failover_document("fo-old")
    write_evidence(evidence_dir, "failover", "fo-old", document)
    write_incident_review(evidence_dir, "failover", "fo-old", document)
    new_root = run_root(evidence_dir)
    write_evidence(new_root, "failback", "failback-1", failover_document("failback-1"))
    write_incident_review(new_root, "failback", "failback-1", failover_document("failback-1"))

    review = link_failback(new_root, failover_id="fo-old", kind="failback",
                           run_id="failback-1", finished_at="2026-11-29T12:00:00+00:00",
                           roots=run_roots(evidence_dir))

    assert review == evidence_dir / "failover" / "fo-old.md"
    closed_by = json.loads((evidence_dir / "failover" / "fo-old.json").read_text())[
        "extra"]["closed_by"]
    assert closed_by["review"] == "../TEST/dr/failover/failback/failback-1.md"
    for link in (closed_by["review"], closed_by["evidence"]):  # both lead to the files
        assert (review.parent / link).resolve().is_file()
    assert f"({closed_by['review']})" in review.read_text()
    assert not (new_root / "failover").exists()  # amended in place, not copied


@pytest.mark.parametrize(("value", "says"), [
    ("/srv/evidence", "must be relative to evidence_dir"),
    ("../outside", "must stay under evidence_dir: no '..' in it"),
    ("TEST/../../x", "must stay under evidence_dir: no '..' in it"),
    ("", "must name a directory under evidence_dir"),
])
def test_a_layout_outside_evidence_dir_is_a_clear_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    watchdog = tmp_path / "watchdog.yaml"
    write_config(tmp_path, wired=False)
    data = yaml.safe_load(watchdog.read_text())
    data["evidence_layout"] = {"failover_tests": value}
    watchdog.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as bad:
        load_config(watchdog)
    assert "evidence_layout.failover_tests" in str(bad.value)
    assert says in str(bad.value)

    monkeypatch.setenv("LAYOUT_TEST_KEY", "ef" * 32)
    backup = tmp_path / "backup.yaml"
    backup.write_text(yaml.safe_dump({
        "storage": {"primary": {"url": "s3://layout-one"}, "replica": {"url": "s3://layout-two"}},
        "encryption": {"key_env": "LAYOUT_TEST_KEY"}, "evidence_layout": {"backup_logs": value},
    }))
    with pytest.raises(ConfigError) as bad:
        load_backup_config(backup)
    assert "evidence_layout.backup_logs" in str(bad.value)
    assert says in str(bad.value)
    assert "Traceback" not in str(bad.value)
