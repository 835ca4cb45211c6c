"""The sandbox's scratch space. The OS user and process helpers it shares with the
product live in :mod:`agentaskit_dr.local_servers.os_side`."""

from __future__ import annotations

import os
from pathlib import Path


def scratch_root() -> str | None:
    """tmpfs when there is one, else None (the default temp dir).

    Copying a cluster's ~1000 files takes about 1 s on this machine's ext4, 0.06 s on tmpfs.
    """
    shm = Path("/dev/shm")  # noqa: S108 - only a parent for mkdtemp, which is race-free
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
