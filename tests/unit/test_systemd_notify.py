"""The sd_notify protocol against real AF_UNIX datagram sockets (a path and an abstract
name), and the daemon's notifications driven by a stand-in engine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentaskit_dr.runtime.systemd_notify import (
    Notifier,
    ServiceNotifications,
    monotonic_usec,
    summary,
    watchdog_interval,
)
from tests.notify_socket import NotifySocket

PROMPT = 5.0


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(request.param, tmp_path) as sock:
        yield sock


def test_one_datagram_of_key_value_lines_reaches_the_socket(receiver: NotifySocket) -> None:
    notifier = Notifier(receiver.address)
    try:
        assert notifier.send(READY=1, STATUS="watching, primary us-west-2, epoch 7")
    finally:
        notifier.close()
    message = receiver.wait_for(lambda m: True, PROMPT, what="a datagram")
    assert message.fields == {"READY": "1", "STATUS": "watching, primary us-west-2, epoch 7"}


def test_from_environment_reads_and_unsets_the_variables(receiver: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid()), "HOME": "/root"}
    notifier, watchdog = Notifier.from_environment(env)
    assert notifier is not None
    try:
        assert watchdog == 30.0
        # A child (pg_ctl, a server a fence starts) must not inherit our socket.
        assert env == {"HOME": "/root"}
        notifier.send(WATCHDOG=1)
    finally:
        notifier.close()
    assert receiver.wait_for(lambda m: True, PROMPT, what="WATCHDOG=1").fields == {
        "WATCHDOG": "1"}


def test_without_notify_socket_there_is_no_notifier() -> None:
    assert Notifier.from_environment({}) == (None, None)


@pytest.mark.parametrize("address", ["relative/notify.sock", "vsock:2:1234"])
def test_an_address_that_is_neither_a_path_nor_abstract_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        Notifier(address)
    assert Notifier.from_environment({"NOTIFY_SOCKET": address}) == (None, None)


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("2000000", None, 2.0),
    ("2000000", "4242", 2.0),
    ("2000000", "4243", None),  # meant for another process
    ("0", None, None),
    ("soon", None, None),
    (None, "4242", None),
])
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    assert watchdog_interval(usec, pid, own_pid=4242) == expected


def test_a_socket_nobody_listens_on_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    try:
        assert notifier.send(READY=1) is False
        assert notifier.send(WATCHDOG=1) is False
    finally:
        notifier.close()


def test_monotonic_usec_is_clock_monotonic_in_microseconds() -> None:
    import time

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= monotonic_usec() <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_summary_line() -> None:
    assert summary("watching", "us-west-2", 7, paused=False, self_fenced=False) == (
        "watching, primary us-west-2, epoch 7")
    assert summary("failed_over", "us-east-1", None, paused=True, self_fenced=True) == (
        "failed_over, primary us-east-1, epoch -, paused, self-fenced")


class StandInEngine:
    """What ServiceNotifications reads: readiness, progress and the summary."""

    def __init__(self) -> None:
        self.ready = False
        self.alive = True
        self.status = "watching, primary us-west-2, epoch -"


async def test_ready_then_status_changes_then_watchdog_only_while_alive(
    receiver: NotifySocket,
) -> None:
    engine = StandInEngine()
    loop = asyncio.get_running_loop()
    service = ServiceNotifications(
        Notifier(receiver.address), ready=lambda: engine.ready, alive=lambda: engine.alive,
        status=lambda: engine.status, watchdog=0.2, clock=loop.time)
    task = asyncio.create_task(service.run())
    try:
        # Pets while starting (the engine is alive), but no READY before the first round.
        await asyncio.to_thread(receiver.wait_for, lambda m: "WATCHDOG" in m, PROMPT,
                                what="WATCHDOG=1 while starting")
        assert receiver.received("READY") == []
        service.reloading()  # before READY=1: ignored
        assert receiver.received("RELOADING") == []

        engine.ready = True
        ready = await asyncio.to_thread(receiver.wait_for, lambda m: "READY" in m, PROMPT,
                                        what="READY=1")
        assert ready["STATUS"] == "watching, primary us-west-2, epoch -"

        engine.status = "watching, primary us-west-2, epoch 3"
        await asyncio.to_thread(
            receiver.wait_for, lambda m: m.fields.get("STATUS", "").endswith("epoch 3"),
            PROMPT, what="the new STATUS")

        service.reloading()
        service.reloaded()
        reloading = await asyncio.to_thread(receiver.wait_for, lambda m: "RELOADING" in m,
                                            PROMPT, what="RELOADING=1")
        await asyncio.to_thread(receiver.wait_for, lambda m: "READY" in m, PROMPT,
                                what="READY=1 after the reload", after=ready.at)
        assert int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert [m.fields.get("RELOADING", m.fields.get("READY")) for m in receiver.received()
                if "RELOADING" in m or "READY" in m] == ["1", "1", "1"]

        engine.alive = False
        stalled_at = await asyncio.to_thread(_quiet_after, receiver, 0.6)
        assert not [m for m in receiver.received("WATCHDOG") if m.at > stalled_at]

        engine.alive = True
        await asyncio.to_thread(receiver.wait_for, lambda m: "WATCHDOG" in m, PROMPT,
                                what="WATCHDOG=1 after progress resumed", after=stalled_at)

        service.stopping("SIGTERM")
        service.stopping("SIGINT")  # once only
        await asyncio.to_thread(receiver.wait_for, lambda m: "STOPPING" in m, PROMPT,
                                what="STOPPING=1")
        stopping = receiver.received("STOPPING")
        assert [m["STATUS"] for m in stopping] == ["stopping: SIGTERM"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        service.close()


def _quiet_after(receiver: NotifySocket, quiet: float) -> float:
    """Wait (at most 10 s) until no WATCHDOG=1 arrived for ``quiet`` s; then watch for
    as long again. Returns the moment the quiet started."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pets = receiver.received("WATCHDOG")
        last = pets[-1].at if pets else 0.0
        if time.monotonic() - last >= quiet:
            time.sleep(quiet)
            return last
        time.sleep(0.02)
    raise AssertionError("WATCHDOG=1 kept coming while the engine made no progress")
