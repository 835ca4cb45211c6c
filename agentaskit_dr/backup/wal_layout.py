"""Where WAL files live in the buckets and in the local spool (standard library only).

``wal-push``/``wal-fetch`` import this on every call PostgreSQL makes, so it must stay
free of heavy imports (no pydantic, no AWS SDK, no structlog).

Bucket layout: ``wal/<timeline>/<file name>``, where ``<timeline>`` is the first 8 hex
digits of the name: segments (``000000010000000A000000FF``), partial segments
(``<segment>.partial``), backup history files (``<segment>.00000028.backup``) and
timeline history files (``00000002.history``) all start with their timeline.
Each object is encrypted (:mod:`.crypto`) under its key as the object name.

Spool layout (``postgresql.wal.spool_dir``)::

    archiver.lock          flock held by the running archiver
    archiver.log           its JSON log
    push/<name>            a wal-push request: the absolute path of the file
    pushed/<name>.ok       the file is durable in the buckets ("size mtime_ns")
    pushed/<name>.error    the last attempt failed (the message)
    fetch/<name>           a wal-fetch request (empty)
    fetched/<name>         the decrypted, authenticated file, ready to move into pg_wal
    fetched/<name>.missing the archive does not hold it
    fetched/<name>.error   fetching failed (the message)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agentaskit_dr.atomic_file import write_atomically

#: The default spool directory (``postgresql.wal.spool_dir``).
DEFAULT_SPOOL = Path("/var/spool/agentaskit-dr/wal")
WAL_PREFIX = "wal/"
_WAL_NAME = re.compile(
    r"[0-9A-F]{8}(?:[0-9A-F]{16}(?:\.partial|\.[0-9A-F]{8}\.backup)?|\.history)"
)
_SEGMENT = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
#: Segments per log file id with the default 16 MiB segments.
SEGMENTS_PER_ID = 0x100


def is_wal_name(name: str) -> bool:
    """A file name PostgreSQL archives: a segment, partial, backup or history file."""
    return _WAL_NAME.fullmatch(name) is not None


def is_segment(name: str) -> bool:
    """A plain WAL segment name (24 hex digits)."""
    return _SEGMENT.fullmatch(name) is not None


def wal_key(name: str) -> str:
    """The bucket key (and encrypted object name) of the WAL file ``name``."""
    if not is_wal_name(name):
        raise ValueError(f"{name!r} is not a WAL file name PostgreSQL archives")
    return f"{WAL_PREFIX}{name[:8]}/{name}"


def next_segments(name: str, count: int) -> list[str]:
    """The ``count`` segment names after ``name`` on its timeline (16 MiB segments)."""
    match = _SEGMENT.fullmatch(name)
    if match is None:
        return []
    timeline, log, seg = (int(part, 16) for part in match.groups())
    position = log * SEGMENTS_PER_ID + seg
    return [
        f"{timeline:08X}{(p // SEGMENTS_PER_ID):08X}{(p % SEGMENTS_PER_ID):08X}"
        for p in range(position + 1, position + 1 + count)
    ]


class Spool:
    """The paths of one spool directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = root / "archiver.lock"
        self.log = root / "archiver.log"
        self.push = root / "push"
        self.pushed = root / "pushed"
        self.fetch = root / "fetch"
        self.fetched = root / "fetched"

    def make(self) -> None:
        """Create the directories (private to the user: fetched WAL is plaintext)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.root.stat()
        for path in (self.push, self.pushed, self.fetch, self.fetched):
            if not path.is_dir():
                path.mkdir(mode=0o700, exist_ok=True)
                if os.geteuid() == 0:  # an archiver run as root serves the spool's owner
                    os.chown(path, owner.st_uid, owner.st_gid)

    def ok(self, name: str) -> Path:
        return self.pushed / f"{name}.ok"

    def push_error(self, name: str) -> Path:
        return self.pushed / f"{name}.error"

    def missing(self, name: str) -> Path:
        return self.fetched / f"{name}.missing"

    def fetch_error(self, name: str) -> Path:
        return self.fetched / f"{name}.error"


def write_atomic(path: Path, data: bytes, *, owner_of: Path | None = None) -> None:
    """Write a spool file whole or not at all (:func:`write_atomically`, not fsynced: a
    marker lost in a crash repeats an idempotent push or fetch). When we run as root (a
    test, or an archiver started as root), ``owner_of``'s owner gets the file so the
    server's user can read and remove it."""
    write_atomically(path, data, owner_of=owner_of, durable=False)


def stat_signature(path: Path) -> str:
    """What an ``.ok`` file records of the file it confirms: size and modification time."""
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"
