"""Each component's collector, file check and retention, read from the backup config."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agentaskit_dr.appstate.jobs import Collector, FileCheck, run_backup
from agentaskit_dr.appstate.record import Component

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig

log = structlog.get_logger(__name__)


def collector(config: BackupConfig, component: Component, *, config_file: Path | None = None
              ) -> Collector:
    """How ``appstate backup COMPONENT`` gathers and uploads its objects."""
    state = config.application_state
    if component == "redis":
        from agentaskit_dr.appstate.redis_job import collect_redis

        return partial(collect_redis, settings=state.redis)
    if component == "vault":
        from agentaskit_dr.appstate.vault import collect_vault

        return partial(collect_vault, settings=state.secrets)
    from agentaskit_dr.appstate.configs import collect_configs

    return partial(collect_configs, settings=state.configs, config_file=config_file)


def file_check(component: Component) -> FileCheck:
    """The checks ``appstate verify COMPONENT`` runs on downloaded copies."""
    if component == "redis":
        from agentaskit_dr.appstate.redis_job import check_redis_files

        return check_redis_files
    if component == "vault":
        from agentaskit_dr.appstate.vault import check_vault_files

        return check_vault_files
    from agentaskit_dr.appstate.configs import check_configs_files

    return check_configs_files


def retention(config: BackupConfig, component: Component) -> float:
    state = config.application_state
    return {"redis": state.redis, "vault": state.secrets,
            "configs": state.configs}[component].retention


async def watch_configs(config: BackupConfig, *, config_file: Path | None, evidence_dir: Path,
                        interval: float, stop: asyncio.Event) -> None:
    """Back up the config files now and after each change, looking every ``interval``
    seconds until ``stop`` is set: the daemon's on-change job, and ``--watch``. A look
    that finds nothing new leaves no evidence; a failed one is logged (its evidence is
    written) and the next look tries again."""
    collect = collector(config, "configs", config_file=config_file)
    while not stop.is_set():
        try:
            await run_backup(config, "configs", collect, evidence_dir=evidence_dir,
                             record_unchanged=False)
        except Exception as exc:  # noqa: BLE001 - a watcher outlives one bad look
            log.warning("appstate_configs_watch_failed", reason=str(exc) or type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
