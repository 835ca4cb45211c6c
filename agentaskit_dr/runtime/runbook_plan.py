"""The failover runbook's plan: its steps in order, each with its target, and what each
step does (actuators, notifications, the promotion). ``runbook.py`` drives them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import structlog

from agentaskit_dr.actuators.fence import PromotionRefused
from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.ports import Actuator, Notification, StepOutcome
from agentaskit_dr.runtime import runbook_promote
from agentaskit_dr.runtime.executor import FailoverExecutor
from agentaskit_dr.runtime.incidents import IncidentBook
from agentaskit_dr.runtime.runbook_parts import Hooks, PlannedStep, RunContext, StepFn
from agentaskit_dr.runtime.runbook_promote import OLD_PRIMARY_ANSWERING, promote_step

log = structlog.get_logger("agentaskit_dr.runtime.runbook")

CHECK_PRIMARY = "check_primary"
NOTIFY_STARTED = "notify_stakeholders"
OPEN_INCIDENT = "open_incident"
VERIFY_STANDBY = "verify_standby"
PROMOTE = runbook_promote.PROMOTE
UPDATE_DNS = "update_dns"
SCALE_UP = "scale_up"
VERIFY_SERVICES = "verify_services"
STATUS_PAGE = "update_status_page"
NOTIFY_DONE = "notify_done"

FAILOVER_PLAN = (
    CHECK_PRIMARY, NOTIFY_STARTED, OPEN_INCIDENT, VERIFY_STANDBY, PROMOTE, UPDATE_DNS,
    SCALE_UP, VERIFY_SERVICES, STATUS_PAGE, NOTIFY_DONE,
)
# The steps that open an incident for the stakeholders, and the notification each sends.
ANNOUNCEMENTS = {NOTIFY_STARTED: "failover_started", OPEN_INCIDENT: "incident_opened"}
# Up to and including these, a failure refuses the failover: nothing irreversible yet.
BEFORE_PROMOTION = frozenset({CHECK_PRIMARY, NOTIFY_STARTED, OPEN_INCIDENT, VERIFY_STANDBY,
                               PROMOTE})


class RunbookPlan:
    """The plan of a failover run and its step functions (the driver is ``Runbook``)."""

    hooks: Hooks
    executor: FailoverExecutor
    incidents: IncidentBook
    config: Callable[[], WatchdogConfig]
    wall_clock: Callable[[], float]

    def plan(self, config: WatchdogConfig, from_region: str, to_region: str) -> list[PlannedStep]:
        """Every step with its target; the ones not configured are skipped with a reason."""
        hooks = self.hooks
        to_cfg = config.regions[to_region]
        dns = config.dns.route53
        kube = to_cfg.kubernetes
        notifiers = ", ".join(w.kind for w in config.notifications.webhooks) or "none"
        generic = [w for w in config.notifications.webhooks if w.kind == "generic"]

        def actuator_step(name: str, target: str,
                          make: Callable[[WatchdogConfig, str, str], Actuator | None],
                          missing: str) -> PlannedStep:
            if make(config, from_region, to_region) is None:
                return PlannedStep(name, target, None, missing)
            return PlannedStep(name, target, self._actuate(make))

        return [
            PlannedStep(CHECK_PRIMARY, f"primary database in {from_region}",
                        lambda ctx: hooks.check_primary(self.config(), ctx.from_region,
                                                        ctx.to_region)),
            self._notify_step(NOTIFY_STARTED, f"webhooks: {notifiers}",
                              ANNOUNCEMENTS[NOTIFY_STARTED], ("slack", "pagerduty", "generic")),
            self._notify_step(OPEN_INCIDENT, f"{len(generic)} generic webhook(s)",
                              ANNOUNCEMENTS[OPEN_INCIDENT], ("generic",))
            if generic else PlannedStep(OPEN_INCIDENT, "incident ticket", None,
                                        "no generic webhook configured"),
            PlannedStep(VERIFY_STANDBY, f"standby database in {to_region}",
                        lambda ctx: hooks.verify_standby(self.config(), ctx.from_region,
                                                         ctx.to_region, ctx.journal)),
            PlannedStep(PROMOTE, f"pg_promote the standby in {to_region}, fence {from_region}",
                        self._promote),
            actuator_step(UPDATE_DNS, f"Route 53 {dns.record_name} -> {to_cfg.dns_target}"
                          if dns else "DNS", hooks.dns, "dns.route53 or dns_target not set"),
            actuator_step(SCALE_UP, f"deployments in {kube.namespace} of {to_region} "
                          f"+{config.runbook.scale_percent}%" if kube else "Kubernetes",
                          hooks.scaler, f"regions.{to_region}.kubernetes not set"),
            actuator_step(VERIFY_SERVICES, f"endpoints of {to_region} and a write on the new "
                          "primary", hooks.verifier, "nothing to verify"),
            self._notify_step(STATUS_PAGE, f"{len(generic)} generic webhook(s)", "status_page",
                              ("generic",)) if generic else PlannedStep(
                STATUS_PAGE, "status page", None, "no generic webhook configured"),
            self._notify_step(NOTIFY_DONE, f"webhooks: {notifiers}", "failover_done",
                              ("slack", "pagerduty", "generic"), resolve=True),
        ]

    def describe(self, config: WatchdogConfig | None = None) -> list[str]:
        """The plan as text lines, for ``--dry-run`` and the API's dry run."""
        config = config or self.config()
        lines = []
        for step in self.plan(config, config.primary_region, config.secondary_region):
            note = f" (skipped: {step.skip_reason})" if step.run is None else ""
            lines.append(f"{step.name}: {step.target}{note}")
        where = config.evidence_dir / config.evidence_layout.failover_tests / "failover"
        lines.append(f"then: evidence and incident review draft in {where}/; failback "
                     "marked as planned")
        return lines

    # ------------------------------------------------------------ steps

    def _actuate(self, make: Callable[[WatchdogConfig, str, str], Actuator | None]) -> StepFn:
        async def run(ctx: RunContext) -> StepOutcome:
            actuator = make(self.config(), ctx.from_region, ctx.to_region)
            if actuator is None:  # the config changed under a resumed run
                return StepOutcome(False, "no longer configured")
            try:
                return await actuator.apply(epoch=ctx.epoch, failover_id=ctx.run_id)
            finally:
                await actuator.close()
        return run

    def _notify_step(self, name: str, target: str, event: str, kinds: Sequence[str], *,
                     resolve: bool = False) -> PlannedStep:
        async def run(ctx: RunContext) -> StepOutcome:
            incident = str(ctx.meta.get("incident") or ctx.run_id)
            if not resolve and self.incidents.announced(incident, event):
                # A retry of the same incident: the stakeholders already heard it opened.
                return StepOutcome(False, f"already sent for incident {incident}",
                                   {"incident": incident})
            summary = (f"agentaskit-dr failover {ctx.run_id}: {ctx.from_region} -> "
                       f"{ctx.to_region} ({event.replace('_', ' ')})")
            notification = Notification(
                event=event, run_id=ctx.run_id, epoch=ctx.epoch, summary=summary,
                severity="info" if resolve else "critical", resolve=resolve,
                details={"from_region": ctx.from_region, "to_region": ctx.to_region,
                         "reason": ctx.journal.reason, "incident": incident,
                         "failback": "planned" if event == "failover_done" else None},
                incident=incident,
            )
            sent = await self.hooks.notify(self.config(), notification, kinds)
            self.incidents.sent(incident, event, resolve=resolve)
            failed = sorted(name for name, ok in sent.items() if not ok)
            detail = f"{len(sent) - len(failed)}/{len(sent)} delivered"
            if failed:
                detail += f"; not delivered: {', '.join(failed)} (logged; never blocks)"
            return StepOutcome(bool(sent), detail, {"delivered": sent})
        return PlannedStep(name, target, run)

    async def _promote(self, ctx: RunContext) -> StepOutcome:
        config = self.config()
        meta = ctx.meta
        # The old primary's own watchdog fences its server first, where it can (it may
        # control that host: a frozen primary is killed, not left to wake up writable).
        peer = await self.hooks.peer_fence(config, ctx.from_region, ctx.epoch, ctx.run_id)
        log.info("old_primary_peer_fence", failover_id=ctx.run_id, epoch=ctx.epoch,
                 peer=peer.peer, confirmed=peer.confirmed, detail=peer.detail)
        if peer.confirmed is False:
            raise PromotionRefused(f"fence not confirmed: the old primary's own watchdog "
                                   f"({peer.peer}) could not fence it: {peer.detail}")
        if peer.confirmed:
            # Fenced by its own watchdog (stopped, in control mode): what the vantages saw
            # answering before is that server, now fenced; the promoter fences it again.
            meta = {**meta, OLD_PRIMARY_ANSWERING: False}
        promoter = self.hooks.promoter(config, ctx.from_region, ctx.to_region)
        outcome = await promote_step(self.executor, promoter, epoch=ctx.epoch, run=ctx.journal,
                                     meta=meta, wall_clock=self.wall_clock)
        return dataclasses.replace(outcome, data={**outcome.data, "peer_fence": {
            "peer": peer.peer, "confirmed": peer.confirmed, "detail": peer.detail}})
