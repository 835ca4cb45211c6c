"""The WAL archive's world: a backup config for the moto buckets, the spool, the commands.

:class:`WalWorld` writes ``backup.yaml`` into a directory the ``postgres`` OS user can
read (PostgreSQL runs ``archive_command`` as that user), runs ``wal-push``/``wal-fetch``
the way PostgreSQL would, and stops the archiver they started. :class:`S3Outage` is a
TCP relay in front of moto that can refuse and cut every connection, then heal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from agentaskit_dr.local_servers.os_side import give_to_server_user, server_user
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import _cluster_template, pg_bindir
from tests.integration.s3_buckets import create_buckets

REPO = Path(__file__).resolve().parents[2]
KEY_HEX = "5a" * 32
KEY_ENV = "AGENTASKIT_DR_BACKUP_KEY"
#: A Python the ``postgres`` OS user may run (ours lives under /root): the WAL commands
#: need only the standard library and PyYAML.
SYSTEM_PYTHON = "/usr/bin/python3"


class WalWorld:
    """Config, spool and command lines for one test; ``close()`` stops the archiver."""

    def __init__(self, endpoint_url: str, *, replication: str = "client",
                 idle_exit: str = "30s") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="walworld-", dir="/dev/shm"))
        self.base.chmod(0o755)
        self.spool = self.base / "spool"
        self.spool.mkdir(mode=0o700)
        give_to_server_user(self.spool)
        self.config = self.base / "backup.yaml"
        self.config.write_text(yaml.safe_dump({
            "storage": {
                "primary": {"url": "s3://agentaskit-backups-primary", "region": "us-west-2"},
                "replica": {"url": "s3://agentaskit-backups-replica", "region": "us-east-1"},
                "endpoint_url": endpoint_url,
                "replication": replication,
            },
            "encryption": {"key_env": KEY_ENV},
            "postgresql": {"wal": {"spool_dir": str(self.spool), "idle_exit": idle_exit}},
        }))
        self.config.chmod(0o644)
        self.env = {**os.environ, KEY_ENV: KEY_HEX, "PYTHONPATH": str(REPO)}

    def wal(self, *args: str, cwd: Path | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
        """``agentaskit-dr <args> --config backup.yaml ...`` as a subprocess (as ourselves)."""
        command, *rest = args
        return subprocess.run(
            [sys.executable, "-m", "agentaskit_dr", command, "--config", str(self.config),
             "--timeout", "20", *rest],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    def archive_command(self) -> str:
        """The ``archive_command`` line PostgreSQL runs (as the ``postgres`` user)."""
        return (f"PYTHONPATH={REPO} {SYSTEM_PYTHON} -m agentaskit_dr wal-push "
                f"--config {self.config} --timeout 20 %p")

    def restore_command(self) -> str:
        return (f"PYTHONPATH={REPO} {SYSTEM_PYTHON} -m agentaskit_dr wal-fetch "
                f"--config {self.config} --timeout 20 %f %p")

    def start_archiver(self) -> subprocess.Popen[bytes]:
        """A resident archiver as ourselves (the ``postgres`` user cannot run our Python,
        so commands PostgreSQL runs find this one instead of starting their own)."""
        log = (self.spool / "archiver.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentaskit_dr.backup.wal_archiver", "--config",
             str(self.config), "--spool", str(self.spool), "--idle-exit", "0"],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 20
        while "wal_archiver_started" not in self.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"archiver did not start:\n{self.log()}")
            time.sleep(0.05)
        return proc

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.spool / "archiver.log").read_text()
        return ""

    def archiver_pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.spool / "archiver.lock").read_text().strip())
        return None

    def close(self) -> None:
        self.stop_archiver()
        shutil.rmtree(self.base, ignore_errors=True)

    def stop_archiver(self) -> None:
        """SIGTERM the archiver serving the spool, and wait until it is gone."""
        pid = self.archiver_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.02)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)


def server_user_ids() -> tuple[int, int] | None:
    user = server_user()
    return None if user is None else (user.pw_uid, user.pw_gid)


class S3Outage:
    """127.0.0.1:``port`` relays to ``target_port`` until :meth:`down`, which cuts every
    connection and refuses new ones (accept, then close) until :meth:`up`."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._up = True
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self._up = False
            for sock in self._live:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._live.clear()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self._target))
                self._live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            self._live.discard(source)
        source.close()


def archiving_primary(world: WalWorld, base: Path, *, extra: str = "") -> PostgresServer:
    """A started primary in ``base``/primary with ``archive_command`` = our ``wal-push``."""
    bindir = pg_bindir()
    home = base / "home"
    server = PostgresServer("primary", base / "primary", bindir, home)
    subprocess.run(["cp", "-aT", str(_cluster_template(bindir)), str(server.datadir)],
                   check=True)
    home.mkdir(mode=0o700, exist_ok=True)
    give_to_server_user(home)
    with (server.datadir / "postgresql.conf").open("a") as conf:
        conf.write("archive_mode = on\n")
        conf.write(f"archive_command = '{world.archive_command()}'\n")
        conf.write(extra)
    server.start()
    return server


def wait_archived(server: PostgresServer, name: str, timeout: float = 60.0) -> None:
    """Block until PostgreSQL reports ``name`` (or a later file) archived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = server.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if last[:24] >= name:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} not archived in {timeout}s:\n{server.log_tail()}")


# ---------------------------------------------------------------- fixtures
# A test module imports them by their function names (``
# tests.integration.aws's; its ``wal_base`` is a fresh directory in /dev/shm.


@pytest.fixture(name="wal_base")
def wal_base_fixture() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="walpg-", dir="/dev/shm"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="proxy")
async def proxy_fixture(moto_server: str) -> AsyncIterator[S3Outage]:
    """Both buckets in moto, behind a relay a test can cut (an S3 outage)."""
    await create_buckets(moto_server)
    relay = S3Outage(urlsplit(moto_server).port or 0)
    yield relay
    relay.close()


@pytest.fixture(name="world")
def world_fixture(proxy: S3Outage) -> Iterator[WalWorld]:
    """A WAL world whose resident archiver runs through ``proxy``."""
    world = WalWorld(proxy.url)
    archiver = world.start_archiver()
    yield world
    archiver.terminate()
    archiver.wait(10)
    world.close()


@pytest.fixture(name="primary")
def primary_fixture(world: WalWorld, wal_base: Path) -> Iterator[PostgresServer]:
    """A primary whose archive_command is wal-push into ``world``."""
    server = archiving_primary(world, wal_base)
    yield server
    server.kill()
