"""One PostgreSQL server we run ourselves on ``127.0.0.1``: the restore test's scratch
copy, and each server of the sandbox's pair.

Started with ``Popen`` on the ``postgres`` binary, not ``pg_ctl``: a killed postmaster
that is reaped at once leaves no stale ``postmaster.pid`` behind. When we are root the
server binaries run as the ``postgres`` OS user; client binaries (``psql``,
``pg_isready``) run as ourselves.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

from agentaskit_dr.local_servers.os_side import (
    children,
    client_env,
    server_process_options,
    signal_all,
)
from agentaskit_dr.local_servers.tcp import free_port


class PostgresServer:
    """One postmaster on ``127.0.0.1:port`` over ``datadir``, to start, kill, pause, resume."""

    def __init__(
        self, name: str, datadir: Path, bindir: Path, home: Path, port: int | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.datadir = datadir
        self.bindir = bindir
        self.home = home
        self.logfile = datadir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run_server_binary(self, *argv: str, timeout: float = 60.0) -> None:
        """Run a server-side binary from ``bindir`` (initdb, pg_basebackup, pg_rewind...)
        as the server's OS user; raise with its output if it fails."""
        done = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True, timeout=timeout, check=False,
            **server_process_options(self.home),
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {output[-2000:]}")

    def start(self, timeout: float = 30.0, *, accepting: bool = True) -> None:
        """Start the postmaster and block until it accepts connections; with
        ``accepting=False``, only until it answers (a standby with ``hot_standby = off``
        answers every session with 57P03 and never accepts one)."""
        if self.running:
            return
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                **server_process_options(self.home),
            )
        self._paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            # pg_isready exits 0 only once the server accepts sessions (not while it
            # is still starting up or recovering to a consistent state).
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1",
                 "-p", str(self.port), "-t", "1"],
                check=False,
            )
            # pg_isready: 0 accepting, 1 answering but rejecting, 2 no answer.
            if ready.returncode == 0 or (not accepting and ready.returncode == 1):
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"postgres {self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as if the host died; reap at once."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Backends lead their own process groups and outlive a killed postmaster:
            # freeze it (no new forks), list its children, then kill them all.
            self.proc.send_signal(signal.SIGSTOP)
            signal_all([*children(self.proc.pid), self.proc.pid], signal.SIGKILL)
            self.proc.wait()
            self._remove_shared_memory_key()
        self.proc = None
        self._paused = False

    def _remove_shared_memory_key(self) -> None:
        # A killed postmaster leaves its small System V segment behind; a restart on this
        # data dir would reuse it, but a removed data dir leaks it until reboot.
        with contextlib.suppress(OSError, IndexError, ValueError):
            shmid = int((self.datadir / "postmaster.pid").read_text().splitlines()[6].split()[1])
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); kill if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: TCP still connects, nothing answers."""
        if not self.running or self.proc is None:
            return
        # Stop the postmaster first so it forks no new backend while we list them.
        self.proc.send_signal(signal.SIGSTOP)
        signal_all(children(self.proc.pid), signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT everything ``pause`` stopped."""
        if not self._paused or self.proc is None:
            return
        signal_all(children(self.proc.pid), signal.SIGCONT)
        self.proc.send_signal(signal.SIGCONT)
        self._paused = False

    def sql(self, query: str, timeout: float = 30.0) -> str:
        """Run ``query`` with psql and return its unaligned, tuples-only output."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-c", query],
            capture_output=True, text=True, timeout=timeout, check=False, env=client_env(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql on {self.name} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log, for error messages."""
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
