"""``server_held``: a watchdog says it holds its own region's server stopped with
``standby.signal`` in place; a self-fence lift elsewhere may count that server a standby
while the report is fresh, and only from that region's own watchdog."""

from __future__ import annotations

import pytest

from tests.unit.test_peers import (
    EAST,
    STALE_AFTER,
    WEST,
    FakeClock,
    StartPeer,
    poll_all,
    poller_for,
    polling,
    report,
    start_peer,
)

__all__ = ["start_peer"]  # the fixture, registered here


@pytest.mark.integration
async def test_a_fresh_report_of_a_held_server_names_its_region(start_peer: StartPeer) -> None:
    peer = await start_peer()
    peer.body = report(server_held=WEST)
    clock = FakeClock(1000.0)
    poller = poller_for({"peer1": peer.url}, clock)
    async with polling(poller):
        await poll_all(poller)

    assert poller.held_servers() == {WEST: "watchdog-west (peer1)"}
    clock.now = 1000.0 + STALE_AFTER + 0.01
    assert poller.held_servers() == {}


@pytest.mark.integration
@pytest.mark.parametrize(
    "changes",
    [{}, {"server_held": None}, {"server_held": EAST}, {"role": "witness", "server_held": WEST}],
    ids=["not-said", "none", "another-region", "a-witness"],
)
async def test_only_a_watchdog_speaks_for_its_own_region_server(
    start_peer: StartPeer, changes: dict[str, object]
) -> None:
    peer = await start_peer()
    peer.body = report(**changes)
    poller = poller_for({"peer1": peer.url})
    async with polling(poller):
        await poll_all(poller)

    assert poller.vantages()[0].fresh
    assert poller.held_servers() == {}
