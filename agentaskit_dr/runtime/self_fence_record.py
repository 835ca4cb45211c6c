"""The self-fence, remembered across restarts (docs/architecture.md, "Self-fence lifecycle").

The core keeps the self-fence in memory (``WatchState.self_fenced``); a watchdog that dies
while its fence is in force (crash, OOM kill, its service manager's liveness kill, an
upgrade) would come back knowing nothing of it, and nothing would ever lift the fence:
no writable primary, for good (chaos seed 9103). So the engine writes
``<evidence_dir>/state/self-fence.json`` when the core fences (before the fence runs: a
crash mid-fence still leaves it) and removes it when ``self_fenced`` goes False (lifted,
acknowledged, a fence that failed and will be tried again). At start a record naming this
watchdog's region, while that region is the primary's, makes the initial state
self-fenced again with the recorded fence epoch; any other record is removed, and why is
said. A record that cannot be written is an error in the log, never a fence not done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.atomic_file import write_atomically
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Command, FenceOwnPrimary, WatchState
from agentaskit_dr.core.self_fence import restored

log = structlog.get_logger(__name__)

STATE_DIR = "state"
RECORD_FILE = "self-fence.json"


def record_path(evidence_dir: Path) -> Path:
    """The self-fence record under ``evidence_dir``."""
    return evidence_dir / STATE_DIR / RECORD_FILE


def save(config: WatchdogConfig, state: WatchState, reason: str) -> None:
    """Write the record of the self-fence ``state`` holds; a failure is logged only."""
    path = record_path(config.evidence_dir)
    record = {"region": config.region, "fence_epoch": state.self_fence_epoch,
              "fenced_at": time.time(), "reason": reason}
    try:
        write_atomically(path, json.dumps(record, indent=2) + "\n", mode=0o600)
    except OSError as exc:  # fencing is the safe direction: it goes ahead unrecorded
        log.error("self_fence_record_not_saved", path=str(path), reason=str(exc),  # noqa: TRY400
                  consequence="a restart of this watchdog forgets the fence")
        return
    log.info("self_fence_recorded", path=str(path), **record)


def remove(config: WatchdogConfig, why: str) -> None:
    """Remove the record (if any); ``why`` is said."""
    path = record_path(config.evidence_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.error("self_fence_record_not_removed", path=str(path), reason=str(exc))  # noqa: TRY400
        return
    log.info("self_fence_record_removed", path=str(path), why=why)


def load(config: WatchdogConfig) -> dict[str, Any] | None:
    """The record, or None when there is none (or it is unreadable: said, and removed)."""
    path = record_path(config.evidence_dir)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("self_fence_record_unreadable", path=str(path), reason=str(exc))  # noqa: TRY400
        return None
    if not isinstance(record, dict) or not isinstance(record.get("region"), str) or not (
            record.get("fence_epoch") is None or isinstance(record.get("fence_epoch"), int)):
        log.error("self_fence_record_unreadable", path=str(path), reason="not a record")
        return None
    return record


def persist(config: WatchdogConfig, before: WatchState, after: WatchState,
            commands: Sequence[Command]) -> None:
    """Follow one transition of the core: record a fence issued, forget one gone."""
    if after.self_fenced and not before.self_fenced:
        reason = next((c.reason for c in commands if isinstance(c, FenceOwnPrimary)),
                      after.verdict)
        save(config, after, reason)
    elif before.self_fenced and not after.self_fenced:
        remove(config, after.verdict)


def restore(config: WatchdogConfig, state: WatchState, now: float) -> WatchState:
    """The initial state: self-fenced again when the record says this watchdog fenced the
    primary's region's server; otherwise ``state``, and any record removed."""
    record = load(config)
    if record is None:
        return state
    if config.role != "watchdog" or record["region"] != config.region:
        remove(config, f"the record names {record['region']}, this {config.role} watches "
                       f"{config.region}")
        return state
    if config.region != config.primary_region:
        remove(config, f"{config.region} is no longer the primary's region "
                       f"({config.primary_region} is)")
        return state
    log.critical("self_fence_restored", record=record, path=str(record_path(config.evidence_dir)),
                 reason="this watchdog fenced its primary before it restarted; the fence "
                        "stays until the lift conditions hold for thresholds.recovery")
    return restored(state, record["fence_epoch"], now)
