"""The assess step: own, peer and witness observations in, one verdict out.

See docs/architecture.md, "Partitions".

Pure: the runtime hands in what each vantage point reported (already aged: a vantage
whose report is stale or unreadable is ``fresh=False``) and gets back whether the
primary counts as failing for the debounce clocks. A failure seen from one place only
never counts; a watchdog that hears nobody never counts anything.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    """What a daemon does: a watchdog may act; a witness only observes and reports."""

    WATCHDOG = "watchdog"
    WITNESS = "witness"


class Verdict(enum.StrEnum):
    """The assessment of the primary, by precedence (first that applies wins)."""

    SELF_ISOLATED = "self_isolated"
    PRIMARY_ISOLATED = "primary_isolated"
    PRIMARY_DOWN = "primary_down"
    PARTIAL_PARTITION = "partial_partition"
    REGION_UNHEALTHY = "region_unhealthy"
    DEGRADED = "degraded"
    HEALTHY = "healthy"


@dataclass(frozen=True, slots=True)
class RegionView:
    """One vantage point's view of one region; None means it has no fresh opinion."""

    db_reachable: bool | None = None
    health_ok: bool | None = None
    # It heard recently from a watchdog running in this region.
    watchdog_reached: bool | None = None
    # When it looked at the database, on the assessing watchdog's clock (None: unknown).
    db_observed_at: float | None = None
    # The database answered, but with an error or in the wrong role: its name
    # ("auth_rejected", "too_many_connections", "in_recovery"...). Still reachable.
    db_refusal: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Vantage:
    """A vantage point as the assessing watchdog knows it.

    ``fresh`` is False when its report did not arrive in time or could not be trusted;
    its ``regions`` are then ignored. The assessing watchdog's own vantage is always fresh.
    ``wal_streaming`` is the standby's WAL receiver as this vantage saw it (one more view
    of the primary from the secondary region; corroboration only, see ``assess``).
    """

    name: str
    role: Role
    region: str
    fresh: bool = True
    regions: Mapping[str, RegionView] = field(default_factory=dict)
    wal_streaming: bool | None = None

    def view_of(self, region: str) -> RegionView:
        return self.regions.get(region, RegionView())


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the vantage points agree on about the primary.

    ``db_failing`` / ``region_failing`` feed the debounce clocks of the two conditions;
    ``self_isolated`` feeds the self-fencing clock of a primary-side watchdog.
    """

    verdict: Verdict
    db_failing: bool
    region_failing: bool
    self_isolated: bool
    detail: str
    unreachable: tuple[str, ...] = ()
    # Some vantage's view predates this watchdog's failure and was set aside: the verdict
    # may still change when their next reports arrive (no alert yet).
    provisional: bool = False
    # The primary answers this watchdog, but with an error (its name): up, not failing.
    primary_refusal: str | None = None
    refusal_detail: str = ""  # the server's own words, filled in by the runtime
    # The region a failover would go to looks unhealthy from every vantage with an
    # opinion: failing over into it would trade one outage for another.
    target_failing: bool = False
    target_detail: str = ""


def _opinions(views: Sequence[Vantage], primary_region: str, attribute: str) -> list[
    tuple[Vantage, bool]
]:
    found: list[tuple[Vantage, bool]] = []
    for vantage in views:
        value = getattr(vantage.view_of(primary_region), attribute)
        if value is not None:
            found.append((vantage, bool(value)))
    return found


def _all_failing(
    opinions: list[tuple[Vantage, bool]], primary_region: str, *, need_outside: bool
) -> bool:
    """Every opinion says failing, and (with peers) one of them comes from outside the
    primary region: the primary region's own watchdog alone never decides."""
    if not opinions or any(ok for _, ok in opinions):
        return False
    return not need_outside or any(v.region != primary_region for v, _ in opinions)


def _names(views: Sequence[Vantage]) -> str:
    return ", ".join(v.name for v in views)


def _newer_than(views: Sequence[Vantage], own: Vantage, primary_region: str,
                since: float | None) -> tuple[list[Vantage], bool]:
    """The views, with a peer's "database reachable" dropped when it was observed before
    ``since`` (this watchdog's first failing look): old news cannot dissent from a newer
    failure. Returns the views and whether any was set aside."""
    if since is None:
        return list(views), False
    kept: list[Vantage] = []
    set_aside = False
    for vantage in views:
        view = vantage.view_of(primary_region)
        if (vantage is not own and view.db_reachable and view.db_observed_at is not None
                and view.db_observed_at < since):
            regions = dict(vantage.regions)
            regions[primary_region] = RegionView(None, view.health_ok, view.watchdog_reached,
                                                 db_refusal=view.db_refusal)
            kept.append(Vantage(vantage.name, vantage.role, vantage.region, vantage.fresh,
                                regions, vantage.wal_streaming))
            set_aside = True
        else:
            kept.append(vantage)
    return kept, set_aside


def _target_health(views: Sequence[Vantage], region: str | None) -> tuple[bool, str]:
    """Whether the failover's target region fails its health checks from every vantage
    with an opinion (one that sees it healthy is enough to go there), and who says so."""
    if region is None:
        return False, ""
    opinions = _opinions(views, region, "health_ok")
    if not opinions or any(ok for _, ok in opinions):
        return False, ""
    seen_by = _names([v for v, _ in opinions])
    return True, f"secondary region {region} unhealthy as seen from {seen_by}"


def assess(own: Vantage, others: Sequence[Vantage], primary_region: str, *,
           failing_since: float | None = None,
           secondary_region: str | None = None) -> Assessment:
    """Turn own + peer + witness observations into one verdict about the primary.

    - primary down: every fresh vantage with an opinion sees the primary database
      failing, one of them outside the primary region;
    - primary isolated (the plan's partition trigger): as above, and no fresh vantage
      hears from the primary region's watchdog either;
    - self isolated: peers or a witness are configured and none is fresh: nothing counts;
    - partial partition: this watchdog cannot reach the primary but another vantage can:
      nothing counts, an operator must look.

    With no peers or witness configured, this watchdog's own view decides (the
    single-vantage mode of a plain two-watchdog setup).

    ``failing_since``: when this watchdog's own probes started to find the primary database
    unreachable (None while they reach it). A peer's "reachable" observed before then is
    old news and does not dissent; such a verdict is ``provisional``.

    A database that answers with an error (``db_refusal``) is reachable: it never counts
    as failing; this watchdog's own refusal is named in ``primary_refusal``.
    ``secondary_region``: the failover's target, whose health sets ``target_failing``.
    """
    reachable = [o for o in others if o.fresh]
    unreachable = tuple(o.name for o in others if not o.fresh)
    if others and not reachable:
        target_failing, target_detail = _target_health([own], secondary_region)
        return Assessment(
            Verdict.SELF_ISOLATED, db_failing=False, region_failing=False, self_isolated=True,
            detail=f"self isolated: no answer from {_names(others)}", unreachable=unreachable,
            primary_refusal=own.view_of(primary_region).db_refusal,
            target_failing=target_failing, target_detail=target_detail,
        )
    views, provisional = _newer_than([own, *reachable], own, primary_region, failing_since)
    reachable = views[1:]
    refusal = own.view_of(primary_region).db_refusal
    target_failing, target_detail = _target_health(views, secondary_region)
    need_outside = bool(others)
    db = _opinions(views, primary_region, "db_reachable")
    health = _opinions(views, primary_region, "health_ok")
    db_failing = _all_failing(db, primary_region, need_outside=need_outside)
    region_failing = _all_failing(health, primary_region, need_outside=need_outside)
    suffix = f"; no answer from {', '.join(unreachable)}" if unreachable else ""

    def verdict(kind: Verdict, detail: str, *, db: bool = False, region: bool = False) -> (
        Assessment
    ):
        return Assessment(kind, db_failing=db, region_failing=region, self_isolated=False,
                          detail=detail + suffix, unreachable=unreachable,
                          provisional=provisional, primary_refusal=refusal,
                          target_failing=target_failing, target_detail=target_detail)

    if db_failing:
        seen_by = _names([v for v, _ in db])
        if own.wal_streaming is False:
            seen_by += " and the standby's WAL receiver"
        primary_watchdog_heard = any(
            v.region == primary_region and v.role is Role.WATCHDOG and v is not own
            for v in reachable
        ) or any(v.view_of(primary_region).watchdog_reached for v in views)
        if others and not primary_watchdog_heard and own.region != primary_region:
            return verdict(Verdict.PRIMARY_ISOLATED,
                           f"primary region {primary_region} isolated: neither its database "
                           f"nor its watchdog answers {seen_by}",
                           db=True, region=region_failing)
        return verdict(Verdict.PRIMARY_DOWN,
                       f"primary database unreachable from {seen_by}",
                       db=True, region=region_failing)
    own_db = own.view_of(primary_region).db_reachable
    own_health = own.view_of(primary_region).health_ok
    dissent_db = [v for v, ok in db if ok and v is not own]
    dissent_health = [v for v, ok in health if ok and v is not own]
    if own_db is False and dissent_db:
        return verdict(Verdict.PARTIAL_PARTITION,
                       f"partial partition: this watchdog cannot reach the primary database, "
                       f"{_names(dissent_db)} can")
    if own_health is False and dissent_health:
        return verdict(Verdict.PARTIAL_PARTITION,
                       f"partial partition: primary region health fails from here, "
                       f"{_names(dissent_health)} sees it healthy")
    if region_failing:
        return verdict(Verdict.REGION_UNHEALTHY,
                       f"primary region {primary_region} unhealthy as seen from "
                       f"{_names([v for v, _ in health])}", region=True)
    failing_elsewhere = [v for v, ok in db if not ok] + [v for v, ok in health if not ok]
    if unreachable or failing_elsewhere:
        extra = ""
        if failing_elsewhere:
            names = ", ".join(dict.fromkeys(v.name for v in failing_elsewhere))
            extra = f"; {names} sees a failure alone"
        return verdict(Verdict.DEGRADED, f"degraded: primary healthy{extra}")
    if refusal is not None:
        return verdict(Verdict.HEALTHY, f"primary answers but refuses this watchdog "
                                        f"({refusal}); healthy from {_names(views)}")
    return verdict(Verdict.HEALTHY, "primary healthy from " + _names(views))
