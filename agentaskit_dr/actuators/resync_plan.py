"""What ``sync-primary`` is given and what it reports: the plan resolved from the config by
its caller, the result (JSON-able for a journal or an evidence file), and its errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agentaskit_dr.actuators.pg_control import ServerControl


class ResyncFailed(Exception):
    """The old primary is not a streaming standby; the message says where it stopped."""


class ResyncRefused(ResyncFailed):
    """Nothing was changed: the target is the current primary, or there is none to follow."""


@dataclass(frozen=True)
class LibpqSource:
    """A libpq connection string for a binary (no password in it) and the password, if any."""

    conninfo: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ResyncPlan:
    """What ``sync-primary`` needs, resolved from the config by its caller.

    ``target_dsn`` / ``primary_dsn``: asyncpg DSNs (password included) of the old and the
    new primary. ``primary_conninfo``: what the standby streams with. ``rewind_source``
    (a superuser-like role) and ``clone_source`` (a REPLICATION role): the new primary for
    pg_rewind and pg_basebackup. ``primary_elsewhere``: why the target, if it runs as a
    primary, is not the cluster's primary (None: it may be, refuse). ``primary_here``: why
    the target is the cluster's primary (the cluster record names it), refused even while
    it is down; None when nothing says so. ``standby_name``: the ``application_name`` in
    ``primary_conninfo``, to find the standby in the primary's ``pg_stat_replication``.
    """

    region: str
    control: ServerControl
    target_dsn: str = field(repr=False)  # password inside: never printed
    primary_region: str
    primary_dsn: str = field(repr=False)
    primary_conninfo: str
    rewind_source: LibpqSource
    clone_source: LibpqSource
    timeout: float
    io_timeout: float
    primary_elsewhere: Callable[[], Awaitable[str | None]]
    primary_here: Callable[[], Awaitable[str | None]]
    standby_name: str | None = None


@dataclass
class ResyncResult:
    """How the old primary rejoined: JSON-able (``to_json``) for a journal or evidence file.

    ``method`` "rewind" or "reclone" (``reclone_reason``: pg_rewind's last words);
    ``phases``: seconds per phase, in order; ``primary_lsn``: the new primary's LSN that
    ``replay_lsn`` reached with ``lag_bytes`` 0; ``kept_aside``: the old data directory
    after a re-clone, kept (it holds the only copy of the diverged transactions);
    ``confirmed_by``: the view that showed it streaming with lag 0 (``pg_stat_wal_receiver``
    on the standby, or ``pg_stat_replication`` on the primary when the standby takes no
    session). ``fork_loss``: the WAL and the commits the old primary had beyond the fork,
    read before the resync (``resync_loss.ForkLoss``): the failover's measured RPO.
    """

    region: str
    primary_region: str
    method: str = "rewind"
    reclone_reason: str | None = None
    rewind_note: str | None = None
    restore_target_wal: bool = False
    stopped: str | None = None
    port: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    primary_lsn: str = ""
    replay_lsn: str = ""
    lag_bytes: int | None = None
    timeline: int | None = None
    kept_aside: str | None = None
    confirmed_by: str | None = None
    fork_loss: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict (str, int, float, None) for ``json.dumps``."""
        return asdict(self)
