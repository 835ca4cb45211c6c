"""Pass pg_basebackup's tar stream on to the compressor, picking out its ``backup_manifest``.

The stream is a ustar archive: 512-byte headers, each member's data padded to a multiple of
512 bytes, two zero blocks at the end. Only the headers and the manifest are read into
Python; every other member's data moves from pipe to pipe inside the kernel (``splice``), so
the relay costs a few system calls per file, not a copy of the database, and the compressed
stream is never decompressed again to find the manifest (that second decompression cost a
whole core for the length of the backup).

A header whose checksum does not add up means the walk lost its place: the rest of the
stream is passed on untouched, and :attr:`TarRelay.problem` says why no manifest came.
"""

from __future__ import annotations

import os

BLOCK = 512
MANIFEST_MEMBER = "backup_manifest"
#: Bytes moved per splice call (a pipe holds 64 KiB by default; the kernel moves less).
_MOVE = 1 << 20


class TarRelay:
    """Copies one tar stream from ``source`` to ``sink`` (blocking file descriptors).

    Run :meth:`run` in a thread; afterwards :attr:`manifest` holds the ``backup_manifest``
    member (None if the stream had none), :attr:`relayed` the bytes passed on, and
    :attr:`finished` says whether every byte of ``source`` was passed on.
    """

    def __init__(self) -> None:
        self.manifest: bytes | None = None
        self.problem = ""
        self.relayed = 0
        self.members = 0
        self.finished = False

    def run(self, source: int, sink: int) -> None:
        """Relay until ``source`` ends or ``sink`` is closed by its reader; closes both."""
        try:
            self._walk(source, sink)
            self.finished = True
        except BrokenPipeError:
            self.problem = "the compressor stopped reading"
        except OSError as exc:
            self.problem = f"the relay failed: {exc}"
        finally:
            os.close(sink)
            os.close(source)

    def _walk(self, source: int, sink: int) -> None:
        while True:
            header = _read_exactly(source, BLOCK)
            if len(header) < BLOCK:
                self._write(sink, header)
                if header:
                    self.problem = "the stream ended inside a tar header"
                return
            self._write(sink, header)
            if header == bytes(BLOCK):  # end of archive: the rest is padding
                break
            try:
                name, size = parse_header(header)
            except ValueError as exc:
                self.problem = f"tar header {self.members + 1}: {exc}"
                break
            self.members += 1
            padded = -(-size // BLOCK) * BLOCK
            if name == MANIFEST_MEMBER:
                data = _read_exactly(source, padded)
                self._write(sink, data)
                if len(data) < padded:
                    self.problem = "the stream ended inside backup_manifest"
                    return
                self.manifest = data[:size]
            elif not self._move(source, sink, padded):
                self.problem = "the stream ended inside a tar member"
                return
        self._move(source, sink, None)

    def _write(self, sink: int, data: bytes) -> None:
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                done += os.write(sink, view[done:])
        self.relayed += len(data)

    def _move(self, source: int, sink: int, count: int | None) -> bool:
        """Move ``count`` bytes (None: until the end); False if the stream ended first."""
        left = count
        while left is None or left > 0:
            step = _MOVE if left is None else min(left, _MOVE)
            moved = _splice(source, sink, step)
            if moved == 0:
                return left is None
            self.relayed += moved
            if left is not None:
                left -= moved
        return True


def parse_header(block: bytes) -> tuple[str, int]:
    """A ustar header's member name and data size; ValueError if it is not one."""
    stored = block[148:156].split(b"\0", 1)[0].strip()
    try:
        expected = int(stored, 8)
    except ValueError:
        raise ValueError(f"checksum field {stored!r} is not octal") from None
    actual = sum(block[:148]) + sum(block[156:]) + 8 * ord(" ")
    if actual != expected:
        raise ValueError(f"checksum {actual} does not match the header's {expected}")
    field = block[124:136]
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        size = int.from_bytes(field[1:], "big")
    else:
        text = field.split(b"\0", 1)[0].strip()
        try:
            size = int(text or b"0", 8)
        except ValueError:
            raise ValueError(f"size field {text!r} is not octal") from None
    name = block[:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    return name.decode("utf-8", errors="replace"), size


def _read_exactly(source: int, count: int) -> bytes:
    parts: list[bytes] = []
    left = count
    while left > 0:
        piece = os.read(source, left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _splice(source: int, sink: int, count: int) -> int:
    splice = getattr(os, "splice", None)
    if splice is not None:
        moved: int = splice(source, sink, count)
        return moved
    data = os.read(source, count)  # not Linux: an ordinary copy
    done = 0
    while done < len(data):
        done += os.write(sink, data[done:])
    return len(data)
