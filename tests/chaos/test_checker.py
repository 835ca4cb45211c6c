"""The checker's rules on synthetic histories: each rule holds on a clean history and
fails on one built to break it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tests.chaos.checker import (
    HEAL_TOLERANCE,
    check,
    epoch_order,
    false_failovers,
    false_self_fences,
    lost_writes,
    promotions,
    split_brain,
    write_windows,
)
from tests.chaos.convergence import convergence, status_epoch
from tests.chaos.downtime import daemon_faults, up_proofs
from tests.chaos.history import Commit, FaultRecord, FinalState, History, ServerStart

T0 = 1_800_000_000.0
THRESHOLD = 5.5


def commit(n: int, server: str, at: float, *, timeline: int = 1, writer: str = "app") -> Commit:
    return Commit(f"{writer}-{n}", writer, server, timeline, T0 + at, T0 + at + 0.01)


def event(name: str, at: float, watchdog: str = "east", **fields: Any) -> dict[str, Any]:
    stamp = dt.datetime.fromtimestamp(T0 + at, tz=dt.UTC).isoformat()
    return {"event": name, "timestamp": stamp, "watchdog": watchdog, **fields}


def failover_events(decided: float, *, condition: str = "db_unreachable",
                    promoted: float | None = None, **done: Any) -> list[dict[str, Any]]:
    """East sees us-west-2 primary, decides at ``decided``, promotes east-db."""
    return [
        event("verdict", 0.5, primary_region="us-west-2"),
        event("failover_decided", decided, condition=condition, epoch=3),
        event("promotion_done", promoted or decided + 0.3, epoch=3, already_promoted=False,
              **done),
    ]


def status(region: str = "us-east-1", epoch: int | None = None,
           holder: str | None = None) -> dict[str, Any]:
    return {"primary_region": region, "epoch": epoch, "lock_holder": holder}


def converged(primary: str = "east-db", rows: set[str] | None = None) -> FinalState:
    region = "us-east-1" if primary == "east-db" else "us-west-2"
    return FinalState(
        writable=[primary], in_recovery={primary: False},
        rows={primary: rows or set()},
        status={"east": status(region, 3), "west": status(region, holder="east (epoch 3)"),
                "witness": status(region)},
    )


# ------------------------------------------------------------------ split brain


def test_writes_on_one_server_then_the_other_are_no_split_brain() -> None:
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    commits += [commit(100 + i, "east-db", 5 + i * 0.1, timeline=2) for i in range(10)]
    assert split_brain(commits) == []


def test_the_old_primary_taking_a_write_after_the_new_one_did_is_split_brain() -> None:
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    commits += [commit(100 + i, "east-db", 5 + i * 0.1, timeline=2) for i in range(10)]
    commits.append(commit(50, "west-db", 5.5))
    (found,) = split_brain(commits)
    assert found.rule == "split_brain"
    assert "west-db (timeline 1" in found.detail
    assert "east-db (timeline 2" in found.detail


def test_a_single_write_on_the_woken_old_primary_is_split_brain() -> None:
    commits = [commit(100 + i, "east-db", 5 + i * 0.1, timeline=2) for i in range(20)]
    commits.append(commit(1, "west-db", 6.0))
    (found,) = split_brain(commits)
    assert "west-db (timeline 1, 1 writes)" in found.detail


def test_commits_whose_send_and_ack_only_straddle_are_not_counted_as_overlap() -> None:
    # West's last commit was sent before east's first one was acknowledged: a commit
    # lies somewhere between its send and its ack, so nothing proves an overlap.
    west = Commit("w", "app", "west-db", 1, T0, T0 + 2.0)
    east = Commit("e", "app", "east-db", 2, T0 + 1.0, T0 + 1.5)
    assert split_brain([west, east]) == []
    assert [w.writes for w in write_windows([west, east])] == [1, 1]


def test_one_server_on_two_timelines_is_not_split_brain() -> None:
    commits = [commit(1, "west-db", 0), commit(2, "west-db", 1, timeline=3),
               commit(3, "west-db", 2), commit(4, "west-db", 3, timeline=3)]
    assert split_brain(commits) == []


# ------------------------------------------------------------------ lost writes


def test_every_acknowledged_write_on_the_final_primary_passes() -> None:
    commits = [commit(1, "west-db", 1), commit(2, "east-db", 20, timeline=2)]
    final = converged(rows={"app-1", "app-2"})
    assert lost_writes(commits, final, promotions(failover_events(10))) == ([], [])


def test_a_write_missing_from_the_final_primary_that_took_it_is_a_violation() -> None:
    commits = [commit(1, "east-db", 20, timeline=2)]
    violations, losses = lost_writes(commits, converged(), promotions(failover_events(10)))
    assert [v.rule for v in violations] == ["lost_write"]
    assert "missing from that same server" in violations[0].detail
    assert losses == []


def test_an_unreplicated_write_before_an_unfenced_promotion_is_data_loss_with_its_cause(
) -> None:
    commits = [commit(1, "west-db", 9.8)]
    violations, losses = lost_writes(commits, converged(), promotions(failover_events(10)))
    assert violations == []
    (loss,) = losses
    assert loss.commit.id == "app-1"
    assert "before east-db was promoted" in loss.cause


def test_a_write_lost_although_the_fence_read_the_final_position_is_a_violation() -> None:
    commits = [commit(1, "west-db", 9.8)]
    promoted = promotions(failover_events(10, old_primary_fenced=True, final_lsn=1234))
    violations, losses = lost_writes(commits, converged(), promoted)
    assert "zero-loss" in violations[0].detail
    assert losses == []


def test_a_write_the_old_primary_took_after_the_promotion_is_a_violation() -> None:
    commits = [commit(1, "west-db", 12)]
    violations, _ = lost_writes(commits, converged(), promotions(failover_events(10)))
    assert "after east-db was promoted" in violations[0].detail


def test_no_final_primary_to_read_from_is_a_violation() -> None:
    final = FinalState(writable=[], in_recovery={"west-db": None, "east-db": True})
    violations, _ = lost_writes([commit(1, "west-db", 1)], final, [])
    assert "no single final primary" in violations[0].detail


# ------------------------------------------------------------------ false failovers


def killed(start: float, end: float, server: str = "west-db") -> FaultRecord:
    return FaultRecord("kill_db", server, T0 + start, T0 + end, down=(server,))


def cut(start: float, end: float, *links: tuple[str, str]) -> FaultRecord:
    return FaultRecord("cut_sites", "x|y", T0 + start, T0 + end, cut=links)


def judge(events: list[dict[str, Any]], faults: list[FaultRecord]) -> list[str]:
    """The false-failover rule with no proof of a server up (no commit, no start)."""
    return [v.rule for v in false_failovers(events, faults, threshold=THRESHOLD,
                                            region_threshold=8.0, proofs=[])]


def test_a_failover_after_the_primary_was_down_for_the_threshold_is_justified() -> None:
    assert judge(failover_events(10), [killed(4, 30)]) == []


def test_a_failover_with_no_fault_at_all_is_false() -> None:
    assert judge(failover_events(10), []) == ["false_failover"]


def test_a_failover_before_the_threshold_elapsed_is_false() -> None:
    assert judge(failover_events(10), [killed(7, 30)]) == ["false_failover"]


def test_a_fault_healed_long_before_the_decision_does_not_justify_it() -> None:
    faults = [killed(1, 10 - HEAL_TOLERANCE - 1)]
    assert judge(failover_events(10), faults) == ["false_failover"]


def test_a_heal_the_daemons_cannot_have_seen_yet_still_counts() -> None:
    assert judge(failover_events(10), [killed(3, 9)]) == []


def test_a_cut_from_two_vantage_points_justifies_it_and_from_one_does_not() -> None:
    two = cut(3, 30, ("east", "west-db"), ("witness", "west-db"))
    one = cut(3, 30, ("east", "west-db"), ("east", "west"))
    assert judge(failover_events(10), [two]) == []
    assert judge(failover_events(10), [one]) == ["false_failover"]


def test_two_overlapping_faults_together_cover_the_threshold() -> None:
    faults = [killed(3, 7), cut(6, 30, ("east", "west-db"), ("witness", "west-db"))]
    assert judge(failover_events(10), faults) == []


def test_a_region_unhealthy_failover_is_judged_on_the_health_links() -> None:
    health = cut(1, 30, ("east", "west-health"), ("witness", "west-health"))
    events = failover_events(10, condition="region_unhealthy")
    assert judge(events, [health]) == []
    assert judge(events, [killed(1, 30)]) == ["false_failover"]


def test_a_promotion_without_a_decision_is_reported() -> None:
    events = [event("promotion_done", 10, epoch=4, already_promoted=False)]
    assert judge(events, [killed(0, 30)]) == ["false_failover"]


def test_a_resumed_promotion_is_not_a_new_one() -> None:
    events = [event("promotion_done", 10, epoch=4, already_promoted=True)]
    assert promotions(events) == []


def test_a_promotion_after_a_failover_promotes_the_other_server() -> None:
    events = [event("verdict", 1, primary_region="us-east-1", watchdog="west"),
              event("promotion_done", 10, watchdog="west", epoch=5, already_promoted=False)]
    assert [p.server for p in promotions(events)] == ["west-db"]


def test_a_promotion_under_an_epoch_already_used_breaks_the_epoch_floor() -> None:
    events = [event("promotion_done", 10, watchdog="east", epoch=5, already_promoted=False),
              event("verdict", 11, primary_region="us-east-1", watchdog="west"),
              event("promotion_done", 20, watchdog="west", epoch=5, already_promoted=False)]
    (violation,) = epoch_order(promotions(events))
    assert violation.rule == "epoch_order"
    assert "under epoch 5" in violation.detail
    events[2]["epoch"] = 6
    assert epoch_order(promotions(events)) == []


def self_fenced(at: float, watchdog: str = "west",
                detail: str = "127.0.0.1:1/postgres stopped (pg_ctl -m fast)") -> dict[str, Any]:
    return event("self_fenced", at, watchdog, fenced=True, reason="isolated", detail=detail)


def test_a_server_its_own_self_fence_stopped_counts_as_down() -> None:
    events = [self_fenced(3), *failover_events(10)]
    assert judge(events, []) == []
    # A self-fence that only made it read-only leaves the server up: not a condition.
    events = [self_fenced(3, detail="127.0.0.1:1/postgres read-only"), *failover_events(10)]
    assert judge(events, []) == ["false_failover"]


def test_a_server_its_own_primary_hold_killed_counts_as_down() -> None:
    """Seed 8005: west's hold killed its frozen server; the freeze's heal (SIGCONT) came
    later and woke nothing. A failover decided after the heal rests on a server down."""
    held = event("own_primary_held_before_threshold", 2.5, "west",
                 detail="us-west-2 server killed (SIGKILL to postmaster 1)")
    paused = [FaultRecord("pause_db", "west-db", T0 + 1, T0 + 4, down=("west-db",))]
    assert judge([held, *failover_events(10)], paused) == []
    assert judge(failover_events(10), paused) == ["false_failover"]
    # A hold that found nothing to stop leaves the server as the faults say.
    idle = event("own_primary_held_before_threshold", 2.5, "west", detail="server already down")
    assert judge([idle, *failover_events(10)], paused) == ["false_failover"]


def held(at: float, watchdog: str = "west") -> dict[str, Any]:
    server = "us-west-2" if watchdog == "west" else "us-east-1"
    return event("own_primary_held_before_threshold", at, watchdog,
                 detail=f"{server} server killed (SIGKILL to postmaster 1); standby.signal "
                 "written, a restart comes up in recovery")


def failover_history(events: list[dict[str, Any]], commits: list[Commit],
                     faults: list[FaultRecord] | None = None) -> History:
    """West-db the primary until east promotes east-db (timeline 2); every write kept."""
    history = History(seed=8005, threshold=THRESHOLD, region_threshold=8.0)
    history.events = events
    history.commits = commits
    history.faults = faults or []
    history.final = converged(rows={c.id for c in commits})
    return history


def rules(history: History) -> set[str]:
    return {v.rule for v in check(history).violations}


def test_a_hold_kill_during_a_freeze_then_a_promotion_passes_as_a_whole() -> None:
    """Seed 8005 as a whole history: west-db frozen 1..4, held (killed) at 2.5, the
    freeze's heal woke nothing, east promoted at 10.3; no write on west-db after."""
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    commits += [commit(100 + i, "east-db", 11 + i * 0.1, timeline=2) for i in range(20)]
    paused = [FaultRecord("pause_db", "west-db", T0 + 1, T0 + 4, down=("west-db",))]
    assert rules(failover_history([held(2.5), *failover_events(10)], commits, paused)) == set()


def test_a_held_server_that_acknowledged_a_write_again_was_up_from_that_write() -> None:
    """West-db killed by its hold at 2.5, back and taking a write at 4.0 (whatever started
    it): up from then, so a failover decided at 12 on no fault is false."""
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    commits.append(commit(50, "west-db", 4.0))
    commits += [commit(100 + i, "east-db", 13 + i * 0.1, timeline=2) for i in range(20)]
    assert rules(failover_history([held(2.5), *failover_events(12)], commits)) == {
        "false_failover"}
    # Without that write nothing shows it back: still down, the failover is sound.
    assert rules(failover_history([held(2.5), *failover_events(12)], commits[:10]
                                  + commits[11:])) == set()


def test_a_write_sent_before_the_hold_does_not_show_the_server_back() -> None:
    # Sent before the stop was logged: it may have committed before the kill.
    straddling = Commit("app-9", "app", "west-db", 1, T0 + 2.4, T0 + 2.6)
    commits = [commit(i, "west-db", i * 0.1) for i in range(5)] + [straddling]
    commits += [commit(100 + i, "east-db", 13 + i * 0.1, timeline=2) for i in range(20)]
    assert rules(failover_history([held(2.5), *failover_events(12)], commits)) == set()


def test_a_held_server_the_world_started_again_was_up_from_that_start() -> None:
    """The start is recorded by the world (a kill_db heal or the binding, behind the start
    gate): a server held in recovery takes no write, but it answers, so it is not down."""
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    history = failover_history([held(2.5), *failover_events(12)], commits)
    history.starts = [ServerStart("west-db", T0 + 4.0, "kill_db heal")]
    assert rules(history) == {"false_failover"}
    # A start before the hold's kill shows nothing about after it.
    history.starts = [ServerStart("west-db", T0 + 2.0, "kill_db heal")]
    assert rules(history) == set()


def test_a_self_fenced_server_its_lift_started_again_was_up_from_the_lift() -> None:
    lifted = event("self_fence_lifted", 4.0, "west", epoch=1, detail=(
        "us-east-1: in recovery; standby.signal removed; server started; read-only reset"))
    events = [self_fenced(2.5), lifted, *failover_events(12)]
    isolated = [cut(0, 3, ("west", "east"), ("west", "witness"))]
    assert rules(failover_history(events, [], isolated)) == {"false_failover"}
    # A lift that started nothing says nothing of when the server came back.
    lifted["detail"] = "us-east-1: in recovery; read-only reset; LOGIN given back to: none"
    assert rules(failover_history(events, [], isolated)) == set()


def test_a_daemon_stop_lasts_until_the_first_proof_after_it_that_the_server_ran() -> None:
    proofs = up_proofs([commit(1, "west-db", 1), commit(2, "east-db", 3),
                        commit(3, "west-db", 7), commit(4, "west-db", 6)],
                       [ServerStart("west-db", T0 + 6.5, "the binding")], [])
    (record,) = daemon_faults([held(2.5)], proofs)
    assert (record.kind, record.target, record.start, record.end) == (
        "own_hold", "west-db", T0 + 2.5, T0 + 6.01)
    assert daemon_faults([held(2.5)], proofs[:2])[0].end is None


def test_a_held_server_started_again_and_written_while_the_other_is_primary_is_split_brain(
) -> None:
    """The down record never hides writes: west-db killed by its hold at 2.5, restarted
    and taking writes 15..16 on timeline 1 while east-db (timeline 2) takes them."""
    commits = [commit(i, "west-db", i * 0.1) for i in range(10)]
    commits += [commit(100 + i, "east-db", 11 + i * 0.1, timeline=2) for i in range(100)]
    commits += [commit(50 + i, "west-db", 15 + i * 0.1) for i in range(10)]
    paused = [FaultRecord("pause_db", "west-db", T0 + 1, T0 + 4, down=("west-db",))]
    assert rules(failover_history([held(2.5), *failover_events(10)], commits, paused)) == {
        "split_brain"}


def test_a_self_fence_of_a_watchdog_cut_off_from_both_others_is_justified() -> None:
    faults = [cut(0, 30, ("west", "east"), ("west", "witness"))]
    assert false_self_fences([self_fenced(5)], faults, fence_after=2.0) == []
    # Peer killed and witness paused: nobody to hear, so it fences too (by design).
    faults = [FaultRecord("kill_daemon", "east", T0, T0 + 30, down=("east",)),
              FaultRecord("pause_daemon", "witness", T0, T0 + 30, down=("witness",))]
    assert false_self_fences([self_fenced(5)], faults, fence_after=2.0) == []


def test_a_self_fence_is_judged_when_it_was_decided_not_when_the_stop_completed() -> None:
    faults = [cut(0, 5, ("west", "east"), ("west", "witness"))]
    decided = event("alert", 4.5, "west", key="self_fence", resolve=None,
                    message="self-fencing the primary")
    assert false_self_fences([decided, self_fenced(9)], faults, fence_after=2.0) == []
    assert len(false_self_fences([self_fenced(9)], faults, fence_after=2.0)) == 1


def test_a_self_fence_that_still_heard_a_daemon_is_false() -> None:
    faults = [cut(0, 30, ("west", "east"))]
    (found,) = false_self_fences([self_fenced(5)], faults, fence_after=2.0)
    assert "west self-fenced" in found.detail
    # The watchdog itself frozen is not isolation: the others were there all along.
    paused = [FaultRecord("pause_daemon", "west", T0, T0 + 4.5, down=("west",))]
    assert len(false_self_fences([self_fenced(5)], paused, fence_after=2.0)) == 1


# ------------------------------------------------------------------ convergence


def test_one_primary_named_by_all_daemons_with_one_epoch_converged() -> None:
    assert convergence(converged(), []) == []


def test_two_writable_primaries_do_not_converge() -> None:
    final = converged()
    final.writable = ["east-db", "west-db"]
    assert "2 writable primaries" in convergence(final, [])[0].detail


def test_daemons_that_disagree_on_region_or_epoch_do_not_converge() -> None:
    final = converged()
    final.status["witness"] = status("us-west-2")
    assert "disagree on the primary region" in convergence(final, [])[0].detail
    final = converged()
    final.status["west"] = status(holder="east (epoch 2)")
    assert "disagree on the epoch" in convergence(final, [])[0].detail


def test_daemons_that_name_a_primary_other_than_the_writable_one_do_not_converge() -> None:
    final = converged()
    final.writable = ["west-db"]
    assert "name us-east-1 primary but west-db" in convergence(final, [])[0].detail


def test_no_lock_holder_a_silent_daemon_an_exited_one_and_a_text_line_are_reported() -> None:
    final = converged()
    final.status["east"] = None
    rules = convergence(final, [("west", "Traceback (most recent call last):")], ["witness"])
    details = " / ".join(v.detail for v in rules)
    assert "east did not answer" in details
    assert "0 daemons hold the lock" in details
    assert "daemon witness exited" in details
    assert [v.rule for v in rules][-1] == "non_json"


def test_the_epoch_of_a_status_is_its_own_or_the_holder_it_heard_of() -> None:
    assert status_epoch(status(epoch=4)) == 4
    assert status_epoch(status(holder="west (epoch 7)")) == 7
    assert status_epoch(status()) is None


# ------------------------------------------------------------------ whole verdict


def test_check_gives_one_verdict_with_every_violation_and_survives_a_save(
    tmp_path: Path,
) -> None:
    history = History(seed=7, threshold=THRESHOLD, region_threshold=8.0)
    history.commits = [commit(1, "west-db", 1), commit(2, "east-db", 20, timeline=2),
                       commit(3, "west-db", 21)]
    history.events = failover_events(10)
    history.final = converged(rows={"app-1", "app-2"})
    path = tmp_path / "history.json"
    history.save(path)
    verdict = check(History.load(path))
    assert not verdict.ok
    assert {v.rule for v in verdict.violations} == {"split_brain", "lost_write",
                                                    "false_failover"}
    assert verdict.summary().startswith("FAIL false_failover,lost_write,split_brain")


def test_the_world_s_server_starts_survive_a_save_and_older_histories_have_none(
    tmp_path: Path,
) -> None:
    history = History(seed=7, threshold=THRESHOLD, region_threshold=8.0)
    history.starts = [ServerStart("west-db", T0 + 4.0, "the kill_db heal")]
    path = tmp_path / "history.json"
    history.save(path)
    assert History.load(path).starts == history.starts
    older = json.loads(path.read_text())
    del older["starts"]
    path.write_text(json.dumps(older))
    assert History.load(path).starts == []
