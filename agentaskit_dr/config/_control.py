"""``regions.<r>.database.control``: this watchdog runs on that server's host and may control it.

Kept apart from ``_models`` so that file stays readable. The same key serves the hard
fence (stop the server, make any restart come back in recovery), the start gate and
failback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import ConfigModel, NonBlank, PositiveDuration


def _absolute(path: Path | None) -> Path | None:
    if path is not None and not path.is_absolute():
        raise PydanticCustomError("absolute_path", "must be an absolute path")
    return path


class DatabaseControlConfig(ConfigModel):
    """The local PostgreSQL server this watchdog may stop, and how.

    Present only on the host that runs the server: the watchdog then fences by stopping
    the server and writing ``standby.signal`` + ``primary_conninfo`` into its data
    directory, and ``start-gate`` can refuse (or demote) a start as primary.
    """

    data_directory: Path
    """The server's data directory (absolute), the ``-D`` of ``pg_ctl``."""
    bin_dir: Path | None = None
    """Directory holding ``pg_ctl`` (absolute); None asks ``pg_config --bindir``."""
    os_user: NonBlank = "postgres"
    """The OS user that owns the data directory and runs the server; ``pg_ctl`` runs as it
    (the watchdog must run as this user or as root)."""
    stop_timeout: PositiveDuration = 10.0
    """Bound on each way of stopping the server (fast, then immediate); past both the
    postmaster and its children are killed (SIGKILL)."""

    @field_validator("data_directory", "bin_dir")
    @classmethod
    def _absolute_path(cls, path: Path | None) -> Path | None:
        return _absolute(path)


class StartGateConfig(ConfigModel):
    """``start_gate``: how ``agentaskit-dr start-gate`` decides when nothing answers."""

    when_unconfirmed: Literal["refuse", "allow"] = "refuse"
    """When neither the lock store, nor the other region's server, nor any peer watchdog
    or the witness answers, nothing confirms that the primary is not elsewhere: ``refuse``
    the start as primary (the default: an old primary cut off from everything may have
    been failed over), or ``allow`` it (the gate's behaviour before: a cold start of a
    lone region whose lock store is down)."""
