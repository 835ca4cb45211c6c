"""The runbook's effects built from the config: the one place that knows every actuator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from agentaskit_dr.actuators.dns_route53 import Route53Switch
from agentaskit_dr.actuators.kube_scale import DeploymentScaler, kube_api_client
from agentaskit_dr.actuators.notify import WebhookNotifier, build_notifier
from agentaskit_dr.actuators.notify_hub import NotificationHub
from agentaskit_dr.actuators.promote import PostgresPromoter
from agentaskit_dr.actuators.verify import ServiceVerifier
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.fencing import primary_conninfo_for, server_control
from agentaskit_dr.ports import (
    ActuationFailed,
    Notification,
    PostgresObservation,
    RunJournal,
    StepOutcome,
)
from agentaskit_dr.probes.postgres import PostgresProbe
from agentaskit_dr.runtime.runbook import Hooks
from agentaskit_dr.runtime.runbook_promote import ADOPTS_PROMOTION_OF, PROMOTE

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger(__name__)


def promoter(config: WatchdogConfig, from_region: str, to_region: str) -> PostgresPromoter:
    """Promotes ``to_region``'s standby and fences ``from_region``'s server: stopped for good
    when this watchdog runs on that server's host (its region, with ``database.control``),
    and told to stream from ``to_region`` whenever it restarts."""
    return PostgresPromoter(
        standby_dsn=config.regions[to_region].database.connect_dsn(),
        old_primary_dsn=config.regions[from_region].database.connect_dsn(),
        max_lag_bytes=config.promotion.max_lag_bytes,
        connect_timeout=config.probe.timeout,
        promote_timeout=config.promotion.timeout,
        catch_up_timeout=config.promotion.catch_up_timeout,
        old_primary_control=(server_control(config, from_region)
                             if config.region == from_region else None),
        old_primary_conninfo=primary_conninfo_for(config, to_region),
    )


async def _look(config: WatchdogConfig, region: str, name: str) -> PostgresObservation:
    """One probe of ``region``'s database (never raises: failures are observations)."""
    probe = PostgresProbe(name, config.regions[region].database.connect_dsn(),
                          timeout=config.probe.timeout)
    try:
        return await probe.observe()
    finally:
        await probe.close()


async def check_primary(config: WatchdogConfig, from_region: str, _to: str) -> StepOutcome:
    """Record how the old primary looks now. The debounce already confirmed the failure is
    not transient; an operator's failover may run with a healthy primary (it is fenced)."""
    seen = await _look(config, from_region, "db:old-primary")
    detail = f"old primary {seen.target}: {describe_answer(seen)}" + (
        f" ({seen.error})" if seen.error else "")
    return StepOutcome(False, detail, {"reachable": seen.reachable, "writable": seen.writable,
                                       "refusal": seen.refusal, "sqlstate": seen.sqlstate,
                                       "error": seen.error})


def describe_answer(seen: PostgresObservation) -> str:
    """How a database answered, in the words of the runbook: a server that answers with an
    error is up (it refuses the watchdog), never "unreachable"."""
    if not seen.reachable:
        return "unreachable"
    if seen.refusal is not None:
        return f"answers, but refuses the watchdog ({seen.refusal})"
    if seen.in_recovery:
        return "answers, in recovery (a standby)"
    return "writable" if seen.writable else "answers, not writable"


async def verify_standby(config: WatchdogConfig, _from: str, to_region: str,
                         journal: RunJournal) -> StepOutcome:
    """The standby answers and is a standby (or, on a resume, this run promoted it)."""
    seen = await _look(config, to_region, "db:standby")
    if not seen.reachable:
        raise ActuationFailed(f"standby {seen.target} unreachable: {seen.error}")
    if seen.refusal is not None:
        raise ActuationFailed(f"standby {seen.target} refuses the watchdog "
                              f"({seen.refusal}): {seen.error}")
    if seen.in_recovery:
        lag = (seen.receive_lsn - seen.replay_lsn) if (
            seen.receive_lsn is not None and seen.replay_lsn is not None) else None
        return StepOutcome(False, f"standby {seen.target} in recovery, receiver "
                           f"{seen.receiver_status}", {"replay_lag_bytes": lag,
                                                       "replay_lag_seconds":
                                                           seen.replay_lag_seconds})
    if journal.last_status(PROMOTE) is not None:
        return StepOutcome(False, f"{seen.target} already promoted by this run")
    if journal.meta.get(ADOPTS_PROMOTION_OF):
        # An earlier attempt of this incident sent pg_promote; the promote step adopts
        # the promotion if the marker says it is that attempt's.
        return StepOutcome(False, f"{seen.target} already promoted (by an earlier attempt "
                           "of this incident?); the promote step decides")
    raise ActuationFailed(f"{seen.target} is not a standby (marker epoch {seen.marker_epoch}); "
                          "nothing to promote")


def dns(config: WatchdogConfig, _from: str, to_region: str, *,
        weight: int = 100) -> Route53Switch | None:
    """The record pointed at ``to_region`` (``weight`` percent of it, weighted style)."""
    route53 = config.dns.route53
    targets = {name: region.dns_target for name, region in config.regions.items()}
    if route53 is None or targets[to_region] is None:
        return None
    return Route53Switch(
        hosted_zone_id=route53.hosted_zone_id, record_name=route53.record_name,
        record_type=route53.record_type, ttl=route53.ttl, style=route53.style,
        targets={name: target for name, target in targets.items() if target is not None},
        serving_region=to_region, weight=weight, endpoint_url=route53.endpoint_url,
        aws_region=route53.aws_region,
    )


def scaler(config: WatchdogConfig, _from: str, to_region: str, *,
           percent: int | None = None) -> DeploymentScaler | None:
    """``to_region``'s deployments up by ``percent`` (default ``runbook.scale_percent``)."""
    kube = config.regions[to_region].kubernetes
    if kube is None:
        return None

    async def client() -> ApiClient:
        return await kube_api_client(api_url=kube.api_url, token_file=kube.token_file,
                                     ca_file=kube.ca_file, insecure=kube.insecure,
                                     kubeconfig=kube.kubeconfig, in_cluster=kube.in_cluster)

    return DeploymentScaler(client, namespace=kube.namespace,
                            percent=config.runbook.scale_percent if percent is None
                            else percent,
                            ready_timeout=kube.ready_timeout,
                            poll_interval=min(2.0, config.probe.interval))


def verifier(config: WatchdogConfig, _from: str, to_region: str) -> ServiceVerifier | None:
    region = config.regions[to_region]
    return ServiceVerifier(region.verify_urls or region.health_urls,
                           region.database.connect_dsn(),
                           timeout=config.runbook.verify_timeout,
                           interval=min(2.0, config.probe.interval),
                           check_timeout=config.probe.timeout)


def notifiers(config: WatchdogConfig, kinds: Sequence[str]) -> list[WebhookNotifier]:
    """The configured webhooks of ``kinds``; a PagerDuty key file that cannot be read is
    logged and that notifier left out (a notification never blocks a failover)."""
    found = []
    for index, hook in enumerate(config.notifications.webhooks, 1):
        if hook.kind not in kinds:
            continue
        key = None
        if hook.routing_key_file is not None:
            try:
                key = hook.routing_key_file.read_text().strip()
            except OSError as exc:
                log.error("notifier_unavailable", notifier=f"{hook.kind}{index}",  # noqa: TRY400
                          reason=f"routing_key_file {hook.routing_key_file}: {exc.strerror}")
                continue
        try:
            found.append(build_notifier(hook.kind, hook.url, routing_key=key,
                                        name=f"{hook.kind}{index}",
                                        timeout=config.runbook.notify_timeout))
        except ValueError as exc:
            log.error("notifier_unavailable", notifier=f"{hook.kind}{index}",  # noqa: TRY400
                      reason=str(exc))
    return found


async def notify(config: WatchdogConfig, notification: Notification,
                 kinds: Sequence[str]) -> dict[str, bool]:
    hub = NotificationHub(notifiers(config, kinds), deadline=config.runbook.notify_timeout + 1)
    try:
        return await hub.notify(notification)
    finally:
        await hub.close()


def build_hooks() -> Hooks:
    return Hooks(promoter=promoter, check_primary=check_primary,
                 verify_standby=verify_standby, dns=dns, scaler=scaler, verifier=verifier,
                 notify=notify)
