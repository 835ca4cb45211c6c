"""How one watchdog follows the cluster record: each change applied once, nothing replayed."""

from __future__ import annotations

from agentaskit_dr.core import Acknowledged, Event, Paused, Resumed
from agentaskit_dr.ports import ClusterControls, ClusterRecord, Lease, LockUnavailable
from agentaskit_dr.runtime.cluster_controls import ClusterControlsWatch


class ScriptedStore:
    """A ``ClusterStore`` whose reads return ``records`` in turn (an exception is raised)."""

    def __init__(self, *records: ClusterRecord | Exception) -> None:
        self.records = list(records)

    async def read(self) -> ClusterRecord:
        found = self.records.pop(0)
        if isinstance(found, Exception):
            raise found
        return found

    async def pause(self, *, reason: str, by: str) -> ClusterRecord:
        raise NotImplementedError

    async def resume(self, *, by: str) -> ClusterRecord:
        raise NotImplementedError

    async def acknowledge(self, *, by: str) -> ClusterRecord:
        raise NotImplementedError

    async def record_primary(self, region: str, *, epoch: int, run_id: str,
                             lease: Lease) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class Keeper:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def set_paused(self, paused: bool) -> None:
        self.calls.append(paused)


def record(*, paused: bool = False, acks: int = 0, by: str = "") -> ClusterRecord:
    return ClusterRecord(ClusterControls(paused=paused, pause_reason="DB upgrade" if paused
                                         else "", paused_by=by, ack_generation=acks))


async def follow(*records: ClusterRecord | Exception) -> tuple[list[Event], Keeper,
                                                               ClusterControlsWatch]:
    posted: list[Event] = []
    keeper = Keeper()
    watch = ClusterControlsWatch(ScriptedStore(*records), post=posted.append, keeper=keeper,
                                 interval=1.0, wall_clock=lambda: 1000.0)
    for _ in records:
        await watch.refresh()
    return posted, keeper, watch


async def test_started_while_paused_the_watchdog_starts_paused_and_stands_aside() -> None:
    posted, keeper, _ = await follow(record(paused=True, by="alice"))
    assert posted == [Paused("cluster paused: DB upgrade (by alice)")]
    assert keeper.calls == [True]


async def test_an_acknowledgement_given_before_the_start_is_not_replayed() -> None:
    posted, _, _ = await follow(record(acks=3), record(acks=3))
    assert posted == []


async def test_each_new_ack_generation_is_applied_once() -> None:
    posted, _, _ = await follow(record(acks=1), record(acks=2), record(acks=2), record(acks=4))
    assert posted == [Acknowledged(), Acknowledged()]


async def test_resume_is_applied_once_and_the_keeper_campaigns_again() -> None:
    posted, keeper, _ = await follow(record(paused=True), record(paused=True), record())
    assert [type(event) for event in posted] == [Paused, Resumed]
    assert keeper.calls == [True, False]


async def test_an_unreadable_record_keeps_the_last_controls_and_says_so() -> None:
    posted, keeper, watch = await follow(record(paused=True, by="alice"),
                                         LockUnavailable("lock store did not answer"))
    assert keeper.calls == [True]
    status = watch.status()
    assert status["paused"] is True
    assert status["read_error"] == "lock store did not answer"
    assert status["read_ago"] == 0.0
    assert len(posted) == 1
