"""Where a restore may go: a configured scratch target, never the source server.

Refused: a name that is not in ``restore_targets``; a target whose port is the source
server's port on this host; a workdir inside the source's data directory or holding it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from agentaskit_dr.config import BackupConfig, RestoreTarget

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", ""}


class RestoreRefused(Exception):
    """The restore target is unknown or is the source server; the message says which."""


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES or host.startswith("/"):
        return True
    try:
        return host in {socket.gethostname(), socket.getfqdn()} or socket.gethostbyname(
            host).startswith("127.")
    except OSError:
        return False


def source_host_port(dsn: str | None) -> tuple[str, int] | None:
    if dsn is None:
        return None
    parts = urlsplit(dsn)
    return (parts.hostname or "", parts.port or 5432)


def restore_target(config: BackupConfig, name: str) -> RestoreTarget:
    """The target called ``name``, checked against the source's DSN."""
    if name not in config.restore_targets:
        known = ", ".join(sorted(config.restore_targets)) or "none configured"
        raise RestoreRefused(f"--target {name!r}: not a restore target in restore_targets "
                             f"(configured: {known})")
    target = config.restore_targets[name]
    source = source_host_port(config.postgresql.dsn)
    if source is not None and _is_local(source[0]) and source[1] == target.port:
        raise RestoreRefused(
            f"restore_targets.{name}.port: {target.port} is the source server's port "
            f"(postgresql.dsn): a restore target must never be the server it backs up")
    return target


def refuse_source_datadir(name: str, workdir: Path, source_datadir: str | None) -> None:
    """Refuse a workdir that is, holds or lies inside the source's data directory."""
    if not source_datadir:
        return
    data = Path(source_datadir).resolve()
    work = workdir.resolve()
    if work == data or data in work.parents or work in data.parents:
        raise RestoreRefused(
            f"restore_targets.{name}.workdir: {workdir} overlaps the source server's data "
            f"directory {source_datadir}: a restore target must never be the server it "
            "backs up")
