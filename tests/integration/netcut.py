"""Cut network links between real processes on loopback, so connections hang, not fail.

A partition is not a refused connection: packets vanish, and only timeouts notice. To
cut one link and leave others to the same server up, every directed link
observer → target gets its own :class:`Forwarder` (a TCP relay on its own loopback
port), and the :class:`Firewall` drops packets to and from that port with nftables.
Both new connections (the SYN is dropped) and established ones (data and ACKs are
dropped, so the sender retransmits) hang; healing lets the retransmissions through,
so established connections resume.

:class:`Network` ties the two together by node name::

    def test_partition(network: Network) -> None:
        west_sees_redis = network.link("west", "redis", redis.port)
        ...
        network.isolate("west")

Needs root and ``nft``; every rule lives in one table per :class:`Firewall`, removed
on ``close()`` and at interpreter exit.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

__all__ = ["Firewall", "Forwarder", "Network", "network"]

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
_CHUNK = 64 * 1024
# Stop reading from one side while this much is still unsent to the other: a stalled
# (cut) peer then pushes back instead of growing the buffer without bound.
_HIGH_WATER = 256 * 1024
_NFT_FALLBACKS = ("/usr/sbin/nft", "/sbin/nft")
_NFT_TIMEOUT = 10.0
_CUT_SET = "cut_ports"


class _Splice:
    """One client connection and the upstream connection it is relayed to."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connected = False
        # Bytes waiting to be written *to* each socket.
        self.pending: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.eof_from: set[socket.socket] = set()
        self.shut_to: set[socket.socket] = set()
        # A slow link: (due time, bytes) held back per destination, in order.
        self.delayed: dict[socket.socket, collections.deque[tuple[float, bytes]]] = {
            client: collections.deque(), upstream: collections.deque()}

    def unsent(self, sock: socket.socket) -> int:
        """Bytes still to be written to ``sock``, held back ones included."""
        return len(self.pending[sock]) + sum(len(data) for _, data in self.delayed[sock])

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def interest(self, sock: socket.socket) -> int:
        if not self.connected:
            # Hold the client until the target accepts; watch the connect finish.
            return selectors.EVENT_WRITE if sock is self.upstream else 0
        mask = 0
        if sock not in self.eof_from and self.unsent(self.peer(sock)) < _HIGH_WATER:
            mask |= selectors.EVENT_READ
        if self.pending[sock]:
            mask |= selectors.EVENT_WRITE
        return mask

    @property
    def finished(self) -> bool:
        return len(self.shut_to) == 2


class Forwarder:
    """A TCP relay from 127.0.0.1:``port`` (a free port) to 127.0.0.1:``target_port``.

    Runs in its own thread with its own selector, so it keeps relaying while the test's
    event loop is busy or blocked. It connects to the target per accepted connection,
    so the target may start later; when the target refuses, the client is reset.
    Half-close is passed through. ``stop()`` closes every socket and joins the thread.

    ``delay`` (seconds, 0 by default, settable at any time) makes it a slow link: each
    chunk read is written on only ``delay`` s later, in order, in both directions (added
    latency per chunk; new connections are not delayed, their data is).
    """

    def __init__(self, target_port: int, name: str = "") -> None:
        self.target_port = target_port
        self.name = name or f"to-{target_port}"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "stop")
        self._splices: set[_Splice] = set()
        self._error: Exception | None = None
        self.delay = 0.0
        self._thread = threading.Thread(target=self._run, name=f"netcut-{self.name}", daemon=True)
        self._thread.start()
        log.debug(
            "netcut_forwarder_started", name=self.name, port=self.port, target_port=target_port
        )

    def stop(self) -> None:
        """Close the listener and every relayed connection; join the relay thread.

        Raises RuntimeError if the relay thread died of an unexpected error.
        """
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            self._thread.join()
        self._wake_w.close()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"forwarder {self.name} failed: {error!r}") from error

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while True:
                ready = self._selector.select(self._until_due())
                self._release_due()
                for key, events in ready:
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        self._accept()
                    elif isinstance(key.data, _Splice) and key.data in self._splices:
                        # A splice closed earlier in this round can still have a ready key.
                        self._relay(key.data, key.fileobj, events)  # type: ignore[arg-type]
        except Exception as exc:
            # Handed to stop(), which raises it in the test's thread.
            self._error = exc
            log.error("netcut_forwarder_failed", name=self.name, error=repr(exc))
        finally:
            for splice in list(self._splices):
                self._close(splice)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _until_due(self) -> float | None:
        """Seconds until the first held-back chunk is due (None: nothing held back)."""
        due = [queue[0][0] for splice in self._splices for queue in splice.delayed.values()
               if queue]
        return None if not due else max(0.0, min(due) - time.monotonic())

    def _release_due(self) -> None:
        """Move the held-back chunks that are due to their destination's send buffer."""
        now = time.monotonic()
        for splice in list(self._splices):
            moved = False
            for sock, queue in splice.delayed.items():
                while queue and queue[0][0] <= now:
                    splice.pending[sock] += queue.popleft()[1]
                    moved = True
            if moved:
                self._relay(splice, splice.client, 0)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            splice = _Splice(client, upstream)
            self._splices.add(splice)
            err = upstream.connect_ex((LOOPBACK, self.target_port))
            if err not in (0, errno.EINPROGRESS):
                self._close(splice, reset_client=True)
                continue
            self._refresh(splice)

    def _relay(self, splice: _Splice, sock: socket.socket, events: int) -> None:
        try:
            if not splice.connected:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._close(splice, reset_client=True)
                    return
                splice.connected = True
            else:
                self._transfer(splice, sock, events)
            for dest in (splice.client, splice.upstream):
                src = splice.peer(dest)
                # Pass a half-close on once everything before it has been written.
                flushed = not splice.unsent(dest)
                if src in splice.eof_from and flushed and dest not in splice.shut_to:
                    dest.shutdown(socket.SHUT_WR)
                    splice.shut_to.add(dest)
        except OSError:
            # A reset or broken pipe on either side ends the whole relayed connection.
            self._close(splice)
            return
        if splice.finished:
            self._close(splice)
        else:
            self._refresh(splice)

    def _transfer(self, splice: _Splice, sock: socket.socket, events: int) -> None:
        if events & selectors.EVENT_READ:
            with contextlib.suppress(BlockingIOError):
                data = sock.recv(_CHUNK)
                delay = self.delay
                if data and (delay > 0 or splice.delayed[splice.peer(sock)]):
                    queue = splice.delayed[splice.peer(sock)]
                    queue.append((time.monotonic() + delay, data))
                elif data:
                    splice.pending[splice.peer(sock)] += data
                else:
                    splice.eof_from.add(sock)
        outgoing = splice.pending[sock]
        if events & selectors.EVENT_WRITE and outgoing:
            with contextlib.suppress(BlockingIOError):
                del outgoing[: sock.send(outgoing)]

    def _refresh(self, splice: _Splice) -> None:
        registered = self._selector.get_map()
        for sock in (splice.client, splice.upstream):
            mask = splice.interest(sock)
            key = registered.get(sock)
            if key is None and mask:
                self._selector.register(sock, mask, splice)
            elif key is not None and not mask:
                self._selector.unregister(sock)
            elif key is not None and key.events != mask:
                self._selector.modify(sock, mask, splice)

    def _close(self, splice: _Splice, *, reset_client: bool = False) -> None:
        self._splices.discard(splice)
        if reset_client:
            # SO_LINGER 0 sends a RST, the closest a relay gets to "connection refused".
            splice.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        registered = self._selector.get_map()
        for sock in (splice.client, splice.upstream):
            if sock in registered:
                self._selector.unregister(sock)
            sock.close()


def _find_nft(nft: str | None) -> str:
    if nft is not None:
        if not (Path(nft).is_file() and os.access(nft, os.X_OK)):
            raise RuntimeError(f"netcut: nft binary {nft!r} does not exist or is not executable")
        return nft
    found = shutil.which("nft") or next(
        (path for path in _NFT_FALLBACKS if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(
            "netcut needs the 'nft' binary (Debian package 'nftables') to cut links; "
            f"not found on PATH nor at {', '.join(_NFT_FALLBACKS)}"
        )
    return found


def _run_nft(nft: str, *args: str, script: str | None = None) -> str:
    argv = [nft, *args] if script is None else [nft, "-f", "-"]
    done = subprocess.run(
        argv, input=script, capture_output=True, text=True, timeout=_NFT_TIMEOUT, check=False
    )
    if done.returncode != 0:
        command = script.strip() if script is not None else " ".join(argv)
        raise RuntimeError(f"nft failed ({command}): {done.stderr.strip()}")
    return done.stdout


def _delete_table(nft: str, table: str) -> None:
    try:
        _run_nft(nft, "delete", "table", "inet", table)
    except RuntimeError as exc:
        # Already gone (someone flushed the ruleset): that is the state we wanted.
        if "No such file or directory" not in str(exc):
            raise


class Firewall:
    """One nftables table (family inet) of this instance's own; nothing else is touched.

    ``cut(port)`` drops loopback TCP packets to and from ``port`` (``tcp dport`` and
    ``tcp sport`` in an input hook), ``heal(port)`` stops dropping them. The ports live
    in a named set that two fixed rules match, so a cut or heal is one atomic set
    update. The table is created on the first cut and deleted by ``close()``, by
    garbage collection, or at interpreter exit, whichever comes first.

    Raises RuntimeError naming what is missing when ``nft`` is absent or the process
    is not root.
    """

    _serial = itertools.count(1)
    _swept = False

    def __init__(self, nft: str | None = None) -> None:
        self._nft = _find_nft(nft)
        if os.geteuid() != 0:
            raise RuntimeError(
                f"netcut needs root to load nftables rules; running as uid {os.geteuid()}"
            )
        self.table = f"agentaskit_test_{os.getpid()}_{next(self._serial)}"
        self._cut: set[int] = set()
        self._finalizer: weakref.finalize[[str, str], Firewall] | None = None

    def cut(self, port: int) -> None:
        """Drop every loopback TCP packet to or from ``port``; existing connections hang."""
        self._ensure_table()
        if port not in self._cut:
            self._run("add", "element", "inet", self.table, _CUT_SET, f"{{ {port} }}")
            self._cut.add(port)
        if port not in self.cut_ports():
            raise RuntimeError(f"netcut: port {port} missing from table {self.table} after cut")
        log.info("netcut_port_cut", table=self.table, port=port)

    def heal(self, port: int) -> None:
        """Let packets to and from ``port`` through again; a port never cut is fine."""
        if port not in self._cut:
            return
        self._run("delete", "element", "inet", self.table, _CUT_SET, f"{{ {port} }}")
        self._cut.discard(port)
        log.info("netcut_port_healed", table=self.table, port=port)

    def heal_all(self) -> None:
        """Heal every port this firewall cut."""
        if self._cut:
            self._run("flush", "set", "inet", self.table, _CUT_SET)
            self._cut.clear()
            log.info("netcut_all_healed", table=self.table)

    def cut_ports(self) -> frozenset[int]:
        """The ports cut right now, as the kernel has them (read back with ``nft -j``)."""
        if self._finalizer is None or not self._finalizer.alive:
            return frozenset()
        listing = json.loads(self._run("-j", "list", "table", "inet", self.table))
        for item in listing["nftables"]:
            found = item.get("set")
            if found is not None and found["name"] == _CUT_SET:
                return frozenset(int(port) for port in found.get("elem", []))
        raise RuntimeError(f"netcut: set {_CUT_SET} missing from table {self.table}")

    def close(self) -> None:
        """Delete the table, healing everything; safe to call twice."""
        self._cut.clear()
        if self._finalizer is not None and self._finalizer.alive:
            self._finalizer()
            log.info("netcut_table_deleted", table=self.table)

    def __enter__(self) -> Firewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_table(self) -> None:
        if self._finalizer is not None and self._finalizer.alive:
            return
        if self._finalizer is not None:
            raise RuntimeError(f"netcut: firewall {self.table} is closed")
        if not Firewall._swept:
            Firewall._swept = True
            sweep_orphan_tables(self._nft)
        # iif "lo" and the 127.0.0.1 matches keep a cut from ever touching real traffic
        # that happens to use the same port number.
        script = f"""
table inet {self.table} {{
    set {_CUT_SET} {{ type inet_service; }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iif "lo" ip daddr {LOOPBACK} tcp dport @{_CUT_SET} drop
        iif "lo" ip saddr {LOOPBACK} tcp sport @{_CUT_SET} drop
    }}
}}
"""
        _run_nft(self._nft, script=script)
        self._finalizer = weakref.finalize(self, _delete_table, self._nft, self.table)
        log.debug("netcut_table_created", table=self.table)

    def _run(self, *args: str) -> str:
        return _run_nft(self._nft, *args)


def sweep_orphan_tables(nft: str) -> list[str]:
    """Delete the tables of test processes that died without deleting them (SIGKILL, a
    killed CI run): their cut ports stay dropped in the kernel, and a later test that is
    handed one of those ports sees its link hang for no reason. A table whose pid is
    alive is left alone (its owner may still use it). The tables deleted."""
    listing = json.loads(_run_nft(nft, "-j", "list", "tables"))
    deleted = []
    for item in listing.get("nftables", []):
        table = item.get("table")
        if table is None or table.get("family") != "inet":
            continue
        name = str(table.get("name", ""))
        parts = name.split("_")
        if not name.startswith("agentaskit_test_") or len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            with contextlib.suppress(RuntimeError):  # another sweeper was first
                _run_nft(nft, "delete", "table", "inet", name)
                deleted.append(name)
                log.warning("netcut_orphan_table_deleted", table=name)
        except PermissionError:
            continue  # alive, someone else's
    return deleted


class Network:
    """Directed links observer → target by node name, each one cuttable on its own.

    ``link()`` gives the port an observer should dial to reach a target; ``isolate()``
    cuts every link from and to a node, including links made later, until
    ``heal_all()``.
    """

    def __init__(self, firewall: Firewall | None = None) -> None:
        self.firewall = firewall if firewall is not None else Firewall()
        self._links: dict[tuple[str, str], Forwarder] = {}
        self._isolated: set[str] = set()

    def link(self, observer: str, target: str, target_port: int) -> int:
        """The loopback port ``observer`` dials to reach ``target`` (listening on
        ``target_port``); made on first use, the same port afterwards."""
        existing = self._links.get((observer, target))
        if existing is not None:
            if existing.target_port != target_port:
                raise ValueError(
                    f"link {observer}->{target} already forwards to port "
                    f"{existing.target_port}, not target_port={target_port}"
                )
            return existing.port
        forwarder = Forwarder(target_port, name=f"{observer}->{target}")
        self._links[observer, target] = forwarder
        if self._isolated & {observer, target}:
            self.firewall.cut(forwarder.port)
        return forwarder.port

    def cut(self, observer: str, target: str) -> None:
        """Make connections from ``observer`` to ``target`` hang, new and existing."""
        self.firewall.cut(self._forwarder(observer, target).port)

    def heal(self, observer: str, target: str) -> None:
        """Let ``observer`` reach ``target`` again; stalled connections resume."""
        self.firewall.heal(self._forwarder(observer, target).port)

    def slow(self, observer: str, target: str, delay: float) -> None:
        """Add ``delay`` s of latency to each chunk relayed on ``observer`` → ``target``,
        both ways (0 makes it fast again); the link stays up."""
        if delay < 0:
            raise ValueError(f"delay: must not be negative (got {delay})")
        self._forwarder(observer, target).delay = delay

    def is_cut(self, observer: str, target: str) -> bool:
        """Whether the link ``observer`` → ``target`` is cut right now."""
        return self._forwarder(observer, target).port in self.firewall.cut_ports()

    def isolate(self, node: str) -> None:
        """Cut every link ``node`` observes through and every link others reach it by."""
        self._isolated.add(node)
        for (observer, target), forwarder in self._links.items():
            if node in (observer, target):
                self.firewall.cut(forwarder.port)

    def heal_all(self) -> None:
        """Heal every link and forget isolated nodes."""
        self._isolated.clear()
        self.firewall.heal_all()

    def close(self) -> None:
        """Remove the firewall table first (so closes reach clients), then stop forwarders."""
        try:
            self.firewall.close()
        finally:
            forwarders = list(self._links.values())
            self._links.clear()
            errors: list[RuntimeError] = []
            for forwarder in forwarders:
                try:
                    forwarder.stop()
                except RuntimeError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]

    def _forwarder(self, observer: str, target: str) -> Forwarder:
        try:
            return self._links[observer, target]
        except KeyError:
            raise ValueError(
                f"no link {observer}->{target}; call link({observer!r}, {target!r}, port) first"
            ) from None


@pytest.fixture
def network() -> Iterator[Network]:
    """A :class:`Network` with its own nftables table, closed after the test."""
    net = Network()
    try:
        yield net
    finally:
        net.close()
