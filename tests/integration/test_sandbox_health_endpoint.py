"""The sandbox's load-balancer stand-in: keep-alive, and quiet when a prober goes away."""

from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlsplit

import pytest

from agentaskit_dr.sandbox.drill import health_endpoint

pytestmark = pytest.mark.integration

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n"


def _answer(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"ok"):
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_a_prober_resetting_its_kept_connection_leaves_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with health_endpoint() as url:
        address = urlsplit(url)
        conn = socket.create_connection((address.hostname, address.port), timeout=5)
        for _ in range(2):  # one connection, two checks: kept alive
            conn.sendall(REQUEST)
            assert _answer(conn).startswith(b"HTTP/1.1 200")
        # A killed prober: the kernel resets the connection (linger 0) while the server
        # waits for the next request on it.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        time.sleep(0.3)
        with socket.create_connection((address.hostname, address.port), timeout=5) as again:
            again.sendall(REQUEST)
            assert _answer(again).startswith(b"HTTP/1.1 200")
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert "ConnectionResetError" not in err, err
