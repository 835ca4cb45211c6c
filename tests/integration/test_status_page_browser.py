"""The status page of a real daemon that has just failed over, in a real headless Chromium.

Two ``agentaskit-dr run`` processes over a real PostgreSQL pair and Redis (``daemon_harness``);
the primary is killed, the lock holder promotes the replica and writes its evidence. Then
Chromium (Debian's package, installed by ``scripts/test.sh``) loads ``GET /`` from that
daemon: the page must render with no console error, no failed load and no CSP violation,
show the failover and its timeline picture, and refresh itself once; once the daemon
stops, the page says so and keeps its last answer. The screenshot is kept
under ``tmp/artefacts/`` at the repository root (its path is printed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.sandbox.postgres import PostgresPair
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration.browser import Browser, Problem
from tests.integration.daemon_harness import THRESHOLD, Watchdog, WatchdogFleet, is_event

pytestmark = pytest.mark.integration

ARTEFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artefacts"
#: Bound on the kill → promotion → evidence written sequence (seconds).
FAILOVER_TIMEOUT = THRESHOLD + 20
#: Bound on the page's first refresh (it refreshes every 5 s).
REFRESH_TIMEOUT = 20


@pytest.fixture
def fleet(pg_pair: PostgresPair, redis_server: RedisServer, tmp_path: Path) -> Iterator[
    WatchdogFleet
]:
    with WatchdogFleet(pg_pair, redis_server, tmp_path / "watchdogs") as started:
        yield started


def api_url(dog: Watchdog) -> str:
    listen = yaml.safe_load(dog.config.read_text())["api"]["listen"]
    return f"http://{listen}/"


@dataclass(frozen=True)
class Seen:
    """What the browser saw of the page, and the errors the page reported."""

    phase: str
    text: str
    pictures: list[Any]
    links: list[str]
    screenshot: bytes
    problems: list[Problem]
    #: After the daemon stopped: the page's notice, and what ``main`` still showed.
    lost_notice: str
    text_when_lost: str


async def look_at(url: str, profile: Path, stop_daemon: Callable[[], object]) -> Seen:
    """Load ``url`` in Chromium, wait for the page's first refresh and read it; then stop
    the daemon and read the page again once it says it lost the daemon."""
    async with Browser.launch(profile) as browser, browser.open(url) as page:
        await page.wait_for("Number(document.body.dataset.refreshes || 0) >= 1",
                            within=REFRESH_TIMEOUT)
        seen = {
            "phase": await page.evaluate("document.getElementById('phase').textContent"),
            "text": await page.evaluate("document.getElementById('main').innerText"),
            "pictures": await page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
                " i.naturalWidth])"),
            "links": await page.evaluate(
                "Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))"),
            "screenshot": await page.screenshot(),
            "problems": list(page.problems),
        }
        await asyncio.to_thread(stop_daemon)
        await page.wait_for("!document.getElementById('connection').hidden",
                            within=REFRESH_TIMEOUT)
        return Seen(
            **seen,
            lost_notice=await page.evaluate(
                "document.getElementById('connection').textContent"),
            text_when_lost=await page.evaluate("document.getElementById('main').innerText"),
        )


def test_the_status_page_of_a_daemon_that_failed_over_renders_cleanly_in_chromium(
    fleet: WatchdogFleet, pg_pair: PostgresPair, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet.start_pair()
    holder = fleet.wait_ready()
    pg_pair.primary.kill()
    # The review is drafted last, after the evidence file and the picture.
    written = fleet.wait_for(is_event("incident_review_drafted", kind="failover"),
                             FAILOVER_TIMEOUT, what="the failover's review drafted",
                             dogs=[holder])
    run_id = written["run_id"]
    evidence = fleet.workdir / "evidence" / "TEST" / "dr" / "failover" / "failover"
    assert (evidence / f"{run_id}.svg").is_file(), sorted(evidence.iterdir())
    assert f"![Timeline of {run_id}]({run_id}.svg)" in (evidence / f"{run_id}.md").read_text()

    seen = asyncio.run(look_at(api_url(holder), tmp_path / "chromium-profile",
                               lambda: fleet.stop(holder)))
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / f"status-page-after-failover-{time.strftime('%Y%m%dT%H%M%SZ')}.png"
    shot.write_bytes(seen.screenshot)
    with capsys.disabled():
        print(f"\nstatus page screenshot: {shot}")

    assert seen.problems == [], seen.problems
    assert seen.phase == "failed_over"
    assert run_id in seen.text
    assert "us-east-1" in seen.text
    assert "not configured" in seen.text  # WAL archive lag, backups, DR testing: none yet
    picture = f"/ui/timeline/failover/{run_id}.svg"
    assert seen.pictures, "no picture on the page"
    assert seen.pictures[0][:2] == [picture, True], seen.pictures
    assert seen.pictures[0][2] > 0, "the timeline picture did not load"
    assert picture in seen.links
    assert all(link.startswith("/") for link in seen.links), seen.links
    assert len(seen.screenshot) > 10_000
    # The daemon gone, the page says so and keeps its last answer on screen.
    assert seen.lost_notice.startswith("Cannot reach this watchdog since "), seen.lost_notice
    assert run_id in seen.text_when_lost
