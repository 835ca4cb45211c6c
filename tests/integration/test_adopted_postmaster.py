"""A server its watchdog started again itself (``pg_ctl start``) is still the pair's to
run, kill, pause, resume and stop, and is torn down with the pair.

The chaos world, the fixtures and the sandbox drill hold a ``PostgresServer`` per data
directory; a self-fence lift, a switchover's rejoin or a resync restarts that server with
``pg_ctl``, outside the object's own process handle. The object finds that postmaster
through ``postmaster.pid``, and trusts the file only when the pid is really the live
postmaster of that data directory.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.actuators.pg_start import start_server
from agentaskit_dr.local_servers.os_side import children, server_process_options, server_user
from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair

pytestmark = pytest.mark.integration

#: Long enough for an idle server on a loaded machine to answer ``SELECT 1``.
ANSWERS_WITHIN = 10.0
#: A paused server must not answer in this long.
HANGS_FOR = 1.5


def restart_as_its_watchdog(server: PostgresServer) -> int:
    """Stop ``server`` through the object, then start it the way a watchdog does (the
    actuator's ``pg_ctl start``, a separate process tree); the new postmaster's pid."""
    server.stop()
    assert not server.running
    user = server_user() or pwd.getpwuid(os.geteuid())
    control = ServerControl(data_directory=server.datadir, bin_dir=server.bindir,
                            os_user=user.pw_name)
    asyncio.run(start_server(control, within=30.0, as_primary=True))
    pid = int((server.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    assert server.proc is None  # not ours: pg_ctl started it
    assert pid not in children(os.getpid())
    return pid


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``T`` stopped, ``Z`` zombie...); None: no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def processes_in(datadir: Path) -> list[int]:
    """Live (not zombie) processes working in ``datadir``, removed or not: its postmaster
    and backends."""
    wanted = str(datadir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue
        if (cwd in (wanted, f"{wanted} (deleted)")
                and process_state(int(entry.name)) not in (None, "Z", "X")):
            found.append(int(entry.name))
    return found


@pytest.fixture
def adopted(pg_pair: PostgresPair) -> tuple[PostgresServer, int]:
    """The pair's primary, restarted by pg_ctl; the postmaster's pid."""
    return pg_pair.primary, restart_as_its_watchdog(pg_pair.primary)


def test_a_server_its_watchdog_restarted_is_running(
    adopted: tuple[PostgresServer, int],
) -> None:
    server, pid = adopted

    assert server.running
    assert server.postmaster_pid() == pid
    assert server.sql("SELECT pg_is_in_recovery()") == "f"


def test_pause_freezes_a_server_its_watchdog_restarted_and_resume_wakes_it(
    adopted: tuple[PostgresServer, int],
) -> None:
    server, pid = adopted

    assert server.pause()
    try:
        assert process_state(pid) == "T"
        with pytest.raises(subprocess.TimeoutExpired):
            server.sql("SELECT 1", timeout=HANGS_FOR)
        assert server.running  # frozen, not down
    finally:
        assert server.resume()

    assert server.sql("SELECT 1", timeout=ANSWERS_WITHIN) == "1"


def test_kill_leaves_no_process_of_a_server_its_watchdog_restarted(
    adopted: tuple[PostgresServer, int],
) -> None:
    server, pid = adopted
    server.sql("SELECT 1")  # a backend of its own, killed with it
    assert pid in processes_in(server.datadir)

    assert server.kill()

    assert processes_in(server.datadir) == []
    assert not server.running
    # Its parent (init) reaps it later; its pid file must not block a start meanwhile.
    server.start(timeout=ANSWERS_WITHIN)
    assert server.proc is not None
    assert server.sql("SELECT 1") == "1"


def test_stop_shuts_down_a_server_its_watchdog_restarted(
    adopted: tuple[PostgresServer, int],
) -> None:
    server, _ = adopted

    server.stop()

    assert processes_in(server.datadir) == []
    assert not server.running
    assert not (server.datadir / "postmaster.pid").exists()  # a clean shutdown


def test_closing_the_pair_kills_a_server_its_watchdog_restarted() -> None:
    pair = PostgresPair().start()
    try:
        restart_as_its_watchdog(pair.primary)
        datadirs = (pair.primary.datadir, pair.replica.datadir)
        assert processes_in(pair.primary.datadir)
    finally:
        pair.close()

    assert [pid for datadir in datadirs for pid in processes_in(datadir)] == []


@pytest.fixture
def sleeper_in(pg_pair: PostgresPair) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a postmaster, working in the primary's data dir."""
    sleeper = subprocess.Popen(["sleep", "60"], cwd=pg_pair.primary.datadir)
    try:
        yield sleeper
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("who", ["this test", "a sleep in the data dir"])
def test_a_stale_pid_file_naming_another_live_process_is_not_adopted(
    pg_pair: PostgresPair, sleeper_in: subprocess.Popen[bytes], who: str,
) -> None:
    server = pg_pair.primary
    server.kill()
    pid = os.getpid() if who == "this test" else sleeper_in.pid
    pid_file = server.datadir / "postmaster.pid"
    pid_file.write_text(f"{pid}\n{server.datadir}\n")
    try:
        assert not server.running
        assert not server.pause()
        assert not server.kill()
        server.stop()

        assert process_state(pid) in ("R", "S")  # neither stopped nor killed
        assert sleeper_in.poll() is None
        assert pid_file.read_text().startswith(f"{pid}\n")  # left as it was
    finally:
        pid_file.unlink()  # or the pair's teardown would ask about it again


def test_a_killed_postmaster_not_yet_reaped_is_not_running(pg_pair: PostgresPair) -> None:
    server = pg_pair.primary
    server.stop()
    # Our own child, outside the object: killed and not reaped, a zombie whose pid file
    # is still in place (as a pg_ctl-started postmaster until init reaps it).
    postmaster = subprocess.Popen(
        [str(server.bindir / "postgres"), "-D", str(server.datadir), "-p", str(server.port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        **server_process_options(server.home))
    try:
        deadline = time.monotonic() + ANSWERS_WITHIN
        while not (server.datadir / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        server.start(timeout=ANSWERS_WITHIN)  # waits for it, starts nothing
        assert server.proc is None
        assert server.running
        postmaster.send_signal(signal.SIGSTOP)
        for pid in [*children(postmaster.pid), postmaster.pid]:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + ANSWERS_WITHIN
        while process_state(postmaster.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(postmaster.pid) == "Z"

        assert not server.running
        assert not server.kill()
    finally:
        postmaster.kill()
        postmaster.wait()
    # Started again on its data dir (the dead postmaster's segment is freed), for the
    # pair's teardown to kill as its own.
    server.start(timeout=ANSWERS_WITHIN)
