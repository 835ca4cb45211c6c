"""netcut against real sockets, nftables and redis-server: cut links hang, they never refuse.

A hang shows up as a timeout (``TimeoutError``), never ``ConnectionRefusedError``: that is
what a partitioned watchdog sees, and what its probes must survive.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from agentaskit_dr.local_servers.tcp import free_port
from agentaskit_dr.sandbox.redis import RedisServer
from tests.integration import netcut
from tests.integration.netcut import Firewall, Forwarder, Network

pytestmark = pytest.mark.integration

network = netcut.network

# How long a cut link must stay silent to count as hanging.
HANG = 1.0
# Retransmissions back off (0.2 s, 0.4 s, 0.8 s, ...), so a stalled connection resumes
# up to a few seconds after the heal.
RESUME = 5.0
REPO = Path(__file__).resolve().parents[2]


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                sock.sendall(data)
            # Half-close seen: answer with our own end of stream.
            sock.shutdown(socket.SHUT_WR)


class _EchoServer(socketserver.ThreadingTCPServer):
    # Join the handler threads on close: every connection must have ended by then.
    block_on_close = True
    daemon_threads = False
    # socketserver's default backlog of 5 drops SYNs when 50 relayed connects arrive.
    request_queue_size = 128


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback echo server that answers EOF with EOF; its port."""
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="echo-server")
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def firewall() -> Iterator[Firewall]:
    with Firewall() as fw:
        yield fw


@contextlib.contextmanager
def connected(port: int, timeout: float = HANG) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        yield sock


def echoes(port: int, payload: bytes = b"ping") -> bool:
    with connected(port) as sock:
        sock.sendall(payload)
        return recv_exactly(sock, len(payload)) == payload


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def assert_connect_hangs(port: int) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError), connected(port):
        pass
    assert time.monotonic() - started >= HANG * 0.9


def nft_tables() -> str:
    return subprocess.run(
        [shutil.which("nft") or "/usr/sbin/nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_forwarder_relays_both_ways_with_backpressure_and_half_close(echo_port: int) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than every buffer on the way
    with Forwarder(echo_port) as fwd, connected(fwd.port, timeout=5.0) as sock:

        def send_then_half_close() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_then_half_close)
        sender.start()
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        sender.join()
    assert bytes(received) == payload


def round_trip(sock: socket.socket, message: bytes) -> float:
    started = time.monotonic()
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
    return time.monotonic() - started


def test_a_slow_link_delays_each_chunk_both_ways_in_order_and_can_be_made_fast(
    echo_port: int,
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
    with Forwarder(echo_port) as fwd, connected(fwd.port, timeout=10.0) as sock:
        assert round_trip(sock, b"ping") < 0.1
        fwd.delay = 0.3

        slow = round_trip(sock, b"ping")
        echoed = round_trip(sock, payload)

        fwd.delay = 0.0
        fast = round_trip(sock, b"ping")
    assert 0.6 <= slow < 1.5  # 0.3 s each way
    assert echoed >= 0.6  # the payload arrived whole and in order
    assert fast < 0.1


def test_network_slows_one_link_only(echo_port: int, network: Network) -> None:
    slowed = network.link("west", "echo", echo_port)
    other = network.link("east", "echo", echo_port)
    network.slow("west", "echo", 0.25)
    with connected(slowed, timeout=5.0) as a, connected(other, timeout=5.0) as b:
        assert round_trip(a, b"x") >= 0.5
        assert round_trip(b, b"y") < 0.1
    with pytest.raises(ValueError, match="delay: must not be negative"):
        network.slow("west", "echo", -1)


def test_forwarder_starts_fast_and_relays_many_connections_at_once(echo_port: int) -> None:
    started = time.monotonic()
    with Forwarder(echo_port, name="west->echo") as fwd:
        assert time.monotonic() - started < 0.2
        assert (fwd.name, fwd.target_port) == ("west->echo", echo_port)
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(connected(fwd.port)) for _ in range(50)]
            for number, sock in enumerate(socks):
                sock.sendall(f"client-{number:02d}".encode())
            replies = [recv_exactly(sock, 9).decode() for sock in socks]
    assert replies == [f"client-{number:02d}" for number in range(50)]


def test_forwarder_resets_client_when_target_refuses() -> None:
    # The reset can beat connect() back to the client, so either call may raise it.
    with (
        Forwarder(free_port()) as fwd,
        pytest.raises(ConnectionResetError),
        connected(fwd.port) as sock,
    ):
        sock.recv(1)


def test_forwarder_stop_closes_listener_connections_and_thread(echo_port: int) -> None:
    fwd = Forwarder(echo_port, name="stop-me")
    with connected(fwd.port) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        fwd.stop()
        assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError), connected(fwd.port):
        pass
    assert not any(t.name == "netcut-stop-me" for t in threading.enumerate())


def test_cut_hangs_new_and_existing_connections_and_heal_resumes_them(
    echo_port: int, firewall: Firewall
) -> None:
    with (
        Forwarder(echo_port) as cut_link,
        Forwarder(echo_port) as other_link,
        connected(cut_link.port, timeout=HANG) as existing,
    ):
        existing.sendall(b"before")
        assert recv_exactly(existing, 6) == b"before"

        firewall.cut(cut_link.port)
        assert firewall.cut_ports() == frozenset({cut_link.port})
        # Start a new connect now and let it wait while the existing connection stalls.
        with socket.socket() as newcomer:
            newcomer.setblocking(False)
            assert newcomer.connect_ex(("127.0.0.1", cut_link.port)) == errno.EINPROGRESS
            existing.sendall(b"during")
            with pytest.raises(TimeoutError):
                existing.recv(6)
            _, finished, _ = select.select([], [newcomer], [], 0)
            assert not finished, "a new connect to a cut link must hang, not be refused"
        assert echoes(other_link.port), "a cut must not touch other links to the target"

        firewall.heal(cut_link.port)
        assert firewall.cut_ports() == frozenset()
        assert echoes(cut_link.port)
        existing.settimeout(RESUME)
        assert recv_exactly(existing, 6) == b"during", "a healed connection resumes"


def test_close_deletes_the_table_and_heals(echo_port: int) -> None:
    fw = Firewall()
    with Forwarder(echo_port) as fwd:
        fw.cut(fwd.port)
        assert f"table inet {fw.table}" in nft_tables()
        fw.close()
        fw.close()
        assert fw.table not in nft_tables()
        assert echoes(fwd.port)
    with pytest.raises(RuntimeError, match="closed"):
        fw.cut(fwd.port)


def test_table_is_deleted_when_firewall_is_dropped_or_process_exits() -> None:
    fw = Firewall()
    fw.cut(free_port())
    table = fw.table
    del fw
    gc.collect()
    assert table not in nft_tables()

    # A test process that ends without close() still leaves no rules behind.
    script = (
        "from tests.integration.netcut import Firewall\n"
        "firewall = Firewall()\nfirewall.cut(9)\nprint(firewall.table)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    orphan = done.stdout.strip().splitlines()[-1]
    assert orphan.startswith("agentaskit_test_")
    assert orphan not in nft_tables()


def test_two_firewalls_do_not_interfere(echo_port: int) -> None:
    with (
        Firewall() as first,
        Firewall() as second,
        Forwarder(echo_port) as a,
        Forwarder(echo_port) as b,
    ):
        assert first.table != second.table
        first.cut(a.port)
        second.cut(b.port)
        assert (first.cut_ports(), second.cut_ports()) == (frozenset({a.port}), frozenset({b.port}))
        first.heal_all()
        second.heal(a.port)  # not second's to heal: a no-op
        assert (first.cut_ports(), second.cut_ports()) == (frozenset(), frozenset({b.port}))
        first.close()
        assert second.table in nft_tables()
        assert echoes(a.port)
        assert_connect_hangs(b.port)


def test_firewall_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="/nonexistent/nft"):
        Firewall(nft="/nonexistent/nft")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="root"):
        Firewall()


def test_isolate_cuts_links_from_and_to_the_node_only(echo_port: int, network: Network) -> None:
    west_to_east = network.link("west", "east", echo_port)
    assert network.link("west", "east", echo_port) == west_to_east
    network.link("east", "west", echo_port)
    network.link("witness", "west", echo_port)
    east_to_witness = network.link("east", "witness", echo_port)

    network.isolate("west")
    later = network.link("west", "witness", echo_port)

    cut = {
        pair: network.is_cut(*pair)
        for pair in [
            ("west", "east"),
            ("east", "west"),
            ("witness", "west"),
            ("east", "witness"),
            ("west", "witness"),
        ]
    }
    assert cut == {
        ("west", "east"): True,
        ("east", "west"): True,
        ("witness", "west"): True,
        ("east", "witness"): False,
        ("west", "witness"): True,
    }
    assert echoes(east_to_witness)
    assert_connect_hangs(later)

    network.heal_all()
    assert echoes(west_to_east)
    assert not network.is_cut("west", "witness")


def test_network_rejects_unknown_and_conflicting_links(network: Network) -> None:
    network.link("west", "east", 1111)
    with pytest.raises(ValueError, match="target_port=2222"):
        network.link("west", "east", 2222)
    with pytest.raises(ValueError, match="no link east->west"):
        network.cut("east", "west")


async def test_redis_through_a_link_answers_ping_and_hangs_after_cut(
    redis_server: RedisServer, network: Network
) -> None:
    port = network.link("west", "redis", redis_server.port)
    client = Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=HANG,
        socket_connect_timeout=HANG,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        assert await client.ping() is True
        network.cut("west", "redis")
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        network.heal("west", "redis")
        assert await client.ping() is True
    finally:
        await client.aclose()


def test_reply_on_its_way_to_a_cut_observer_is_held_until_heal(
    redis_server: RedisServer, network: Network
) -> None:
    port = network.link("west", "redis", redis_server.port)
    direct = SyncRedis(port=redis_server.port, socket_timeout=HANG, retry=SyncRetry(NoBackoff(), 0))
    with connected(port) as blocked, contextlib.closing(direct):
        blocked.sendall(b"*3\r\n$5\r\nBLPOP\r\n$5\r\nqueue\r\n$1\r\n0\r\n")
        deadline = time.monotonic() + HANG
        while direct.info("clients")["blocked_clients"] != 1:
            assert time.monotonic() < deadline, "BLPOP never reached redis"
            time.sleep(0.01)

        network.cut("west", "redis")
        # Redis answers the relay at once; only the target → observer leg is cut.
        assert direct.rpush("queue", "item") == 1
        with pytest.raises(TimeoutError):
            blocked.recv(64)

        network.heal("west", "redis")
        blocked.settimeout(RESUME)
        reply = b"*2\r\n$5\r\nqueue\r\n$4\r\nitem\r\n"
        assert recv_exactly(blocked, len(reply)) == reply


def test_a_table_left_by_a_dead_test_process_is_swept_and_a_live_ones_kept() -> None:
    """A killed test run leaves its cut ports dropped in the kernel: the next run's first
    firewall deletes such tables (owner pid dead), and only those."""
    nft = shutil.which("nft")
    assert nft is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    orphan = f"agentaskit_test_{int(dead.stdout)}_7"
    alive = f"agentaskit_test_{os.getpid()}_9999"
    for table in (orphan, alive):
        subprocess.run([nft, "-f", "-"], check=True, text=True, input=(
            f"table inet {table} {{\n set cut_ports {{\n  type inet_service\n"
            "  elements = { 1 }\n }\n}\n"))
    try:
        assert netcut.sweep_orphan_tables(nft) == [orphan]
        listed = subprocess.run([nft, "list", "tables"], capture_output=True, text=True,
                                check=True).stdout
        assert orphan not in listed
        assert alive in listed
    finally:
        for table in (orphan, alive):
            subprocess.run([nft, "delete", "table", "inet", table], capture_output=True,
                           check=False)
