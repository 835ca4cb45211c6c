"""The assess step as a table over every combination of reachability.

The verdicts are those of docs/architecture.md, "Partitions".
"""

from __future__ import annotations

import itertools

import pytest

from agentaskit_dr.core import RegionView, Role, Vantage, Verdict, assess

WEST, EAST, SITE = "us-west-2", "us-east-1", "witness-site"
PRIMARY = WEST


def _vantage(name: str, role: Role, region: str, *, fresh: bool = True,
             db: bool | None = True, health: bool | None = True,
             hears_west: bool | None = None) -> Vantage:
    return Vantage(name=name, role=role, region=region, fresh=fresh,
                   regions={PRIMARY: RegionView(db, health, hears_west)})


def east_assessment(*, own_db: bool | None, peer_fresh: bool, peer_db: bool | None,
                    witness_fresh: bool, witness_db: bool | None,
                    witness_hears_west: bool | None = None) -> Verdict:
    own = _vantage("east", Role.WATCHDOG, EAST, db=own_db)
    peer = _vantage("west", Role.WATCHDOG, WEST, fresh=peer_fresh, db=peer_db)
    witness = _vantage("witness", Role.WITNESS, SITE, fresh=witness_fresh, db=witness_db,
                       hears_west=witness_hears_west)
    return assess(own, [peer, witness], PRIMARY).verdict


# ---------------------------------------------------------------- the named cases

CASES = [
    # own_db, peer_fresh, peer_db, witness_fresh, witness_db, hears_west -> verdict
    pytest.param(True, True, True, True, True, True, Verdict.HEALTHY, id="all-healthy"),
    pytest.param(False, True, False, True, False, True, Verdict.PRIMARY_DOWN,
                 id="db-killed-everyone-agrees"),
    pytest.param(False, False, None, True, False, False, Verdict.PRIMARY_ISOLATED,
                 id="primary-region-isolated"),
    pytest.param(False, False, None, False, None, None, Verdict.SELF_ISOLATED,
                 id="secondary-watchdog-isolated"),
    pytest.param(True, False, None, False, None, None, Verdict.SELF_ISOLATED,
                 id="isolated-even-if-db-looks-fine"),
    pytest.param(False, False, None, True, True, True, Verdict.PARTIAL_PARTITION,
                 id="east-west-link-cut-witness-sees-primary"),
    pytest.param(False, True, True, False, None, None, Verdict.PARTIAL_PARTITION,
                 id="witness-down-peer-sees-primary"),
    pytest.param(True, True, True, False, None, None, Verdict.DEGRADED, id="witness-down"),
    pytest.param(True, True, True, True, False, True, Verdict.DEGRADED,
                 id="witness-alone-sees-failure"),
    pytest.param(False, True, False, False, None, None, Verdict.PRIMARY_DOWN,
                 id="witness-down-db-killed"),
]


@pytest.mark.parametrize(
    ("own_db", "peer_fresh", "peer_db", "witness_fresh", "witness_db", "hears_west", "verdict"),
    CASES,
)
def test_named_reachability_cases(own_db: bool, peer_fresh: bool, peer_db: bool | None,
                                  witness_fresh: bool, witness_db: bool | None,
                                  hears_west: bool | None, verdict: Verdict) -> None:
    assert east_assessment(own_db=own_db, peer_fresh=peer_fresh, peer_db=peer_db,
                           witness_fresh=witness_fresh, witness_db=witness_db,
                           witness_hears_west=hears_west) is verdict


# ---------------------------------------------------------------- every combination

OPINION = (True, False, None)
COMBINATIONS = list(itertools.product(OPINION, (True, False), OPINION, (True, False), OPINION,
                                      OPINION))


@pytest.mark.parametrize(
    ("own_db", "peer_fresh", "peer_db", "witness_fresh", "witness_db", "hears_west"),
    COMBINATIONS,
)
def test_every_combination_keeps_the_quorum_rules(
    own_db: bool | None, peer_fresh: bool, peer_db: bool | None, witness_fresh: bool,
    witness_db: bool | None, hears_west: bool | None,
) -> None:
    own = _vantage("east", Role.WATCHDOG, EAST, db=own_db)
    peer = _vantage("west", Role.WATCHDOG, WEST, fresh=peer_fresh, db=peer_db)
    witness = _vantage("witness", Role.WITNESS, SITE, fresh=witness_fresh, db=witness_db,
                       hears_west=hears_west)
    result = assess(own, [peer, witness], PRIMARY)
    views = [own] + [v for v in (peer, witness) if v.fresh]
    with_opinion = [v for v in views if v.view_of(PRIMARY).db_reachable is not None]
    opinions = [v.view_of(PRIMARY).db_reachable for v in with_opinion]
    outside = any(v.region != PRIMARY for v in with_opinion)

    # Isolated observers do nothing (invariant 5).
    if not peer_fresh and not witness_fresh:
        assert result.verdict is Verdict.SELF_ISOLATED
        assert not result.db_failing
        assert result.self_isolated
        return
    assert not result.self_isolated
    # One vantage that reaches the primary vetoes a failover.
    if any(opinions):
        assert not result.db_failing
    # The failure counts exactly when every opinion agrees and one comes from outside the
    # primary region (the primary region's own watchdog never decides alone).
    assert result.db_failing == (bool(opinions) and not any(opinions) and outside)
    if result.db_failing:
        assert result.verdict in {Verdict.PRIMARY_DOWN, Verdict.PRIMARY_ISOLATED}
        # Isolation is claimed only when nobody hears from the primary region's watchdog.
        if result.verdict is Verdict.PRIMARY_ISOLATED:
            assert not peer_fresh
            assert not hears_west
    if own_db is False and any(opinions):
        assert result.verdict is Verdict.PARTIAL_PARTITION


def test_primary_side_watchdog_alone_never_decides() -> None:
    # West's own failing view counts only with an outside vantage agreeing.
    own = _vantage("west", Role.WATCHDOG, WEST, db=False)
    peer = _vantage("east", Role.WATCHDOG, EAST, db=None)  # east has no fresh DB opinion
    witness = _vantage("witness", Role.WITNESS, SITE, fresh=False)
    result = assess(own, [peer, witness], PRIMARY)
    assert not result.db_failing


def test_without_peers_the_own_view_decides() -> None:
    own = _vantage("east", Role.WATCHDOG, EAST, db=False)
    result = assess(own, [], PRIMARY)
    assert result.verdict is Verdict.PRIMARY_DOWN
    assert result.db_failing


def test_region_health_needs_the_same_quorum() -> None:
    own = _vantage("east", Role.WATCHDOG, EAST, health=False)
    witness = _vantage("witness", Role.WITNESS, SITE, health=True)
    result = assess(own, [witness], PRIMARY)
    assert not result.region_failing
    assert result.verdict is Verdict.PARTIAL_PARTITION
    witness_agrees = _vantage("witness", Role.WITNESS, SITE, health=False)
    result = assess(own, [witness_agrees], PRIMARY)
    assert result.region_failing
    assert result.verdict is Verdict.REGION_UNHEALTHY


def test_unreachable_vantages_are_named() -> None:
    own = _vantage("east", Role.WATCHDOG, EAST)
    witness = _vantage("witness", Role.WITNESS, SITE, fresh=False)
    peer = _vantage("west", Role.WATCHDOG, WEST)
    result = assess(own, [peer, witness], PRIMARY)
    assert result.unreachable == ("witness",)
    assert "witness" in result.detail


# ---------------------------------------------------------------- old news does not dissent


def _observed(name: str, role: Role, region: str, *, db: bool, at: float) -> Vantage:
    return Vantage(name=name, role=role, region=region,
                   regions={PRIMARY: RegionView(db, True, True, db_observed_at=at)})


def test_a_peer_view_older_than_our_failure_is_set_aside_provisionally() -> None:
    # East's probes fail from t=100; the witness last looked at t=99.7 and saw it up.
    own = _vantage("east", Role.WATCHDOG, EAST, db=False)
    witness = _observed("witness", Role.WITNESS, SITE, db=True, at=99.7)
    result = assess(own, [witness], PRIMARY, failing_since=100.0)
    assert result.db_failing
    assert result.provisional
    assert result.verdict is Verdict.PRIMARY_DOWN


def test_a_peer_view_newer_than_our_failure_still_dissents() -> None:
    own = _vantage("east", Role.WATCHDOG, EAST, db=False)
    witness = _observed("witness", Role.WITNESS, SITE, db=True, at=100.2)
    result = assess(own, [witness], PRIMARY, failing_since=100.0)
    assert not result.db_failing
    assert result.verdict is Verdict.PARTIAL_PARTITION
    assert not result.provisional


def test_an_old_failing_view_still_agrees() -> None:
    own = _vantage("east", Role.WATCHDOG, EAST, db=False)
    witness = _observed("witness", Role.WITNESS, SITE, db=False, at=99.0)
    result = assess(own, [witness], PRIMARY, failing_since=100.0)
    assert result.db_failing
    assert not result.provisional
