"""The watchdog's configuration schema (``configs/watchdog.yaml``).

Durations are stored as float seconds, sizes as int bytes. The connections and their
secrets (PostgreSQL, the lock store) are in ``_connections``; ``redacted()`` also masks
passwords written inside URLs.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import (
    Bytes,
    ConfigModel,
    ConfigPath,
    Duration,
    HttpUrl,
    NonBlank,
    PositiveDuration,
    Problem,
    problem_error,
    problems_error,
)
from agentaskit_dr.config._binding import BindingBudget, BindingConfig, binding_budget
from agentaskit_dr.config._connections import DatabaseConfig, LockConfig
from agentaskit_dr.config._control import StartGateConfig
from agentaskit_dr.config._failback import FailbackConfig
from agentaskit_dr.config._hold import hold_after
from agentaskit_dr.config._jobs import BackupJobsConfig
from agentaskit_dr.config._layout import EvidenceLayout
from agentaskit_dr.config._sections import (
    ApiConfig,
    DnsConfig,
    KubernetesConfig,
    NotificationsConfig,
    PeerTlsConfig,
    RunbookConfig,
)
from agentaskit_dr.config._self_fence import SelfFenceConfig
from agentaskit_dr.config._vantage import (
    PeerClientTls,
    peer_client_tls,
    vantage_url_problems,
    vantage_warnings,
)
from agentaskit_dr.core import Thresholds
from agentaskit_dr.durations import format_duration
from agentaskit_dr.redaction import redact


class RegionConfig(ConfigModel):
    """One region of the two: where its health endpoints and its database are."""

    health_urls: tuple[HttpUrl, ...]
    """HTTP(S) endpoints; the region is healthy when enough of them answer 2xx."""
    database: DatabaseConfig
    dns_target: NonBlank | None = None
    """What the service record points at while this region serves (failover runbook)."""
    kubernetes: KubernetesConfig | None = None
    """This region's cluster, scaled up when the region takes over."""
    verify_urls: tuple[HttpUrl, ...] = ()
    """Endpoints that must answer 2xx after a failover to this region (default: health_urls)."""

    @field_validator("health_urls")
    @classmethod
    def _at_least_one(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        if not urls:
            raise PydanticCustomError("too_short", "must list at least one URL")
        return urls


class ThresholdsConfig(ConfigModel):
    """How long a failure must hold before failing over (the plan's triggers)."""

    region_unhealthy: PositiveDuration = 300.0
    """Primary region health checks failing this long fails over (plan: > 5 minutes)."""
    db_unreachable: PositiveDuration = 120.0
    """Primary database unreachable this long fails over (plan: > 2 minutes)."""
    recovery: PositiveDuration = 30.0
    """A failing condition must be healthy this long before it counts as recovered."""
    retry_backoff: PositiveDuration = 10.0
    """Wait between retries of a failover the executor refused."""


class ProbeConfig(ConfigModel):
    """How often and how patiently targets are probed."""

    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 2.0
    """Per-probe deadline; must be shorter than ``interval``."""
    jitter: float = Field(default=0.1, ge=0.0, le=0.5, strict=True)
    """Fraction of ``interval`` by which each probe start is randomly shifted."""
    healthy_fraction: float = Field(default=0.5, gt=0.0, le=1.0, strict=True)
    """Fraction of a region's health URLs that must answer 2xx for it to be healthy."""
    session_max_age: Annotated[Duration, Field(ge=0)] = 10.0
    """How long a probe keeps its connections (a database probe its PostgreSQL session, a
    region's health probe its HTTP keep-alive connections) before it opens new ones (every
    look still reads the server's role, every check its status); 0: new ones every look."""

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> Self:
        if self.timeout >= self.interval:
            raise problem_error(
                "timeout",
                f"must be shorter than probe.interval ({format_duration(self.interval)})",
                got=format_duration(self.timeout),
            )
        return self



class PromotionConfig(ConfigModel):
    """Guards on promoting the replica."""

    max_lag_bytes: Bytes = 16 * 2**20
    """Refuse to promote a replica further behind than this (bytes, or '16MiB')."""
    force: bool = False
    """Promote even past ``max_lag_bytes`` (data loss accepted)."""
    timeout: PositiveDuration = 30.0
    """How long to wait for the promotion to finish."""
    catch_up_timeout: PositiveDuration = 30.0
    """How long to wait, once a reachable old primary is fenced, for the standby to replay
    its final WAL position before pg_promote (zero loss); not caught up in time refuses
    the promotion unless ``force``."""


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class LoggingConfig(ConfigModel):
    """Log output."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lowercase)] = (
        "info"
    )


class WatchdogConfig(ConfigModel):
    """Everything one watchdog needs; load it with :func:`load_config`."""

    region: NonBlank
    """The region this watchdog runs in."""
    primary_region: NonBlank
    """The region that holds the primary at start."""
    node_name: NonBlank | None = None
    """Lock holder identity; None means ``"{hostname}/{region}"``."""
    regions: dict[NonBlank, RegionConfig]
    """Exactly two regions, by name."""
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    lock: LockConfig = Field(default_factory=LockConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    role: Literal["watchdog", "witness"] = "watchdog"
    """A witness probes and publishes its observations; it never takes the lock or acts."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    peers: tuple[HttpUrl, ...] = ()
    """Base URLs of the other watchdogs' APIs (their /v1/observations are polled)."""
    witness: HttpUrl | None = None
    """Base URL of the witness's API."""
    peer_tls: PeerTlsConfig | None = None
    """How ``https://`` peers and the witness are dialled; defaults from ``api.tls``."""
    fence_after: PositiveDuration | None = None
    """A primary-side watchdog hearing neither peers nor witness this long fences its own
    primary. Must be shorter than ``self_fence_budget`` (the other side's earliest
    promotion minus this side's worst detection delay); default (when peers are set):
    three quarters of that budget (71.25s with the production defaults)."""
    dns: DnsConfig = Field(default_factory=DnsConfig)
    self_fence: SelfFenceConfig = Field(default_factory=SelfFenceConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    runbook: RunbookConfig = Field(default_factory=RunbookConfig)
    failback: FailbackConfig = Field(default_factory=FailbackConfig)
    evidence_dir: ConfigPath = Path("/var/lib/agentaskit-dr/evidence")
    """Where failover evidence files and incident review drafts are written."""
    evidence_layout: EvidenceLayout = Field(default_factory=EvidenceLayout)
    """Where each kind of evidence goes under ``evidence_dir`` (the plan's layout)."""
    backup: BackupJobsConfig | None = None
    """The backup jobs this watchdog schedules (``backup: {config: PATH}``); None: none."""
    binding: BindingConfig | None = None
    """This region's PostgreSQL is bound to this watchdog by its service manager
    (systemd ``BindsTo=``, or a livenessProbe on Kubernetes); its timing, checked against
    the thresholds. None: not declared (the daemon still checks ``$WATCHDOG_USEC``)."""
    start_gate: StartGateConfig = Field(default_factory=StartGateConfig)
    """How ``start-gate`` answers when no source of the primary's whereabouts answers."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        problems: list[Problem] = []
        names = list(self.regions)
        if len(names) != 2:
            problems.append(
                Problem(
                    ("regions",),
                    "must name exactly two regions, the primary and the secondary "
                    f"(got {len(names)}: {', '.join(names) or 'none'})",
                )
            )
        for field in ("region", "primary_region"):
            if field == "region" and self.role == "witness":
                continue  # a witness runs in a third place
            value = getattr(self, field)
            if value not in self.regions:
                problems.append(
                    Problem(
                        (field,), f"must be one of the regions: {', '.join(names)}", got=repr(value)
                    )
                )
        interval = self.probe.interval
        for name in ThresholdsConfig.model_fields:
            seconds = getattr(self.thresholds, name)
            if seconds <= interval:
                problems.append(
                    Problem(
                        ("thresholds", name),
                        f"must be longer than probe.interval ({format_duration(interval)})",
                        got=format_duration(seconds),
                    )
                )
        budget = self.self_fence_budget
        listens = self.role == "watchdog" and bool(self.peers or self.witness)
        if self.fence_after is not None and self.fence_after >= budget:
            problems.append(Problem(
                ("fence_after",),
                "must be shorter than the self-fence budget "
                f"({format_duration(max(budget, 0.0))}: the shortest threshold, minus how "
                "long peer reports stay fresh, two probe intervals with jitter and one probe "
                "timeout), so the primary is fenced before the secondary may promote",
                got=format_duration(self.fence_after),
            ))
        elif self.fence_after is None and listens and budget <= 0 and not problems:
            shortest_name = min(("db_unreachable", "region_unhealthy"),
                                key=lambda name: float(getattr(self.thresholds, name)))
            problems.append(Problem(
                ("thresholds", shortest_name),
                "too short for self-fencing with peers: the shortest threshold must exceed "
                f"{format_duration(self.self_fence_delay)} (peer staleness "
                f"{format_duration(self.peer_stale_after)} + two probe intervals with jitter "
                "+ one probe timeout)",
                got=format_duration(min(self.thresholds.db_unreachable,
                                        self.thresholds.region_unhealthy)),
            ))
        if self.role == "watchdog" and self.fence_after is not None and not (
            self.peers or self.witness
        ):
            problems.append(Problem(("fence_after",), "needs peers or a witness to listen to"))
        if self.binding is not None:
            if self.role == "witness":
                problems.append(Problem(("binding",), "a witness has no server to bind"))
            elif (refused := self.binding_budget().problem()) is not None:
                problems.append(Problem(("binding",), refused))
        urls = {f"peers[{index}]": url for index, url in enumerate(self.peers)}
        if self.witness is not None:
            urls["witness"] = self.witness
        problems.extend(vantage_url_problems(urls, self.api, self.peer_tls))
        if problems:
            raise problems_error(problems)
        return self

    @property
    def vantage_urls(self) -> dict[str, str]:
        """Who this daemon listens to: {label: base URL} for peers and the witness."""
        urls = {f"peer{index}": url.rstrip("/") for index, url in enumerate(self.peers, 1)}
        if self.witness:
            urls["witness"] = self.witness.rstrip("/")
        return urls

    @property
    def peer_stale_after(self) -> float:
        """How old a peer's report may be and still count: two rounds plus a timeout."""
        return 2 * self.probe.interval + self.probe.timeout

    @property
    def self_fence_delay(self) -> float:
        """The worst time from a partition to the isolated primary-side watchdog's fence,
        not counting ``fence_after`` itself: its last peer report stays fresh
        ``peer_stale_after``; the isolation is assessed at its next own probe and the fence
        issued at the first probe past ``fence_after`` (two intervals, jitter included);
        the fence's own round trips take up to three probe timeouts, of which the other
        side's promotion spends at least two timing out on the cut-off primary (its
        check_primary probe and its fence attempt), leaving one."""
        probe = self.probe
        return self.peer_stale_after + 2 * probe.interval * (1 + probe.jitter) + probe.timeout

    @property
    def self_fence_budget(self) -> float:
        """``fence_after`` must stay below this: the other side's earliest promotion comes
        the shortest threshold after the partition, the fence ``self_fence_delay`` +
        ``fence_after`` after it."""
        shortest = min(self.thresholds.db_unreachable, self.thresholds.region_unhealthy)
        return shortest - self.self_fence_delay

    @property
    def peer_client_tls(self) -> PeerClientTls:
        """The CA and client certificate the poller dials ``https://`` vantages with."""
        return peer_client_tls(self.api, self.peer_tls)

    def warnings(self) -> list[str]:
        """``"field: message"`` lines for a config that runs but not as a cluster should."""
        warnings = vantage_warnings(role=self.role, peers=self.peers, witness=self.witness,
                                    api=self.api)
        if self.binding is not None and (tight := self.binding_budget().warning()):
            warnings.append(f"binding: {tight}")
        if short := self.own_primary_hold()[1]:
            warnings.append(f"thresholds.db_unreachable: {short}")
        return warnings

    def own_primary_hold(self) -> tuple[float | None, str]:
        """When this watchdog holds its own unreachable primary (config/_hold.py)."""
        region = self.regions.get(self.region)
        return hold_after(role=self.role, own=region.database if region else None,
                          db_unreachable=self.thresholds.db_unreachable,
                          interval=self.probe.interval, jitter=self.probe.jitter,
                          timeout=self.probe.timeout)

    def binding_budget(self, liveness: float | None = None) -> BindingBudget:
        """How fast the bound server stops after this watchdog hangs, against the
        thresholds; ``liveness`` (``$WATCHDOG_USEC``) counts when it is longer than
        ``binding.liveness_timeout``. With no ``binding`` section the server's stop time
        counts as zero."""
        binding = self.binding
        declared = binding.liveness_timeout if binding is not None else 0.0
        return binding_budget(
            interval=self.probe.interval, db_unreachable=self.thresholds.db_unreachable,
            region_unhealthy=self.thresholds.region_unhealthy,
            liveness=max(declared, liveness or 0.0),
            stop=binding.postgres_stop_timeout if binding is not None else 0.0)

    @property
    def effective_fence_after(self) -> float | None:
        """``fence_after``, or its default when peers or a witness are configured."""
        if self.fence_after is not None:
            return self.fence_after
        if self.role != "watchdog" or not (self.peers or self.witness):
            return None
        return round(0.75 * self.self_fence_budget, 3)

    @property
    def holder(self) -> str:
        """Who this watchdog is to the lock: ``node_name`` or ``"{hostname}/{region}"``."""
        return self.node_name or f"{socket.gethostname()}/{self.region}"

    @property
    def secondary_region(self) -> str:
        """The region that is not ``primary_region``."""
        return next(name for name in self.regions if name != self.primary_region)

    def core_thresholds(self) -> Thresholds:
        """The thresholds as the decision core takes them."""
        return Thresholds(
            region_unhealthy=self.thresholds.region_unhealthy,
            db_unreachable=self.thresholds.db_unreachable,
            recovery=self.thresholds.recovery,
            retry_backoff=self.thresholds.retry_backoff,
            fence_after=self.effective_fence_after,
            self_fence_auto_lift=self.self_fence.auto_lift,
            self_fence_stuck_after=self.self_fence.stuck_alert_after,
            hold_after=self.own_primary_hold()[0],
        )

    def with_primary(self, region: str) -> WatchdogConfig:
        """A copy that names ``region`` as the primary (after a failover or failback)."""
        if region not in self.regions:
            known = ", ".join(self.regions)
            raise ValueError(f"unknown region {region!r}; expected one of {known}")
        return self.model_copy(update={"primary_region": region})

    def redacted(self) -> dict[str, Any]:
        """A JSON-able dict for logs and status, every password replaced by ``"***"``."""
        data: dict[str, Any] = redact(self.model_dump(mode="json"))
        data["holder"] = self.holder
        return data

