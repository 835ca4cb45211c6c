"""The RDB of a Redis server over the replication protocol, as ``redis-cli --rdb`` takes it.

We connect as a replica would: ``AUTH`` if needed, ``REPLCONF capa eof`` (we can read the
diskless form), ``REPLCONF rdb-only 1`` (Redis >= 7: send the RDB and nothing after it;
older servers answer an error, which is fine: we close after the payload) and ``SYNC``.
The server forks and writes the snapshot (a BGSAVE): it never blocks. It may send bare
newlines while it prepares, then either

* ``$<length>\\r\\n`` followed by exactly that many bytes (disk-based), or
* ``$EOF:<40 random bytes>\\r\\n`` followed by the payload and the same 40 bytes
  (diskless: the length is not known in advance).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

#: Bytes read from the socket at once.
READ_SIZE = 1 << 16
EOF_MARK_SIZE = 40


class RedisSyncError(Exception):
    """The server refused or broke the transfer; the message says where."""


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def _reply(reader: asyncio.StreamReader, what: str) -> bytes:
    line = await reader.readline()
    if not line:
        raise RedisSyncError(f"the server closed the connection after {what}")
    if line.startswith(b"-"):
        raise RedisSyncError(f"{what}: {line[1:].strip().decode(errors='replace')}")
    return line.strip()


class RdbStream:
    """An open replication transfer: ``async for data in stream.chunks()`` gives the RDB."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, length: int | None, eof_mark: bytes | None) -> None:
        self._reader = reader
        self._writer = writer
        self.length = length
        """The payload's size for the disk-based form; None for the diskless form."""
        self.eof_mark = eof_mark
        self.received = 0

    @property
    def diskless(self) -> bool:
        return self.eof_mark is not None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self.eof_mark is None:
                async for data in self._counted():
                    yield data
            else:
                async for data in self._until_mark(self.eof_mark):
                    yield data
        finally:
            await self.close()

    async def _counted(self) -> AsyncIterator[bytes]:
        assert self.length is not None
        while self.received < self.length:
            data = await self._reader.read(min(READ_SIZE, self.length - self.received))
            if not data:
                raise RedisSyncError(
                    f"the server closed the transfer at {self.received} of {self.length} bytes")
            self.received += len(data)
            yield data

    async def _until_mark(self, mark: bytes) -> AsyncIterator[bytes]:
        # Hold back the last 40 bytes seen: they may be the end marker.
        held = b""
        while True:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise RedisSyncError(
                    f"the server closed the diskless transfer after {self.received} bytes "
                    "without its end marker")
            held += data
            if held.endswith(mark):
                payload = held[:-len(mark)]
                self.received += len(payload)
                if payload:
                    yield payload
                return
            if len(held) > len(mark):
                payload, held = held[:-len(mark)], held[-len(mark):]
                self.received += len(payload)
                yield payload

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()


async def open_rdb_stream(url: str, password: str | None = None, *,
                          connect_timeout: float = 10.0,
                          prepare_timeout: float = 300.0) -> RdbStream:
    """Connect to ``url`` (``redis://[user@]host:port``) and start the transfer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 20), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise RedisSyncError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
    try:
        if password is not None:
            user = unquote(parts.username) if parts.username else None
            writer.write(_command("AUTH", user, password) if user else _command("AUTH", password))
            await _reply(reader, "AUTH")
        writer.write(_command("REPLCONF", "capa", "eof"))
        await _reply(reader, "REPLCONF capa eof")
        writer.write(_command("REPLCONF", "rdb-only", "1"))
        try:
            await _reply(reader, "REPLCONF rdb-only")
        except RedisSyncError as exc:
            if "closed" in str(exc):
                raise
        writer.write(_command("SYNC"))
        await writer.drain()
        header = await asyncio.wait_for(_bulk_header(reader), prepare_timeout)
    except BaseException:
        writer.close()
        raise
    if header.startswith(b"EOF:"):
        mark = header[4:]
        if len(mark) != EOF_MARK_SIZE:
            writer.close()
            raise RedisSyncError(f"SYNC: an end marker of {len(mark)} bytes, not 40")
        return RdbStream(reader, writer, length=None, eof_mark=mark)
    try:
        length = int(header)
    except ValueError:
        writer.close()
        raise RedisSyncError(f"SYNC: unexpected answer {header[:60]!r}") from None
    return RdbStream(reader, writer, length=length, eof_mark=None)


async def _bulk_header(reader: asyncio.StreamReader) -> bytes:
    """The ``$...`` line after SYNC, skipping the newlines a preparing server sends."""
    while True:
        line = await reader.readline()
        if not line:
            raise RedisSyncError("the server closed the connection after SYNC")
        line = line.strip()
        if not line:
            continue
        if line.startswith(b"-"):
            raise RedisSyncError(f"SYNC: {line[1:].decode(errors='replace')}")
        if not line.startswith(b"$"):
            raise RedisSyncError(f"SYNC: unexpected answer {line[:60]!r}")
        return line[1:]
