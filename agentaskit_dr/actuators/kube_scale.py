"""Scale the secondary cluster's deployments up for a failover, and back for failback.

Runbook step 4, "scale up the secondary cluster": every deployment in the namespace gets
``ceil(original x factor)`` replicas (+50% by default), through the ``/scale``
subresource. The fencing epoch lives on each deployment as annotations (invariant 4):

- ``agentaskit-dr/original-replicas``: the count before a failover scaled it, kept until
  ``restore`` removes it, so a re-run or a successor leader resuming the run computes the
  same target and never compounds;
- ``agentaskit-dr/epoch`` and ``agentaskit-dr/run``: who acted on it last. A newer epoch
  there means we are stale (``StaleEpoch``). ``restore`` leaves its own epoch behind, so
  a leader older than the failback is still refused afterwards.

Every write carries the ``resourceVersion`` it was decided on, so checking the epoch and
writing are one compare-and-set: a concurrent writer makes the write fail with 409, and
the deployment is re-read and decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators._kube_client import ClientFactory, DeploymentsApi, kube_api_client
from agentaskit_dr.ports import ActuationFailed, StaleEpoch, StepOutcome, refuse_newer_epoch

if TYPE_CHECKING:
    # kubernetes_asyncio imports every model (about 37 MiB): only when a scale is done.
    from kubernetes_asyncio.client import ApiClient, V1Deployment

__all__ = [
    "ANNOTATION_EPOCH",
    "ANNOTATION_ORIGINAL",
    "ANNOTATION_RUN",
    "ClientFactory",
    "DeploymentScaler",
    "kube_api_client",
]

log = structlog.get_logger(__name__)

ANNOTATION_ORIGINAL = "agentaskit-dr/original-replicas"
ANNOTATION_EPOCH = "agentaskit-dr/epoch"
ANNOTATION_RUN = "agentaskit-dr/run"


@dataclass(frozen=True, slots=True)
class _Marks:
    """The scaler's annotations on one deployment; None where absent."""

    original: int | None
    epoch: int | None
    run: str | None

    @classmethod
    def of(cls, deployment: V1Deployment) -> _Marks:
        notes = deployment.metadata.annotations or {}
        name = deployment.metadata.name
        return cls(
            original=_int_annotation(notes, ANNOTATION_ORIGINAL, name),
            epoch=_int_annotation(notes, ANNOTATION_EPOCH, name),
            run=notes.get(ANNOTATION_RUN),
        )

    def refuse_newer(self, name: str, epoch: int) -> None:
        refuse_newer_epoch(self.epoch, epoch,
                           f"deployment {name} was scaled under epoch {self.epoch} "
                           f"(run {self.run}), newer than ours {epoch}")


def _int_annotation(notes: dict[str, str], key: str, deployment: str) -> int | None:
    raw = notes.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ActuationFailed(
            f"deployment {deployment}: annotation {key}={raw!r} is not an integer; fix it by hand"
        ) from None


def _replicas(deployment: V1Deployment) -> int:
    # An unset spec.replicas means 1, as the API server defaults it.
    replicas = deployment.spec.replicas
    return 1 if replicas is None else replicas


def _ready(deployment: V1Deployment) -> int:
    # The API server leaves zero counts (and a fresh deployment's status) out.
    return (deployment.status.ready_replicas if deployment.status else None) or 0


@dataclass(frozen=True, slots=True)
class _Scaled:
    """What applying the step did to one deployment."""

    name: str
    original: int
    target: int
    scaled: bool
    marked: bool


class DeploymentScaler:
    """Scales every deployment in ``namespace`` (matching ``label_selector``) to
    ``ceil(original x factor)``, or by ``percent`` (+50 is x1.5; default x1.5), never
    down, and waits until each has that many ready replicas.

    ``client``: an ApiClient the caller owns and closes, or a ``ClientFactory`` whose
    client this scaler makes on first use and closes in ``close``. ``ready_timeout``
    bounds the wait for ready replicas, polled every ``poll_interval`` seconds. Each API
    request is bounded by ``request_timeout`` and tried at most ``attempts`` times, with
    exponential backoff from ``retry_wait`` seconds.
    """

    name = "scale_secondary"

    def __init__(
        self,
        client: ApiClient | ClientFactory,
        *,
        namespace: str = "agentaskit-production",
        factor: float | None = None,
        percent: int | None = None,
        ready_timeout: float = 600.0,
        poll_interval: float = 2.0,
        label_selector: str | None = None,
        request_timeout: float = 10.0,
        attempts: int = 5,
        retry_wait: float = 0.5,
    ) -> None:
        if factor is not None and percent is not None:
            raise ValueError("give factor or percent, not both")
        if percent is not None:
            if percent < 0:
                raise ValueError(f"percent must be >= 0 to scale up, got {percent}")
            self._ratio, self._label = Fraction(100 + percent, 100), f"+{percent}%"
        else:
            factor = 1.5 if factor is None else factor
            if not math.isfinite(factor) or factor < 1:
                raise ValueError(f"factor must be >= 1 to scale up, got {factor}")
            # From the decimal text, so 10 x 1.1 is exactly 11, not 12 after ceil.
            self._ratio, self._label = Fraction(str(factor)), f"x{factor:g}"
        for option, value in (
            ("ready_timeout", ready_timeout),
            ("poll_interval", poll_interval),
            ("request_timeout", request_timeout),
            ("attempts", attempts),
        ):
            if not value > 0:
                raise ValueError(f"{option} must be > 0, got {value}")
        if not namespace:
            raise ValueError("namespace must not be empty")
        self._api = DeploymentsApi(client, namespace=namespace, label_selector=label_selector,
                                   request_timeout=request_timeout, attempts=attempts,
                                   retry_wait=retry_wait)
        self.namespace = namespace
        self._ready_timeout = ready_timeout
        self._poll_interval = poll_interval

    def target(self, original: int) -> int:
        """The replica count a deployment with ``original`` replicas is scaled to."""
        return math.ceil(original * self._ratio)

    async def describe(self) -> str:
        """One line per deployment, ``deploy/api 4 -> 6``; reads only."""
        deployments = await self._api.list()
        lines = [f"scale deployments in namespace {self._api.where()} by {self._label}:"]
        for deployment in deployments:
            marks, current = _Marks.of(deployment), _replicas(deployment)
            original = current if marks.original is None else marks.original
            target = max(current, self.target(original))
            line = f"deploy/{deployment.metadata.name} {current} -> {target}"
            if marks.original is not None:
                line += f" (original {original}, scaled under epoch {marks.epoch}, run {marks.run})"
            lines.append(line)
        if not deployments:
            return f"no deployments in namespace {self._api.where()}"
        return "\n".join(lines)

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome:
        """Scale every deployment up and wait until all are ready; see the module doc.

        Raises StaleEpoch (a deployment carries a newer epoch; checked on all of them
        before the first write), or ActuationFailed (no deployments, 401/403/404, ready
        timeout, retries exhausted).
        """
        slog = log.bind(failover_id=failover_id, epoch=epoch, namespace=self.namespace)
        with _logged_refusal(slog, "kube_scale_refused"):
            return await self._apply(epoch, failover_id, slog)

    async def restore(self, *, epoch: int, failover_id: str) -> StepOutcome:
        """Failback: scale each deployment a failover scaled back to its original, remove
        the original annotation and record ``epoch``. Others are left alone. Raises
        StaleEpoch, before any write, when a deployment carries a newer epoch."""
        slog = log.bind(failover_id=failover_id, epoch=epoch, namespace=self.namespace)
        with _logged_refusal(slog, "kube_restore_refused"):
            return await self._restore(epoch, failover_id, slog)

    async def recorded_epoch(self) -> int | None:
        """The highest ``agentaskit-dr/epoch`` annotation in the namespace; reads only.

        For the keeper's epoch floor after the lock store lost its counter.
        """
        epochs = [_Marks.of(deployment).epoch for deployment in await self._api.list()]
        return max((epoch for epoch in epochs if epoch is not None), default=None)

    async def close(self) -> None:
        """Close the client if this scaler made it from a factory."""
        await self._api.close()

    # ------------------------------------------------------------ the steps

    async def _apply(self, epoch: int, failover_id: str, slog: FilteringBoundLogger) -> StepOutcome:
        names = await self._names_checked(epoch)
        if not names:
            raise ActuationFailed(
                f"no deployments in namespace {self._api.where()}: wrong namespace or context?"
            )
        results: list[_Scaled] = []
        for name in names:
            scale_one = functools.partial(self._scale_one, name, epoch, failover_id)
            result = await self._api.retried(f"scale deployment {name}", scale_one)
            event = "deployment_scaled" if result.scaled else "deployment_already_scaled"
            slog.info(event, deployment=name, original=result.original, target=result.target)
            results.append(result)
        await self._wait_ready({r.name: r.target for r in results}, slog)
        scaled = [f"{r.name} {r.original} -> {r.target}" for r in results if r.scaled]
        detail = (
            f"namespace {self.namespace} by {self._label}: "
            f"{'scaled ' + ', '.join(scaled) if scaled else 'all already scaled'}; "
            f"{len(results)} deployment(s) ready"
        )
        changed = any(r.scaled or r.marked for r in results)
        slog.info("kube_scale_done", changed=changed, detail=detail)
        data = {
            r.name: {"original": r.original, "target": r.target, "scaled": r.scaled}
            for r in results
        }
        return StepOutcome(changed=changed, detail=detail, data=data)

    async def _restore(
        self, epoch: int, failover_id: str, slog: FilteringBoundLogger
    ) -> StepOutcome:
        restored: dict[str, Any] = {}
        for name in await self._names_checked(epoch):
            restore_one = functools.partial(self._restore_one, name, epoch, failover_id)
            outcome = await self._api.retried(f"restore deployment {name}", restore_one)
            if outcome is not None:
                slog.info("deployment_restored", deployment=name, **outcome)
                restored[name] = outcome
        what = ", ".join(f"{n} {o['from']} -> {o['original']}" for n, o in restored.items())
        detail = f"namespace {self.namespace}: " + (
            f"restored {what}" if restored else "nothing scaled by a failover"
        )
        slog.info("kube_restore_done", changed=bool(restored), detail=detail)
        return StepOutcome(changed=bool(restored), detail=detail, data=restored)

    # ------------------------------------------------------------ one deployment

    async def _scale_one(self, name: str, epoch: int, failover_id: str) -> _Scaled:
        # Read on every attempt: after a 409 the decision is taken again on fresh state.
        deployment = await self._api.read(name)
        marks = _Marks.of(deployment)
        marks.refuse_newer(name, epoch)
        current = _replicas(deployment)
        original = current if marks.original is None else marks.original
        target = self.target(original)
        version = deployment.metadata.resource_version
        marked = marks != _Marks(original, epoch, failover_id)
        if marked:
            notes = {
                ANNOTATION_ORIGINAL: str(original),
                ANNOTATION_EPOCH: str(epoch),
                ANNOTATION_RUN: failover_id,
            }
            version = (await self._api.annotate(name, notes, version)).metadata.resource_version
        # Never down: replicas an autoscaler added since are left alone.
        scaled = current < target
        if scaled:
            await self._api.patch_scale(name, target, version)
        return _Scaled(name=name, original=original, target=target, scaled=scaled, marked=marked)

    async def _restore_one(self, name: str, epoch: int, failover_id: str) -> dict[str, Any] | None:
        deployment = await self._api.read(name)
        marks = _Marks.of(deployment)
        marks.refuse_newer(name, epoch)
        if marks.original is None:
            return None
        current = _replicas(deployment)
        version = deployment.metadata.resource_version
        # Scale first, unmark last: a crash in between leaves the marks for a re-run.
        if current != marks.original:
            version = (
                await self._api.patch_scale(name, marks.original, version)
            ).metadata.resource_version
        notes = {
            ANNOTATION_ORIGINAL: None,
            ANNOTATION_EPOCH: str(epoch),
            ANNOTATION_RUN: failover_id,
        }
        await self._api.annotate(name, notes, version)
        return {"from": current, "original": marks.original, "scaled_by_epoch": marks.epoch}

    async def _names_checked(self, epoch: int) -> list[str]:
        """The deployments to act on; StaleEpoch before any write if one has a newer epoch.

        Each write checks again on a fresh read, for a newer epoch that acts meanwhile."""
        deployments = await self._api.list()
        for deployment in deployments:
            _Marks.of(deployment).refuse_newer(deployment.metadata.name, epoch)
        return [d.metadata.name for d in deployments]

    async def _wait_ready(self, targets: dict[str, int], slog: FilteringBoundLogger) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while True:
            ready = {d.metadata.name: _ready(d) for d in await self._api.list()}
            laggards = {n: t for n, t in targets.items() if ready.get(n, 0) < t}
            if not laggards:
                slog.info("kube_scale_ready", deployments=len(targets))
                return
            if loop.time() >= deadline:
                text = ", ".join(
                    f"{n} {ready[n]}/{t} ready" if n in ready else f"{n} missing"
                    for n, t in laggards.items()
                )
                raise ActuationFailed(
                    f"namespace {self.namespace}: not ready within {self._ready_timeout:g}s: {text}"
                )
            await asyncio.sleep(min(self._poll_interval, max(0.0, deadline - loop.time())))



@contextlib.contextmanager
def _logged_refusal(slog: FilteringBoundLogger, event: str) -> Iterator[None]:
    """Log a refusal or failure once, with the failover id and epoch, and re-raise it."""
    try:
        yield
    except (StaleEpoch, ActuationFailed) as exc:
        slog.error(event, error=type(exc).__name__, reason=str(exc))
        raise
