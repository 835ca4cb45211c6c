"""systemd's service notification protocol (``sd_notify``), and the daemon's side of it.

The protocol is one datagram of newline-separated ``KEY=value`` lines sent to the
``AF_UNIX`` datagram socket that ``$NOTIFY_SOCKET`` names: a filesystem path, or
``@name`` for a socket in the abstract namespace. It takes the few lines below rather
than a library: ``sdnotify`` (PyPI) has had no release since 2017 and swallows every
error; ``systemd-python`` and ``cysystemd`` need libsystemd's headers and a C build.

:class:`ServiceNotifications` is what ``agentaskit-dr run`` tells systemd (``Type=notify``,
``WatchdogSec=``): ``READY=1`` once the config is loaded and every probe reported once,
``RELOADING=1`` / ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` on the way out, a
one-line ``STATUS=`` whenever it changes, and ``WATCHDOG=1`` only while the engine loop
makes progress, so systemd restarts a daemon whose engine stalled.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, MutableMapping

import structlog

log = structlog.get_logger(__name__)

#: The variables ``sd_notify(unset_environment=1)`` removes: child processes (pg_ctl,
#: pg_basebackup, a PostgreSQL server started by a fence or a switchover) must not
#: mistake this daemon's socket and watchdog for theirs.
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notifications to one socket; never raises (a failed send is logged)."""

    def __init__(self, address: str) -> None:
        if not address.startswith(("/", "@")):
            raise ValueError(f"NOTIFY_SOCKET: expected an absolute path or '@name', "
                             f"got {address!r}")
        self.address = address
        # '@' stands for the leading NUL byte of an abstract-namespace name.
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block the event loop on a receiver that does not read.
        self._socket.setblocking(False)
        self._failing = False

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> tuple[Notifier | None, float | None]:
        """The notifier ``$NOTIFY_SOCKET`` names (None without one) and the watchdog
        interval in seconds (None unless ``$WATCHDOG_USEC`` is set for this process:
        ``$WATCHDOG_PID`` unset or this PID). The variables are removed from ``environ``
        (default ``os.environ``), as ``sd_notify(unset_environment=1)`` does."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in _VARIABLES}
        address = values["NOTIFY_SOCKET"]
        notifier = None
        if address:
            try:
                notifier = cls(address)
            except ValueError as exc:
                log.warning("systemd_notify_unusable", reason=str(exc))
        return notifier, watchdog_interval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"])

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``send(READY=1, STATUS="...")``); True once sent."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self._target)
        except OSError as exc:
            if not self._failing:  # once per run of failures, not at every pet
                log.warning("systemd_notify_failed", socket=self.address,
                            message=message.splitlines()[0], reason=exc.strerror or str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("systemd_notify_recovered", socket=self.address)
        self._failing = False
        return True

    def close(self) -> None:
        self._socket.close()


def watchdog_interval(usec: str | None, pid: str | None, *,
                      own_pid: int | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds when it applies to ``own_pid`` (default: this
    process); None when unset, meant for another process, or not a positive integer."""
    if not usec:
        return None
    if pid and pid.strip() != str(os.getpid() if own_pid is None else own_pid):
        return None
    try:
        micros = int(usec)
    except ValueError:
        log.warning("systemd_watchdog_unusable", watchdog_usec=usec)
        return None
    return micros / 1_000_000 if micros > 0 else None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd >= 253 wants with ``RELOADING=1``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceNotifications:
    """The daemon's notifications; :meth:`run` is a root task of the daemon.

    ``ready()`` says whether the first probe round has finished, ``alive()`` whether the
    engine loop makes progress, ``status()`` is the one-line summary. With a watchdog
    interval, ``WATCHDOG=1`` goes out every half interval while ``alive()`` holds and
    not while it does not: systemd then kills and restarts the daemon.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        ready: Callable[[], bool],
        alive: Callable[[], bool],
        status: Callable[[], str],
        watchdog: float | None,
        clock: Callable[[], float],
    ) -> None:
        self._notifier = notifier
        self._ready = ready
        self._alive = alive
        self._status = status
        self._watchdog = watchdog
        self._clock = clock
        # How often run() looks: a status change shows within half a second.
        self._tick = 0.5 if watchdog is None else min(0.5, watchdog / 4)
        self.ready_sent = False
        self._stopping = False
        self._last_status: str | None = None
        self._next_pet = clock()
        self._withheld_since: float | None = None

    async def run(self) -> None:
        """Until cancelled: READY=1 once ready, then the status and the watchdog."""
        while True:
            if not self._stopping:
                if not self.ready_sent and self._ready():
                    self.ready_sent = True
                    self._last_status = self._status()
                    self._notifier.send(READY=1, STATUS=self._last_status)
                    log.info("systemd_ready", status=self._last_status)
                elif self.ready_sent:
                    self._send_status_if_changed()
                self._pet_if_due()
            await asyncio.sleep(self._tick)

    def reloading(self) -> None:
        """From the SIGHUP handler: the reload starts (only once READY=1 went out)."""
        if self.ready_sent and not self._stopping:
            self._notifier.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(),
                                STATUS="reloading the configuration")
            self._last_status = None

    def reloaded(self) -> None:
        """The engine applied (or refused) the file: ready again."""
        if self.ready_sent and not self._stopping:
            self._last_status = self._status()
            self._notifier.send(READY=1, STATUS=self._last_status)

    def stopping(self, reason: str) -> None:
        """The daemon is on its way out; nothing else is sent after this."""
        if not self._stopping:
            self._stopping = True
            self._notifier.send(STOPPING=1, STATUS=f"stopping: {reason}")

    def close(self) -> None:
        self._notifier.close()

    def _send_status_if_changed(self) -> None:
        status = self._status()
        if status != self._last_status:
            self._last_status = status
            self._notifier.send(STATUS=status)

    def _pet_if_due(self) -> None:
        if self._watchdog is None:
            return
        now = self._clock()
        if now < self._next_pet:
            return
        if not self._alive():
            if self._withheld_since is None:
                self._withheld_since = now
                log.error("systemd_watchdog_withheld", reason="the engine loop makes no "
                          "progress", watchdog_sec=self._watchdog)
            return
        if self._withheld_since is not None:
            log.warning("systemd_watchdog_resumed",
                        withheld_for=round(now - self._withheld_since, 3))
            self._withheld_since = None
        self._notifier.send(WATCHDOG=1)
        self._next_pet = now + self._watchdog / 2


def summary(phase: str, primary_region: str, epoch: int | None, *, paused: bool,
            self_fenced: bool) -> str:
    """The one-line ``STATUS=``: ``watching, primary us-west-2, epoch 7``."""
    parts = [phase, f"primary {primary_region}", f"epoch {epoch if epoch is not None else '-'}"]
    if paused:
        parts.append("paused")
    if self_fenced:
        parts.append("self-fenced")
    return ", ".join(parts)

