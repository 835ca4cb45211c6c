"""Write a file so that readers see the old content or the new one, whole: never half.

The one way this project replaces a file (evidence, incident reviews, the schedule state,
an exercise, PostgreSQL's settings files and signal files, the WAL spool's markers): a
temporary file in the same directory, written, renamed over the target. ``durable``
also fsyncs the file before the rename and the directory after it, so the rename
survives a crash of the host; the WAL spool's markers skip that (a marker lost in a crash
only repeats an idempotent push or fetch, and an fsync per segment would slow the
archive).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, *, mode: int = 0o644,
                     owner_of: Path | None = None, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), file mode ``mode``.

    ``owner_of``: when we run as root, the file gets that path's owner and group (a file
    in a data directory or spool that the server's OS user must read and remove).
    Raises ``OSError`` with nothing left behind: no temporary file, ``path`` untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        tmp.chmod(mode)  # mkstemp makes it 0600
        if owner_of is not None and os.geteuid() == 0:
            owner = owner_of.stat()
            os.chown(tmp, owner.st_uid, owner.st_gid)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        directory_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
