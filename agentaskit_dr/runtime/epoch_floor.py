"""The epoch floor: the highest fencing epoch any target has recorded.

A lock store that lost its data (Redis restarted empty) starts the epoch counter at 1
again, while the targets still carry the epochs of earlier failovers and refuse anything
older (invariant 4). Before a new holder acts, the keeper reads these sources and lifts
the lock's counter above the highest (``LeaderLock.raise_epoch_floor``).

Sources, built from the configured targets: the PostgreSQL marker row on both regions'
servers, the Route 53 TXT marker, the deployments' epoch annotations in every configured
Kubernetes cluster, the journal's runs and the cluster record. Each is bounded by its own
timeout; one that cannot be read is logged and skipped, never blocks leadership.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Actuator, ClusterStore, Journal, StaleEpoch, StepOutcome

if TYPE_CHECKING:
    from agentaskit_dr.actuators.promote import FenceResult, PromotionResult
    from agentaskit_dr.runtime.executor import Promoter
    from agentaskit_dr.runtime.runbook import Hooks

ActuatorFactory = Callable[[WatchdogConfig, str, str], Actuator | None]

log = structlog.get_logger(__name__)

#: How many journaled runs the journal source reads (newest first).
JOURNAL_RUNS = 50


@dataclass(frozen=True, slots=True)
class EpochSource:
    """One place that records epochs; ``read`` gives its highest one (None: none recorded)."""

    name: str
    read: Callable[[], Awaitable[int | None]]


async def highest_recorded_epoch(sources: Sequence[EpochSource], *, each_within: float) -> int:
    """The highest epoch any source recorded (0 if none); each source gets ``each_within`` s."""

    async def one(source: EpochSource) -> int | None:
        try:
            async with asyncio.timeout(each_within):
                return await source.read()
        except TimeoutError:
            log.warning("epoch_source_unread", source=source.name,
                        reason=f"no answer within {each_within:g}s")
        except Exception as exc:  # noqa: BLE001 - a source that fails is skipped, by design
            log.warning("epoch_source_unread", source=source.name,
                        reason=f"{type(exc).__name__}: {exc}")
        return None

    found = await asyncio.gather(*(one(source) for source in sources))
    seen = {source.name: epoch for source, epoch in zip(sources, found, strict=True)
            if epoch is not None}
    floor = max(seen.values(), default=0)
    log.info("epoch_floor_read", floor=floor, sources=seen)
    return floor


def epoch_sources(config: WatchdogConfig, *, journal: Journal | None,
                  cluster: ClusterStore | None) -> list[EpochSource]:
    """The sources of ``config``'s targets (both regions), plus the journal and the record."""
    sources = [EpochSource(f"postgres:{name}", _marker(config, name)) for name in config.regions]
    if config.dns.route53 is not None:
        sources.append(EpochSource("route53", _dns_marker(config)))
    for name, region in config.regions.items():
        if region.kubernetes is not None:
            sources.append(EpochSource(f"kubernetes:{name}", _annotations(config, name)))
    if journal is not None:
        sources.append(EpochSource("journal", _journal(journal)))
    if cluster is not None:
        sources.append(EpochSource("cluster", _cluster(cluster)))
    return sources


def _marker(config: WatchdogConfig, region: str) -> Callable[[], Awaitable[int | None]]:
    async def read() -> int | None:
        from agentaskit_dr.probes.postgres import PostgresProbe

        probe = PostgresProbe(f"epoch:{region}", config.regions[region].database.connect_dsn(),
                              timeout=config.probe.timeout)
        try:
            seen = await probe.observe()
        finally:
            await probe.close()
        if not seen.reachable:
            raise ConnectionError(f"{seen.target}: {seen.error}")
        return seen.marker_epoch
    return read


def _dns_marker(config: WatchdogConfig) -> Callable[[], Awaitable[int | None]]:
    async def read() -> int | None:
        from agentaskit_dr.runtime.runbook_hooks import dns

        # Any serving region reads the same TXT marker; the switch only reads here.
        switch = dns(config, config.secondary_region, config.primary_region)
        if switch is None:
            return None
        try:
            epoch = (await switch.current())["epoch"]
        finally:
            await switch.close()
        return epoch if isinstance(epoch, int) else None
    return read


def _annotations(config: WatchdogConfig, region: str) -> Callable[[], Awaitable[int | None]]:
    async def read() -> int | None:
        from agentaskit_dr.runtime.runbook_hooks import scaler

        deployments = scaler(config, config.primary_region, region)
        if deployments is None:
            return None
        try:
            return await deployments.recorded_epoch()
        finally:
            await deployments.close()
    return read


def _journal(journal: Journal) -> Callable[[], Awaitable[int | None]]:
    async def read() -> int | None:
        epochs = [epoch for run in await journal.recent(JOURNAL_RUNS)
                  for epoch in (run.created_epoch, *(entry.epoch for entry in run.entries))]
        return max(epochs, default=None)
    return read


def _cluster(cluster: ClusterStore) -> Callable[[], Awaitable[int | None]]:
    async def read() -> int | None:
        record = await cluster.read()
        return record.primary.epoch if record.primary is not None else None
    return read


# ---------------------------------------------------------------- a stale epoch asks for the floor


class _StaleWatchingActuator:
    """An actuator whose ``StaleEpoch`` also asks the keeper to raise the epoch floor."""

    def __init__(self, actuator: Actuator, on_stale: Callable[[], None]) -> None:
        self._actuator = actuator
        self._on_stale = on_stale
        self.name = actuator.name

    async def describe(self) -> str:
        return await self._actuator.describe()

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome:
        try:
            return await self._actuator.apply(epoch=epoch, failover_id=failover_id)
        except StaleEpoch:
            self._on_stale()
            raise

    async def close(self) -> None:
        await self._actuator.close()


class _StaleWatchingPromoter:
    """A promoter whose ``StaleEpoch`` also asks the keeper to raise the epoch floor."""

    def __init__(self, promoter: Promoter, on_stale: Callable[[], None]) -> None:
        self._promoter = promoter
        self._on_stale = on_stale

    async def promote(self, **kwargs: Any) -> PromotionResult:
        try:
            return await self._promoter.promote(**kwargs)
        except StaleEpoch:
            self._on_stale()
            raise

    async def fence(self, dsn: str, *, epoch: int | None) -> FenceResult:
        try:
            return await self._promoter.fence(dsn, epoch=epoch)
        except StaleEpoch:
            self._on_stale()
            raise


def watching_promoter(promoter: Promoter, on_stale: Callable[[], None]) -> Promoter:
    """``promoter`` (promote and fence) calling ``on_stale`` on a stale epoch."""
    return _StaleWatchingPromoter(promoter, on_stale)


def watching_stale_epochs(hooks: Hooks, on_stale: Callable[[], None]) -> Hooks:
    """``hooks`` whose actuators and promoter call ``on_stale`` when a target refuses our
    epoch as stale (then re-raise, so the run fails and backs off as before)."""

    def actuator(make: ActuatorFactory) -> ActuatorFactory:
        def build(config: WatchdogConfig, from_region: str, to_region: str) -> Actuator | None:
            made = make(config, from_region, to_region)
            return None if made is None else _StaleWatchingActuator(made, on_stale)
        return build

    make_promoter = hooks.promoter

    def promoter(config: WatchdogConfig, from_region: str, to_region: str) -> Promoter:
        return watching_promoter(make_promoter(config, from_region, to_region), on_stale)

    return dataclasses.replace(hooks, promoter=promoter, dns=actuator(hooks.dns),
                               scaler=actuator(hooks.scaler),
                               verifier=actuator(hooks.verifier))
