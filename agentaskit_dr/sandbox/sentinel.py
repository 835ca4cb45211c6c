"""A Sentinel-managed Redis on loopback: a master, a replica and three Sentinels.

For tests and the fault campaign: the lock store without a single point of failure. Kill
the master and the Sentinels promote the replica within about ``down_after`` + a second.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from agentaskit_dr.local_servers.tcp import free_port, wait_for_port
from agentaskit_dr.sandbox.redis import RedisServer

SERVICE = "agentaskit-lock"


class SentinelSet:
    """``master``, ``replica`` (RedisServer) and three ``redis-server --sentinel``."""

    def __init__(self, *, down_after_ms: int = 500, failover_timeout_ms: int = 3000) -> None:
        self.master = RedisServer()
        self.replica = RedisServer()
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = tempfile.TemporaryDirectory(prefix="agentaskit-sentinel-")

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        # The master waits 5 s by default before a diskless full sync: none of that here.
        self._redis_cli(self.master.port, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
        self._redis_cli(self.replica.port, "REPLICAOF", "127.0.0.1", str(self.master.port))
        for port in self.sentinel_ports:
            conf = Path(self._dir.name) / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            proc = subprocess.Popen(
                [self.master.binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self._procs.append(proc)
            wait_for_port(port, proc=proc)
        self.wait_replica_synced()
        return self

    def master_port(self) -> int:
        """The master's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            out = self._redis_cli(port, "SENTINEL", "get-master-addr-by-name", SERVICE,
                                  check=False)
            lines = out.split()
            if len(lines) == 2 and lines[1].isdigit():
                return int(lines[1])
        raise RuntimeError("no Sentinel named a master")

    def master_server(self) -> RedisServer:
        """The server the Sentinels name master now (``master`` or ``replica``)."""
        port = self.master_port()
        return self.master if port == self.master.port else self.replica

    def force_failover(self, timeout: float = 10.0) -> None:
        """``SENTINEL FAILOVER``: the Sentinels promote the replica as if the master were
        down (asynchronous replication: its last writes may be lost), and make the old
        master a replica of it. Asked of each Sentinel in turn until one accepts: a
        Sentinel that has not discovered the replica yet answers NOGOODSLAVE."""
        deadline = time.monotonic() + timeout
        while True:
            for port in self.sentinel_ports:
                if self._redis_cli(port, "SENTINEL", "FAILOVER", SERVICE, check=False):
                    return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no Sentinel accepted SENTINEL FAILOVER in {timeout}s")
            time.sleep(0.2)

    def wait_failover(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until the Sentinels name a master other than ``old_port``; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_port()
            except RuntimeError:
                port = old_port
            if port != old_port:
                return port
            time.sleep(0.1)
        raise TimeoutError(f"the Sentinels did not fail over from {old_port} in {timeout}s")

    def wait_replica_synced(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self._redis_cli(self.replica.port, "INFO", "replication", check=False)
            if "master_link_status:up" in info:
                return
            time.sleep(0.05)
        raise TimeoutError("the replica did not sync with the master")

    def wait_replicated(self, timeout_ms: int = 5000) -> int:
        """``WAIT 1``: block until the replica acknowledged every write so far (a diskless
        sync puts the replica online only at its first ACK, up to a second later)."""
        return int(self._redis_cli(self.master.port, "WAIT", "1", str(timeout_ms)))

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self.master.kill()
        self.replica.kill()
        self._dir.cleanup()

    def _redis_cli(self, port: int, *command: str, check: bool = True) -> str:
        """One command through redis-py's sync client (no redis-cli binary needed)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2,
                             decode_responses=True)
        try:
            answer = client.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis.RedisError:
            if check:
                raise
            return ""
        finally:
            client.close()
        if isinstance(answer, (list, tuple)):
            return " ".join(str(part) for part in answer)
        if isinstance(answer, dict):
            return "\n".join(f"{key}:{value}" for key, value in answer.items())
        return str(answer)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
