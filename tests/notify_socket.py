"""A real ``AF_UNIX`` datagram socket standing in for systemd's notification socket.

``NotifySocket("path", tmp_path)`` binds a socket file; ``NotifySocket("abstract")`` binds
a name in the abstract namespace (``$NOTIFY_SOCKET`` then starts with ``@``). A thread
keeps every datagram it receives, parsed into ``KEY=value`` fields, with the monotonic
time it arrived, so a test can wait for a message and look at what came before or after.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True, slots=True)
class Message:
    fields: dict[str, str]
    at: float  # time.monotonic() on arrival

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self.fields


def parse(datagram: bytes) -> dict[str, str]:
    fields = {}
    for line in datagram.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r} in {datagram!r}"
        fields[key] = value
    return fields


class NotifySocket:
    """Receives notifications until closed; ``address`` is the ``$NOTIFY_SOCKET`` value."""

    def __init__(self, kind: str, directory: Path | None = None) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if kind == "abstract":
            name = f"agentaskit-dr-test-{uuid.uuid4().hex}"
            self._socket.bind("\0" + name)
            self.address = "@" + name
        elif kind == "path":
            assert directory is not None, "a path socket needs a directory"
            path = directory / "notify.sock"
            self._socket.bind(str(path))
            self.address = str(path)
        else:
            raise ValueError(kind)
        self._socket.settimeout(0.05)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                datagram = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(Message(parse(datagram), time.monotonic()))

    def received(self, key: str | None = None) -> list[Message]:
        """Every message so far (only those with ``key`` when given)."""
        with self._lock:
            return [m for m in self.messages if key is None or key in m]

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float, *,
                 what: str, after: float = 0.0, hint: str = "") -> Message:
        """The first message that arrived after ``after`` and matches ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.received() if m.at > after and predicate(m)]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {what} within {timeout:g}s; received "
                                     f"{[m.fields for m in self.received()][-8:]}\n{hint}")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._socket.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
