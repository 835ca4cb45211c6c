"""PostgreSQL's own tools for base backups: where they are, how to call them, and what the
server says about itself (version, timeline, WAL summarization)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from agentaskit_dr.config import PostgresSource


class BackupSourceError(Exception):
    """The server or its tools cannot take the backup asked for; the message says why."""


def bin_dir(source: PostgresSource) -> Path:
    """``postgresql.bin_dir``, else ``pg_config --bindir``, else the sandbox's choice."""
    if source.bin_dir is not None:
        return source.bin_dir
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    raise BackupSourceError("postgresql.bin_dir: not set and pg_config is not on PATH")


def tool(source: PostgresSource, name: str) -> Path:
    """The path of PostgreSQL binary ``name``; a clear error if it is missing."""
    path = bin_dir(source) / name
    if not path.is_file():
        raise BackupSourceError(f"postgresql.bin_dir: {path} does not exist")
    return path


def connect_dsn(source: PostgresSource) -> str:
    """The DSN with the configured password inserted (for asyncpg; never logged)."""
    if source.dsn is None:
        raise BackupSourceError("postgresql.dsn: not set: which server should be backed up?")
    if source.password is None:
        return source.dsn
    scheme, _, rest = source.dsn.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not at:
        return source.dsn
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:{quote(source.password.get_secret_value(), safe='')}@{hosts}"


def client_env(source: PostgresSource) -> dict[str, str]:
    """Environment of a client tool: no PG* from our caller, the password as PGPASSWORD."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if source.password is not None:
        env["PGPASSWORD"] = source.password.get_secret_value()
    return env


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the server says about itself before a backup."""

    version: int
    """``server_version_num``, e.g. 150020."""
    system_identifier: str
    timeline: int
    summarize_wal: bool
    in_recovery: bool

    @property
    def major(self) -> int:
        return self.version // 10000


async def server_facts(source: PostgresSource) -> ServerFacts:
    """Ask the server (one short session)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(connect_dsn(source), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackupSourceError(f"postgresql.dsn: cannot connect: {exc}") from None
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('server_version_num')::int AS version,"
            " (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier,"
            " (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline,"
            " coalesce(current_setting('summarize_wal', true), 'off') = 'on' AS summarize,"
            " pg_is_in_recovery() AS in_recovery"
        )
    except asyncpg.PostgresError as exc:
        raise BackupSourceError(f"postgresql.dsn: cannot read the server's state: {exc}") from None
    finally:
        await conn.close()
    assert row is not None
    return ServerFacts(
        version=row["version"], system_identifier=row["system_identifier"],
        timeline=row["timeline"], summarize_wal=row["summarize"],
        in_recovery=row["in_recovery"],
    )


async def data_directory(source: PostgresSource) -> str | None:
    """The server's data directory (``SHOW data_directory``), or None when it cannot say
    (unreachable, or a role without ``pg_read_all_settings``)."""
    import asyncpg

    if source.dsn is None:
        return None
    try:
        conn = await asyncpg.connect(connect_dsn(source), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        value: str | None = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        value = None
    finally:
        await conn.close()
    return value
