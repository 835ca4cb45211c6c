"""One PostgreSQL server we run ourselves on ``127.0.0.1``: the restore test's scratch
copy, and each server of the sandbox's pair.

Started with ``Popen`` on the ``postgres`` binary, not ``pg_ctl``: a killed postmaster
that is reaped at once leaves no stale ``postmaster.pid`` behind. When we are root the
server binaries run as the ``postgres`` OS user; client binaries (``psql``,
``pg_isready``) run as ourselves.

A watchdog that controls the server starts it again itself (``pg_ctl start``: a self-fence
lifted, a switchover's rejoin, a resync). That postmaster is not our child; it is found
through ``postmaster.pid`` (:func:`~agentaskit_dr.local_servers.os_side.postmaster_of`),
and ``running``, ``kill``, ``stop``, ``pause`` and ``resume`` act on it as on ours.
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
    postmaster_of,
    process_state,
    server_process_options,
    signal_all,
)
from agentaskit_dr.local_servers.tcp import free_port

#: Bound on a postmaster we did not start, and its children, dying after SIGKILL (we
#: cannot wait for a process that is not our child: we watch it become a zombie).
_ADOPTED_KILL_TIMEOUT = 10.0
_POLL = 0.02


class PostgresServer:
    """One postmaster on ``127.0.0.1:port`` over ``datadir``, to start, kill, pause, resume:
    the one we started, or the one someone else (a watchdog) started on ``datadir``."""

    def __init__(
        self, name: str, datadir: Path, bindir: Path, home: Path, port: int | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.datadir = datadir
        self.bindir = bindir
        self.home = home
        self.logfile = datadir.parent / f"{name}.log"
        #: The postmaster we started ourselves, if any (it may have exited since).
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused: int | None = None  # the postmaster pause() stopped

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        """The live postmaster serving ``datadir``: ours, else one started by someone else
        (a watchdog's ``pg_ctl start``) as ``postmaster.pid`` names it; None when down."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return postmaster_of(self.datadir)

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
        answers every session with 57P03 and never accepts one). A postmaster someone
        else started on ``datadir`` is not started twice: this waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            return
        adopted = postmaster_of(self.datadir)
        proc = None
        if adopted is None:
            with self.logfile.open("ab") as log:
                proc = self.proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.datadir),
                     "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    **server_process_options(self.home),
                )
            self._paused = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"postgres {self.name} exited with {proc.returncode}:\n{self.log_tail()}"
                )
            if adopted is not None and postmaster_of(self.datadir) != adopted:
                raise RuntimeError(f"postgres {self.name} (postmaster {adopted}, not ours) "
                                   f"exited:\n{self.log_tail()}")
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
            time.sleep(_POLL)
        if adopted is None:
            self.kill()
        raise TimeoutError(f"postgres {self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> bool:
        """SIGKILL the postmaster and its backends, as if the host died; reap at once
        (one we did not start: wait until it is dead and remove its stale pid file).
        Whether a postmaster was running to kill."""
        killed = False
        if self.proc is not None and self.proc.poll() is None:
            # Backends lead their own process groups and outlive a killed postmaster:
            # freeze it (no new forks), list its children, then kill them all.
            self.proc.send_signal(signal.SIGSTOP)
            signal_all([*children(self.proc.pid), self.proc.pid], signal.SIGKILL)
            self.proc.wait()
            self._remove_shared_memory_key()
            killed = True
        else:
            pid = postmaster_of(self.datadir)
            if pid is not None:
                self._kill_adopted(pid)
                killed = True
        self.proc = None
        self._paused = None
        return killed

    def _kill_adopted(self, pid: int) -> None:
        """Kill a postmaster we did not start, as ``kill`` kills ours."""
        signal_all([pid], signal.SIGSTOP)
        backends = children(pid)
        signal_all([*backends, pid], signal.SIGKILL)
        # Not our child: its parent reaps it, maybe seconds later (init). Until then it
        # is a zombie whose postmaster.pid still blocks a start on this data dir.
        deadline = time.monotonic() + _ADOPTED_KILL_TIMEOUT
        while any(process_state(p) not in (None, "Z", "X") for p in (pid, *backends)):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"postgres {self.name}: postmaster {pid} or a child "
                                   f"survived SIGKILL for {_ADOPTED_KILL_TIMEOUT:g}s")
            time.sleep(_POLL)
        self._remove_shared_memory_key()
        pid_file = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text().split("\n", 1)[0]) == pid:
                pid_file.unlink()  # stale: its postmaster is dead

    def _remove_shared_memory_key(self) -> None:
        # A killed postmaster leaves its small System V segment behind; a restart on this
        # data dir would reuse it, but a removed data dir leaks it until reboot.
        with contextlib.suppress(OSError, IndexError, ValueError):
            shmid = int((self.datadir / "postmaster.pid").read_text().splitlines()[6].split()[1])
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); kill if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        elif (pid := postmaster_of(self.datadir)) is not None:
            self.resume()
            signal_all([pid], signal.SIGINT)
            deadline = time.monotonic() + timeout
            while process_state(pid) not in (None, "Z", "X"):
                if time.monotonic() >= deadline:
                    self.kill()
                    break
                time.sleep(_POLL)
        self.proc = None

    def pause(self) -> bool:
        """SIGSTOP the postmaster and every backend: TCP still connects, nothing answers.
        Whether a postmaster was running to pause."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        # Stop the postmaster first so it forks no new backend while we list them.
        signal_all([pid], signal.SIGSTOP)
        signal_all(children(pid), signal.SIGSTOP)
        self._paused = pid
        return True

    def resume(self) -> bool:
        """SIGCONT everything ``pause`` stopped. Whether that postmaster was still there
        to resume (a watchdog may have killed it meanwhile)."""
        pid, self._paused = self._paused, None
        if pid is None or pid != self.postmaster_pid():
            return False
        signal_all(children(pid), signal.SIGCONT)
        signal_all([pid], signal.SIGCONT)
        return True

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
