"""Each component's collector, file check and retention, read from the backup config."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.appstate.jobs import Collector, FileCheck
from agentaskit_dr.appstate.record import Component

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig


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
