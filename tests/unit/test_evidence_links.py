"""The failover's evidence and review draft point to the failback that closed it."""

from __future__ import annotations

import json
from pathlib import Path

from agentaskit_dr.runtime.evidence import write_evidence
from agentaskit_dr.runtime.evidence_links import link_failback
from agentaskit_dr.runtime.incident_review import write_incident_review
from tests.unit.test_evidence import evidence_of, resumed_failover


def write_failover(directory: Path) -> dict[str, object]:
    document = evidence_of(resumed_failover("fo-1"))
    document["extra"] = {"failback": "planned"}
    write_evidence(directory, "failover", "fo-1", document)
    write_incident_review(directory, "failover", "fo-1", document)
    return document


def test_a_completed_failback_is_linked_from_the_failover_it_undid(tmp_path: Path) -> None:
    write_failover(tmp_path)
    review = tmp_path / "failover" / "fo-1.md"
    review.write_text(review.read_text() + "\nNotes an engineer added.\n")

    linked = link_failback(tmp_path, failover_id="fo-1", kind="failback",
                           run_id="failback-20261129T120000Z-e4",
                           finished_at="2026-11-29T12:05:00+00:00")

    assert linked == review
    text = review.read_text()
    assert "Notes an engineer added." in text  # amended, not redrafted
    assert "- [x] Failback planned:" in text
    assert "- [ ] Failback planned:" not in text
    assert ("## Closed by failback\n\n- [failback failback-20261129T120000Z-e4]"
            "(../failback/failback-20261129T120000Z-e4.md) completed at "
            "2026-11-29T12:05:00+00:00") in text
    document = json.loads((tmp_path / "failover" / "fo-1.json").read_text())
    assert document["extra"]["failback"] == "done"
    assert document["extra"]["closed_by"]["review"] == (
        "../failback/failback-20261129T120000Z-e4.md")

    again = link_failback(tmp_path, failover_id="fo-1", kind="failback",
                          run_id="failback-20261129T120000Z-e4", finished_at="later")

    assert again == review
    assert review.read_text() == text  # a second call changes nothing


def test_a_failover_without_evidence_on_this_host_is_left_alone(tmp_path: Path) -> None:
    assert link_failback(tmp_path, failover_id="fo-elsewhere", kind="failback",
                         run_id="failback-1", finished_at=None) is None
    assert not (tmp_path / "failover").exists()
