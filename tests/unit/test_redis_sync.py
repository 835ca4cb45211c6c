"""The replication-protocol reader against a scripted server on a loopback socket: both
transfer forms, keep-alive newlines, markers split across reads, and broken transfers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from agentaskit_dr.appstate.redis_sync import RedisSyncError, open_rdb_stream

MARK = b"m" * 39 + b"!"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, rdb_only: bytes = b"+OK\r\n") -> list[bytes]:
    """Answer REPLCONF capa, REPLCONF rdb-only and take SYNC; the commands seen."""
    seen = []
    for answer in (b"+OK\r\n", rdb_only, None):
        count = int((await reader.readline())[1:])
        parts = []
        for _ in range(count):
            await reader.readline()
            parts.append((await reader.readline()).strip())
        seen.append(b" ".join(parts))
        if answer is not None:
            writer.write(answer)
    return seen


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()


async def fetch(url: str) -> tuple[bytes, bool]:
    stream = await open_rdb_stream(url)
    return b"".join([data async for data in stream.chunks()]), stream.diskless


async def test_disk_form_after_keepalive_newlines_reads_exactly_the_announced_bytes() -> None:
    payload = b"REDIS0010" + bytes(range(256)) * 300
    commands: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands.extend(await handshake(reader, writer))
        writer.write(b"\n\n\n$%d\r\n" % len(payload) + payload + b"*1\r\n$4\r\nPING\r\n")

    async with scripted(script) as url:
        assert await fetch(url) == (payload, False)
    assert commands == [b"REPLCONF capa eof", b"REPLCONF rdb-only 1", b"SYNC"]


@pytest.mark.parametrize("piece", [1, 7, 39, 41, 4096])
async def test_diskless_form_ends_at_its_marker_wherever_the_reads_split_it(piece: int) -> None:
    payload = b"REDIS0010" + b"x" * 5000 + MARK[:20]  # a near-miss of the marker inside

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        data = b"$EOF:" + MARK + b"\r\n" + payload + MARK
        for start in range(0, len(data), piece):
            writer.write(data[start:start + piece])
            await writer.drain()

    async with scripted(script) as url:
        assert await fetch(url) == (payload, True)


async def test_an_old_server_refusing_rdb_only_still_gives_the_rdb() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer, rdb_only=b"-ERR Unrecognized REPLCONF option\r\n")
        writer.write(b"$3\r\nabc")

    async with scripted(script) as url:
        assert await fetch(url) == (b"abc", False)


async def test_a_transfer_cut_short_is_an_error_with_the_bytes_received() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(b"$1000\r\n" + b"y" * 600)

    async with scripted(script) as url:
        with pytest.raises(RedisSyncError, match="at 600 of 1000 bytes"):
            await fetch(url)


async def test_a_diskless_transfer_without_its_marker_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(b"$EOF:" + MARK + b"\r\n" + b"z" * 300)

    async with scripted(script) as url:
        with pytest.raises(RedisSyncError, match="without its end marker"):
            await fetch(url)


async def test_a_refused_sync_is_named() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(b"-NOPERM this user has no permissions to run the 'sync' command\r\n")

    async with scripted(script) as url:
        with pytest.raises(RedisSyncError, match="SYNC: NOPERM"):
            await fetch(url)
