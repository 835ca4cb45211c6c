"""The failover drill row: run the drill and record its result in the schedule.

With ``drills.failover.config`` (a drill environment's watchdog config), the drill is a
planned switchover to the other region and back through the running watchdogs' API
(``staging_drill``). Without it, the sandbox drill runs (failover, then failback home)
and the recorded result says it was the sandbox. A drill config with
``allow_production: true`` is production: the drill is refused (recorded as failed, so it
is an alert) while that cluster is failing over, failed over, paused or not healthy.

Drill evidence goes to ``<evidence_dir>/<evidence_layout.drills>`` (the plan's
``operational_audit/dr_drills/``). With ``as_json`` (the daemon's scheduled job) stdout is
one JSON answer: outcome, result, evidence, and ``recorded`` (the schedule's state file:
the job runner then does not record the run a second time).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.drtesting.records import record_run
from agentaskit_dr.drtesting.schedule import RecordedRun
from agentaskit_dr.runtime.evidence_layout import drill_root

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

def drill_result(figures: dict[str, Any], failback: dict[str, Any], *,
                 exit_code: int) -> tuple[bool, str]:
    """Whether the sandbox drill passed, and the schedule's one-line result for it."""
    passed = exit_code == 0
    rto = figures.get("kill_to_writable")
    return passed, (f"sandbox drill {'passed' if passed else 'FAILED'}: promoted "
                    f"{figures.get('promotions')} time(s), writable {rto}s after the kill; "
                    f"failback {failback.get('outcome', 'not run')}")


def drills_dir(config: BackupConfig | None, evidence_dir: Path) -> Path:
    """Where drill evidence is kept: ``evidence_layout.drills`` under ``evidence_dir``."""
    from agentaskit_dr.config import EvidenceLayout

    layout = config.evidence_layout if config is not None else EvidenceLayout()
    return evidence_dir / layout.drills


def run_and_record(config: BackupConfig | None, evidence_dir: Path,
                   workdir: Path | None, *, as_json: bool = False) -> int:
    """The drill in ``drills.failover.config``'s environment, else the sandbox drill with
    failback; recorded in the schedule; its exit code."""
    if config is not None and config.drills.failover.config is not None:
        return _staging(config, evidence_dir, as_json=as_json)
    return run_sandbox_and_record(evidence_dir, workdir, drills=drills_dir(config, evidence_dir),
                                  as_json=as_json)


def run_sandbox_and_record(evidence_dir: Path, workdir: Path | None, *,
                           threshold: str = "6s", interval: str = "0.5s",
                           failback: bool = True, drills: Path | None = None,
                           as_json: bool = False) -> int:
    """Run the sandbox drill, keep its evidence, record it; its exit code."""
    from agentaskit_dr.sandbox.drill import run_drill

    base = workdir or Path(tempfile.mkdtemp(prefix="agentaskit-drill-"))
    try:
        # With --json, stdout is the answer: the sandbox's report goes to stderr.
        with _stdout_to_stderr() if as_json else contextlib.nullcontext():
            code = run_drill(threshold=threshold, interval=interval, workdir=base,
                             failback=failback)
        found = sorted(drill_root(base / "evidence").glob("sandbox-drill-*.json"))
        now = time.time()
        if not found:
            result = "sandbox drill FAILED before writing its evidence"
            state = record_run(evidence_dir, "failover_drill", RecordedRun(now, False, result),
                               now=now)
            _answer(as_json, "failed", result, None, state)
            return code or 1
        target = (drills or drills_dir(None, evidence_dir)) / found[-1].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[-1], target)
        document = json.loads(target.read_text())
        passed, result = drill_result(document.get("figures", {}),
                                      document.get("failback") or {}, exit_code=code)
        state = record_run(evidence_dir, "failover_drill",
                           RecordedRun(now, passed, result, str(target)), now=now)
        _answer(as_json, "passed" if passed else "failed", result, target, state,
                text=f"Recorded in the DR testing schedule: {result}\n"
                     f"Drill evidence kept: {target}")
        return code
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr, file descriptor 1 included (the sandbox's processes and its
    report write there), then restore it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _answer(as_json: bool, outcome: str, result: str, evidence: Path | None, state: Path,
            *, text: str | None = None, figures: dict[str, Any] | None = None) -> None:
    """The command's answer on stdout: one JSON document with ``as_json``, else text."""
    if as_json:
        print(json.dumps({"kind": "failover-drill", "outcome": outcome, "result": result,
                          "evidence": None if evidence is None else str(evidence),
                          "recorded": str(state), "figures": figures}, indent=2))
        return
    if figures is not None:
        print(json.dumps(figures, indent=2))
    print(text or f"Recorded in the DR testing schedule: {result}")


def _staging(config: BackupConfig, evidence_dir: Path, *, as_json: bool) -> int:
    """The switchover drill in ``drills.failover.config``'s environment, recorded."""
    import asyncio

    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.drtesting.staging_drill import api_urls, run_staging_drill

    drill_config = config.drills.failover
    assert drill_config.config is not None
    started = time.time()
    watchdog = load_or_explain(drill_config.config, load_config)
    problem = None
    if watchdog is None:
        problem = f"{drill_config.config}: not a valid watchdog config (see stderr)"
    elif watchdog.api.token_file is None:
        problem = (f"{drill_config.config}: api.token_file is not set: the drill needs the "
                   "operator token")
    if watchdog is None or watchdog.api.token_file is None:
        # Not run, and said so in the schedule: a drill that cannot start is an alert.
        result = f"switchover drill FAILED in {drill_config.config}: {problem}"
        now = time.time()
        state = record_run(evidence_dir, "failover_drill", RecordedRun(now, False, result),
                           now=now)
        print(f"agentaskit-dr drill-failover: {problem}", file=sys.stderr)
        _answer(as_json, "failed", result, None, state)
        return 2
    token = watchdog.api.token_file.read_text().strip()
    drill = asyncio.run(run_staging_drill(api_urls(watchdog), token, list(watchdog.regions),
                                          leg_timeout=drill_config.timeout,
                                          production=drill_config.allow_production))
    now = time.time()
    passed = drill.error is None
    figures = drill.as_dict()
    legs = ", ".join(f"to {leg.to} in {leg.seconds}s" for leg in drill.legs if leg.seconds)
    verdict = "REFUSED" if drill.refused else "FAILED"
    result = (f"switchover drill passed in {drill_config.config}: {legs}" if passed
              else f"switchover drill {verdict} in {drill_config.config}: {drill.error}")
    outcome = "passed" if passed else "refused" if drill.refused else "failed"
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = drills_dir(config, evidence_dir) / f"failover-drill-{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({
        "kind": "failover-drill", "environment": str(drill_config.config),
        "production": drill_config.allow_production,
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "finished_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
        "outcome": outcome, "result": result, "figures": figures,
    }, indent=2) + "\n")
    state = record_run(evidence_dir, "failover_drill",
                       RecordedRun(now, passed, result, str(target)), now=now)
    if not passed:
        print(f"agentaskit-dr drill-failover: {result}", file=sys.stderr)
    _answer(as_json, outcome, result, target, state, figures=figures,
            text=f"Recorded in the DR testing schedule: {result}\nDrill evidence: {target}")
    return 0 if passed else 1
