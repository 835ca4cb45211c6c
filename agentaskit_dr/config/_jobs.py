"""``backup:`` in the watchdog config: the backup jobs the watchdogs schedule.

With it, every watchdog (not a witness) runs the scheduled jobs of the named backup
config; a job lease in the lock store makes exactly one of them run each due job
(``agentaskit_dr.runtime.jobs``, docs/backups.md "Scheduled in the daemon").
"""

from __future__ import annotations

from typing import Self

from pydantic import model_validator

from agentaskit_dr.config._backup import Cron
from agentaskit_dr.config._base import ConfigModel, ConfigPath, PositiveDuration, problem_error

#: A job's processes must be gone within the daemon's stop grace period (5 s).
MAX_STOP_GRACE = 4.0


class BackupJobsConfig(ConfigModel):
    """Which backup config the daemon schedules, and the few knobs of its scheduler."""

    config: ConfigPath
    """The backup YAML (``configs/backup.yaml``) whose jobs run on their schedules."""
    retention_schedule: Cron = "30 1 * * *"
    """Cron (UTC) of the retention job (``backup prune`` and ``appstate prune``): daily."""
    configs_every: PositiveDuration = 300.0
    """How often the ``on-change`` configs job looks for a change (an unchanged look makes
    no backup)."""
    lease_ttl: PositiveDuration = 60.0
    """A job's lease in the lock store lives this long unless renewed (every third)."""
    stop_grace: PositiveDuration = 3.0
    """On SIGTERM a job's processes get this long after SIGTERM before SIGKILL."""

    @model_validator(mode="after")
    def _config_is_a_file(self) -> Self:
        if not self.config.is_file():
            raise problem_error("config", "must be an existing backup YAML file",
                                got=repr(str(self.config)))
        if self.lease_ttl < 3:
            raise problem_error("lease_ttl", "must be at least 3s (renewed every third)",
                                got=repr(self.lease_ttl))
        if self.stop_grace > MAX_STOP_GRACE:
            raise problem_error("stop_grace", f"must be at most {MAX_STOP_GRACE:g}s: the "
                                "daemon's whole stop grace period is 5s", got=repr(self.stop_grace))
        return self
