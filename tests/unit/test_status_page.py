"""The status page on the real aiohttp app: what it shows, what it hides, what it serves."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.ports import JournalEntry, RunJournal, StepStatus
from agentaskit_dr.runtime.evidence import (
    failover_evidence,
    write_evidence,
)
from agentaskit_dr.runtime.incident_review import write_incident_review
from tests.unit.test_api_server import FakeController

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DSN_WITH_PASSWORD = "postgresql://watchdog:hunter2-secret@db.internal:5432/app"


def failover_document(run_id: str) -> dict[str, Any]:
    run = RunJournal(
        run_id=run_id, kind="failover", plan=("check_primary", "promote"),
        created_at=T0 + 121.0, created_epoch=3, reason="db_unreachable for 121s",
        entries=(
            JournalEntry("check_primary", StepStatus.STARTED, 3, T0 + 121.0),
            JournalEntry("check_primary", StepStatus.DONE, 3, T0 + 121.5,
                         detail=f"old primary {DSN_WITH_PASSWORD}: unreachable"),
            JournalEntry("promote", StepStatus.STARTED, 3, T0 + 122.0),
            JournalEntry("promote", StepStatus.DONE, 3, T0 + 122.25),
        ),
        finished="done",
    )
    return failover_evidence(run, detected_at=T0, decided_at=T0 + 121.0, lag_bytes=0,
                             lag_seconds=None, outcome="done")


def page_status() -> dict[str, Any]:
    return {
        "node": "drill-us-west-2", "role": "watchdog", "region": "us-west-2",
        "primary_region": "us-east-1", "phase": "failed_over",
        "verdict": "no action: failed over (epoch 3); waiting for acknowledgement",
        "assessment": {"verdict": "healthy", "since_ago": 4.0, "detail": "primary healthy"},
        "conditions": {"db_unreachable": {"failing": False, "failing_for": None,
                                          "failing_since_ago": None, "threshold": 120.0,
                                          "detail": "primary healthy"}},
        "epoch": 3, "lock_holder": "drill-us-west-2", "lag_bytes": 512,
        "paused": False, "self_fenced": False, "peers": {"http://127.0.0.1:1/": False},
        "alerts": {"old_primary": f"not fenced yet ({DSN_WITH_PASSWORD} unreachable)"},
        "probes": {
            "db:primary": {"target": "127.0.0.1:5433", "ok": True, "in_recovery": False,
                           "age": 0.2},
            "db:standby": {"target": "127.0.0.1:5434", "ok": False,
                           "error": "connection refused", "age": 0.3},
            "region_health:us-east-1": {"target": "us-east-1", "ok": True, "age": 0.1},
            "region_health:us-west-2": {"target": "us-west-2", "ok": False, "age": 0.1,
                                        "detail": "0/1 health URLs answered 2xx"},
        },
        "cluster": {"known": True, "primary_region": "us-east-1", "primary_epoch": 3,
                    "primary_run_id": "fo-1", "ack_generation": 0},
        "last_failover": {"decided_ago": 5.0, "epoch": 3, "reason": "db_unreachable"},
    }


@pytest.fixture
def evidence_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "evidence"
    for run_id in ("fo-1", "fo-2"):
        document = failover_document(run_id)
        write_evidence(directory, "failover", run_id, document)
        write_incident_review(directory, "failover", run_id, document)
    return directory


@pytest.fixture
async def client(evidence_dir: Path) -> AsyncIterator[TestClient[Any, Any]]:
    controller = FakeController()
    controller.status_payload = page_status()
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: evidence_dir)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def get(client: TestClient[Any, Any], path: str) -> tuple[int, str, str]:
    async with client.get(URL(path, encoded=True)) as response:
        return response.status, response.content_type, await response.text()


async def test_the_page_shows_state_regions_lock_lag_and_runs_without_a_token(
    client: TestClient[Any, Any],
) -> None:
    status, content_type, html = await get(client, "/")
    assert (status, content_type) == (200, "text/html")
    assert html.startswith("<!doctype html>")
    assert 'id="phase">failed_over<' in html
    assert "waiting for acknowledgement" in html
    assert "<b>us-east-1</b></td><td>primary" in html
    assert "<b>us-west-2</b></td><td>standby" in html
    assert "0/1 health URLs answered 2xx" in html
    assert "connection refused" in html
    assert "healthy since 4 s ago" in html
    assert "Lock holder</td><td>drill-us-west-2" in html
    assert "Fencing epoch</td><td>3" in html
    assert "512 bytes" in html
    assert '<a href="/ui/timeline/failover/fo-2.svg">fo-2</a>' in html
    assert '<img src="/ui/timeline/failover/fo-1.svg"' in html or \
        '<img src="/ui/timeline/failover/fo-2.svg"' in html
    assert "http://127.0.0.1:1/" in html  # the unreachable peer


async def test_missing_sections_say_not_configured_and_fill_in_when_reported(
    client: TestClient[Any, Any], evidence_dir: Path,
) -> None:
    _, _, html = await get(client, "/ui/main")
    for title in ("WAL archive lag", "Backup freshness", "DR drills", "DR testing schedule",
                  "Recovery objectives"):
        after = html.split(title, 1)[1][:120]
        assert "not configured" in after, title
    controller = FakeController()
    controller.status_payload = {
        **page_status(), "wal_archive_lag_seconds": 42.0,
        "backups": {"postgres-full": {"last": "2026-01-01T02:00:00Z", "age": "9 h"}},
        "drills": {"failover-drill": {"last_run": "2026-01-01T10:00:00Z", "result": "passed"}},
        "dr_testing": {"failover drill": {"every": "quarter", "next": "2026-04-01"}},
        "objectives": {"rto": {"target_seconds": 14400, "measured_seconds": 6.9, "met": True,
                               "evidence": "drills/sandbox-drill-1.json"}},
    }
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: evidence_dir)
    async with TestClient(TestServer(app)) as configured:
        _, _, html = await get(configured, "/ui/main")
    assert "not configured" not in html
    assert "42.0 s" in html
    assert "<td>postgres-full</td><td>2026-01-01T02:00:00Z</td><td>9 h</td>" in html
    assert "<td>failover drill</td><td>quarter</td><td>2026-04-01</td>" in html
    assert "<td>failover-drill</td><td>2026-01-01T10:00:00Z</td><td>passed</td>" in html
    assert ("<td>RTO</td><td>240.0 min</td><td>6.9 s</td><td>yes</td>"
            "<td>drills/sandbox-drill-1.json</td>") in html


async def test_secrets_are_redacted_and_markup_from_the_status_is_escaped(
    evidence_dir: Path,
) -> None:
    controller = FakeController()
    controller.status_payload = {**page_status(),
                                 "verdict": '<script>alert("pwned")</script>',
                                 "node": "<img src=x onerror=alert(1)>"}
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: evidence_dir)
    async with TestClient(TestServer(app)) as test_client:
        _, _, html = await get(test_client, "/")
        _, _, svg = await get(test_client, "/ui/timeline/failover/fo-1.svg")
    assert "hunter2-secret" not in html
    assert "watchdog:***@db.internal" in html
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert "hunter2-secret" not in svg


async def test_the_page_loads_nothing_from_elsewhere_and_says_so_in_its_policy(
    client: TestClient[Any, Any],
) -> None:
    async with client.get("/") as response:
        policy = response.headers["Content-Security-Policy"]
        html = await response.text()
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links, html
    assert all(link.startswith("/") and not link.startswith("//") for link in links), links
    for asset, kind in (("/ui/page.css", "text/css"), ("/ui/page.js", "text/javascript"),
                        ("/ui/icon.svg", "image/svg+xml")):
        status, content_type, text = await get(client, asset)
        assert (status, content_type) == (200, kind)
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text


async def test_a_runs_timeline_is_served_as_svg_by_kind_and_run_id(
    client: TestClient[Any, Any],
) -> None:
    status, content_type, svg = await get(client, "/ui/timeline/failover/fo-1.svg")
    assert (status, content_type) == (200, "image/svg+xml")
    assert svg.startswith("<svg ")
    assert 'data-label="promote"' in svg


@pytest.mark.parametrize("path", [
    "/ui/timeline/failover/..%2F..%2Foutside.svg",
    "/ui/timeline/failover/%2E%2E%2Foutside.svg",
    "/ui/timeline/failover/..%5Coutside.svg",
    "/ui/timeline/..%2Foutside/x.svg",
    "/ui/timeline/failover/../../outside.svg",
    "/ui/timeline/failover/.hidden.svg",
    "/ui/timeline/failover/fo-1.json",
    "/ui/timeline/failover/fo-1",
    "/ui/timeline/failover/linked-out.svg",
    "/ui/timeline/drills/fo-1.svg",
    "/ui/timeline/failover/fo-404.svg",
    "/ui/timeline/failover/%00.svg",
])
async def test_timeline_names_that_are_not_plain_run_ids_are_not_found(
    client: TestClient[Any, Any], evidence_dir: Path, path: str,
) -> None:
    outside = evidence_dir.parent
    document = failover_document("outside")
    (outside / "outside.json").write_text(json.dumps(document))
    (evidence_dir / "failover" / ".hidden.json").write_text(json.dumps(document))
    (evidence_dir / "failover" / "linked-out.json").symlink_to(outside / "outside.json")
    status, content_type, body = await get(client, path)
    assert status == 404, body
    assert content_type == "application/json"
    assert "<svg" not in body


async def test_without_an_evidence_directory_the_page_lists_no_runs() -> None:
    controller = FakeController()
    controller.status_payload = page_status()
    app = build_app(controller, metrics=Metrics(), token_file=None)
    async with TestClient(TestServer(app)) as test_client:
        status, _, html = await get(test_client, "/")
        svg_status, _, _ = await get(test_client, "/ui/timeline/failover/fo-1.svg")
    assert status == 200
    assert "no failover, failback or switchover evidence" in html
    assert svg_status == 404


async def test_new_evidence_shows_at_the_next_refresh(
    client: TestClient[Any, Any], evidence_dir: Path,
) -> None:
    _, _, before = await get(client, "/ui/main")
    assert "fo-3" not in before
    write_evidence(evidence_dir, "failover", "fo-3", failover_document("fo-3"))
    _, _, after = await get(client, "/ui/main")
    assert '<a href="/ui/timeline/failover/fo-3.svg">fo-3</a>' in after


async def test_an_evidence_directory_that_is_not_one_leaves_the_page_up(
    tmp_path: Path,
) -> None:
    controller = FakeController()
    controller.status_payload = page_status()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    blocked = not_a_directory / "evidence"  # below a file: nothing can be listed
    app = build_app(controller, metrics=Metrics(), token_file=None,
                    evidence_dir=lambda: blocked)
    async with TestClient(TestServer(app)) as test_client:
        status, _, html = await get(test_client, "/")
    assert status == 200
    assert "waiting for acknowledgement" in html
    assert "no failover, failback or switchover evidence" in html
