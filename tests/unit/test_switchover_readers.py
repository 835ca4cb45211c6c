"""Switchover evidence as its readers show it: the write-unavailability window as "writes
blocked", never as RTO (``evidence list``, the status page, the review draft, the
timeline); ``evidence show`` finds any run by its id; the objectives list the switchovers'
windows on their own line and keep them out of RTO and MTTR.

The documents are built by the writers themselves (``switchover_document``,
``failover_evidence``) from journals like the runs'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentaskit_dr.api import status_html
from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.cli import main
from agentaskit_dr.drtesting.objectives import SWITCHOVER_WRITES, measure_objectives
from agentaskit_dr.drtesting.objectives_view import print_objectives
from agentaskit_dr.oncall_reads import evidence as evidence_command
from agentaskit_dr.ports import JournalEntry, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import failover_evidence, list_evidence, write_evidence
from agentaskit_dr.runtime.evidence_layout import find_run, run_root, run_roots
from agentaskit_dr.runtime.incident_review import draft_incident_review
from agentaskit_dr.runtime.switchover_evidence import switchover_document
from agentaskit_dr.runtime.timeline_svg import timeline_rows
from tests.unit.test_objectives import NOW, TARGETS
from tests.unit.test_runbook import write_config
from tests.unit.test_status_page import FakeController, get, page_status

T0 = NOW - 86400.0
PHASES = {"preflight": 0.5, "checkpoint": 1.0, "stop": 0.2, "catch_up": 0.1, "promote": 0.1,
          "rejoin": 2.0}


def switchover(run_id: str, at: float, window: float | None) -> dict[str, Any]:
    """A switchover run of 9 s started at T0 + ``at``; ``window`` None: it failed before
    the stop, and measured none."""
    outcome = "done" if window is not None else "failed"
    run = RunJournal(
        run_id=run_id, kind="switchover", plan=("switch_database",), created_at=T0 + at,
        created_epoch=4, reason="planned switchover to us-east-1",
        entries=(JournalEntry("switch_database", StepStatus.STARTED, 4, T0 + at),
                 JournalEntry("switch_database", StepStatus(outcome), 4, T0 + at + 9.0)),
        finished=outcome, meta={"from_region": "us-west-2", "to_region": "us-east-1"},
    )
    result = {} if window is None else {
        "write_unavailable_seconds": window, "phases": PHASES, "lag_bytes_at_promotion": 0,
        "final_lsn": "0/3000028", "promoted_replay_lsn": "0/30000A0", "total_seconds": 9.0}
    return switchover_document(run, outcome, result)


def failover(run_id: str, at: float, kind: str = "failover",
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A failover detected at T0 + ``at``, recovered 30 s later (or a failback with the
    switchover figures ``extra``)."""
    run = RunJournal(
        run_id=run_id, kind=kind, plan=("promote",), created_at=T0 + at + 20.0,
        created_epoch=3, reason="db_unreachable for 121s",
        entries=(JournalEntry("promote", StepStatus.STARTED, 3, T0 + at + 20.0),
                 JournalEntry("promote", StepStatus.DONE, 3, T0 + at + 30.0)),
        finished="done",
    )
    return failover_evidence(run, detected_at=T0 + at, decided_at=T0 + at + 20.0, lag_bytes=0,
                             lag_seconds=0.0, outcome="done", extra=extra)


@pytest.fixture
def evidence_dir(tmp_path: Path) -> Path:
    """A failover, a failback (its switch back blocked writes 0.6 s) and three switchovers:
    0.9 s, then 0.4 s, then one that failed."""
    directory = tmp_path / "evidence"
    root = run_root(directory)
    write_evidence(root, "failover", "fo-1", failover("fo-1", 0.0))
    write_evidence(root, "failback", "fb-1", failover(
        "fb-1", 3600.0, kind="failback",
        extra={"switchover": {"write_unavailable_seconds": 0.6, "phases": PHASES}}))
    for run_id, at, window in (("so-1", 7200.0, 0.9), ("so-2", 10800.0, 0.4),
                               ("so-3", 14400.0, None)):
        write_evidence(root, "switchover", run_id, switchover(run_id, at, window))
    return directory


def test_a_switchover_summary_has_its_window_and_no_rto(evidence_dir: Path) -> None:
    summaries = {s.run_id: s for s in list_evidence(run_root(evidence_dir))}
    so = summaries["so-2"]
    # The document's rto_seconds is the run's length; the reader does not call it RTO.
    assert json.loads(so.path.read_text())["rto_seconds"] == 9.0
    assert (so.rto_seconds, so.writes_blocked_seconds) == (None, 0.4)
    assert (summaries["fb-1"].rto_seconds, summaries["fb-1"].writes_blocked_seconds) == (30.0,
                                                                                         0.6)
    assert (summaries["fo-1"].rto_seconds, summaries["fo-1"].writes_blocked_seconds) == (30.0,
                                                                                         None)
    assert summaries["so-3"].writes_blocked_seconds is None


async def test_evidence_list_shows_writes_blocked_for_switches_and_rto_for_failovers(
    evidence_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, wired=False)
    await evidence_command(config, argparse.Namespace(action="list", run_id=None))
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "  writes blocked 0.4s  RPO 0 bytes  " in lines["switchover/so-2"]
    assert "RTO" not in lines["switchover/so-2"]
    assert "  writes blocked —  " in lines["switchover/so-3"]
    assert "  RTO 30s  writes blocked 0.6s  " in lines["failback/fb-1"]
    assert "  RTO 30s  RPO 0 bytes  " in lines["failover/fo-1"]


@pytest.mark.parametrize(("name", "kind"), [("so-2", "switchover"), ("fb-1", "failback"),
                                             ("fo-1", "failover"),
                                             ("switchover/so-1", "switchover")])
async def test_evidence_show_finds_a_run_by_its_id_alone(
    evidence_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
    kind: str,
) -> None:
    config = write_config(tmp_path, wired=False)
    await evidence_command(config, argparse.Namespace(action="show", run_id=name))
    shown = json.loads(capsys.readouterr().out)
    assert (shown["kind"], shown["run_id"]) == (kind, name.rsplit("/", maxsplit=1)[-1])


def test_a_run_id_in_two_kinds_asks_which(evidence_dir: Path) -> None:
    root = run_root(evidence_dir)
    write_evidence(root, "failback", "so-1", failover("so-1", 0.0, kind="failback"))
    with pytest.raises(ValueError, match="run id so-1 is in more than one kind of evidence: "
                                         "name one of failback/so-1, switchover/so-1"):
        find_run(run_roots(evidence_dir), "so-1")


@pytest.mark.parametrize(("run_id", "says"), [
    ("so-9", "no evidence file for run so-9 in "),
    ("../so-1", "evidence kind '..' must be 1-128 letters"),
    ("*", "run id '*' must be 1-128 letters"),
])
def test_evidence_show_of_an_unknown_or_bad_run_id_is_one_line(
    evidence_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, run_id: str, says: str,
) -> None:
    # The command points logging at this test's captured stderr, closed after it.
    monkeypatch.setattr("agentaskit_dr.logs.configure", lambda *_, **__: None)
    write_config(tmp_path, wired=False)

    code = main(["evidence", "show", run_id, "--config", str(tmp_path / "watchdog.yaml")])

    assert code == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1, err


def test_switchovers_stay_out_of_rto_and_mttr_and_have_their_own_line(
    evidence_dir: Path,
) -> None:
    _, rto, mttr = measure_objectives(evidence_dir, **TARGETS, now=NOW)  # type: ignore[arg-type]
    # Only the failover counts: the switchovers' 9 s runs and windows do not.
    assert rto.measures[0].source == str(run_root(evidence_dir) / "failover" / "fo-1.json")
    assert (rto.measured_seconds, mttr.measured_seconds) == (30.0, 30.0)
    assert "mean detected → recovered of 1 failover(s)" in mttr.measures[0].what


def test_the_objectives_json_keeps_its_keys_and_adds_the_switchovers(
    evidence_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    print_objectives(None, evidence_dir, as_json=True)
    body = json.loads(capsys.readouterr().out)
    assert list(body) == ["rpo", "rto", "mttr", SWITCHOVER_WRITES]
    for name in ("rpo", "rto", "mttr"):
        assert set(body[name]) == {"target_seconds", "plan_claims_seconds", "measured_seconds",
                                   "met", "evidence", "measures"}
    switches = body[SWITCHOVER_WRITES]
    root = run_root(evidence_dir)
    # Latest: so-2's 0.4 s (so-3 failed and measured none); worst: so-1's 0.9 s.
    assert (switches["latest_seconds"], switches["latest_evidence"]) == (
        0.4, str(root / "switchover" / "so-2.json"))
    assert (switches["worst_seconds"], switches["worst_evidence"]) == (
        0.9, str(root / "switchover" / "so-1.json"))
    assert switches["runs"] == 4  # three switchovers and the failback
    assert "1 more run(s) measured none" in switches["note"]
    assert "not counted as RTO" in switches["what"]


def test_the_objectives_table_lists_the_switchovers_on_their_own_line(
    evidence_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    print_objectives(None, evidence_dir, as_json=False)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "Switchover writes blocked" in line)
    assert "│ 0.4s latest, 0.9s worst │ no target │" in row
    assert row.rstrip(" │").endswith(str(run_root(evidence_dir) / "switchover" / "so-2.json"))
    assert ("  Switchover writes blocked (not RTO): worst of 3: switchover so-1: 0.9s"
            in out.splitlines())


def test_no_switchover_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_objectives(None, tmp_path, as_json=True)
    switches = json.loads(capsys.readouterr().out)[SWITCHOVER_WRITES]
    assert (switches["latest_seconds"], switches["worst_seconds"], switches["runs"]) == (
        None, None, 0)
    assert switches["note"] == "no switchover or failback evidence"


async def test_the_status_page_shows_writes_blocked_not_rto_for_a_switchover(
    evidence_dir: Path,
) -> None:
    controller = FakeController()
    objectives: dict[str, Any] = {
        "rto": {"target_seconds": 14400, "measured_seconds": 30.0, "met": True,
                "evidence": "fo-1.json"},
        SWITCHOVER_WRITES: {"latest_seconds": 0.4, "worst_seconds": 0.9,
                            "latest_evidence": "so-2.json", "note": ""}}
    controller.status_payload = {**page_status(), "objectives": objectives}
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: run_roots(evidence_dir))
    async with TestClient(TestServer(app)) as client:
        _, _, html = await get(client, "/ui/main")
    assert "<th>RTO</th><th>Writes blocked</th>" in html
    row = html.split('so-2.svg">so-2</a>', 1)[1].split("</tr>", 1)[0]
    assert "<td>—</td><td>0.4 s</td><td>0 bytes</td>" in row
    failback = html.split('fb-1.svg">fb-1</a>', 1)[1].split("</tr>", 1)[0]
    assert "<td>30.0 s</td><td>0.6 s</td>" in failback
    assert ("<td>Switchover writes blocked (not RTO)</td><td>—</td>"
            "<td>0.4 s latest, 0.9 s worst</td><td>no target</td><td>so-2.json</td>") in html
    assert "SWITCHOVER_WRITES_BLOCKED" not in html
    assert status_html.SWITCHOVER_WRITES == SWITCHOVER_WRITES


def test_a_switchovers_review_draft_and_timeline_show_its_window() -> None:
    document = switchover("so-1", 0.0, 0.9)
    review = draft_incident_review(document)
    assert "| Writes blocked, old primary stopped → first write on the new one | 0.9 s |" in (
        review)
    assert "| RTO, detected → recovered | — (a planned switchover" in review
    assert "Failback planned" not in review
    _, rows = timeline_rows(document)
    window = rows[-1]
    assert (window.kind, window.label) == ("window", "writes unavailable (switchover)")
    # switch_database started at +0 s; the preflight (0.5 s) and checkpoint (1 s) come first.
    assert (window.start, window.end) == (1.5, 2.4)
