"""Redis's own checkers and a scratch ``redis-server`` for restore tests.

``redis-check-rdb`` and ``redis-check-aof`` are the ``redis-server`` binary under another
name (it looks at ``argv[0]``): when they are not installed we link the server binary
under that name in a work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from agentaskit_dr.local_servers.redis_binary import redis_server_binary
from agentaskit_dr.local_servers.tcp import free_port

CHECK_TIMEOUT = 600.0


class RedisCheckFailed(Exception):
    """``redis-check-rdb``/``redis-check-aof`` rejected a file; the message names it."""


def redis_tool(name: str, workdir: Path) -> str:
    """The path of ``redis-check-rdb``/``redis-check-aof`` of the same version as the
    ``redis-server`` we run (it must read what that server writes): installed next to it,
    else that binary linked under the name in ``workdir``; with no server at all, the one
    on PATH."""
    try:
        server = Path(redis_server_binary())
    except RuntimeError:
        found = shutil.which(name)
        if found:
            return found
        raise RedisCheckFailed(f"{name} is not installed, nor redis-server") from None
    sibling = server.with_name(name)
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    link = workdir / name
    if not link.exists():
        link.symlink_to(server.resolve())
    return str(link)


async def _run(argv: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _last_lines(text: str, count: int = 2) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-300:]


async def check_rdb(path: Path, workdir: Path, *, name: str = "dump.rdb") -> str:
    """``redis-check-rdb`` on ``path``; its verdict (like "1000 keys read")."""
    code, out = await _run([redis_tool("redis-check-rdb", workdir), str(path)])
    if code != 0 or "RDB looks OK" not in out:
        raise RedisCheckFailed(f"redis-check-rdb rejects {name}: {_last_lines(out)}")
    keys = [line for line in out.splitlines() if "keys read" in line]
    return "OK" + (f", {keys[0].split(']', 1)[-1].strip()}" if keys else "")


async def check_aof(path: Path, workdir: Path, *, name: str) -> str:
    """``redis-check-aof`` on an AOF file or a Redis 7 manifest (it checks every part)."""
    code, out = await _run([redis_tool("redis-check-aof", workdir), str(path)])
    if code != 0 or "is valid" not in out:
        raise RedisCheckFailed(f"redis-check-aof rejects {name}: {_last_lines(out)}")
    return "OK"


class ScratchRedis:
    """A ``redis-server`` on a free loopback port that loads ``dump.rdb`` from ``directory``
    (or, with ``aof``, the AOF files there) and saves nothing; ``async with``."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        self.directory = directory
        self.aof = aof
        self.port = free_port()
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ScratchRedis:
        self._proc = await asyncio.create_subprocess_exec(
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--dbfilename", "dump.rdb", "--save", "",
            "--appendonly", "yes" if self.aof else "no", "--appendfsync", "no",
            "--auto-aof-rewrite-percentage", "0", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        await self._wait_ready()
        return self

    async def _wait_ready(self, limit: float = 120.0) -> None:
        # Loading a big RDB takes time: wait for PING to answer PONG, not for the port.
        import redis.asyncio as aioredis

        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0)
        try:
            while loop.time() < deadline:
                if self._proc.returncode is not None:
                    log = self.directory / "redis.log"
                    tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
                    raise RedisCheckFailed(f"the scratch redis-server exited: {tail.strip()}")
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise RedisCheckFailed(f"the scratch redis-server did not load within {limit:.0f}s")

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        if self._proc is not None:
            await self._proc.wait()


async def scan_sample(client: object, count: int) -> AsyncIterator[bytes]:
    """Up to ``count`` keys of the current database, in SCAN order."""
    import redis.asyncio as aioredis

    assert isinstance(client, aioredis.Redis)
    seen = 0
    async for key in client.scan_iter(count=200):
        yield key
        seen += 1
        if seen >= count:
            return
