"""Config sections for the API, the runbook's actuators and notifications.

Kept apart from ``_models`` (the watchdog core's sections) so each file stays readable.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    HttpUrl,
    NonBlank,
    PositiveDuration,
    Problem,
    problems_error,
)

DEFAULT_NAMESPACE = "agentaskit-production"


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8787"`` for IPv6) as (host, port); ValueError if malformed."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("must be host:port, like 127.0.0.1:8787")
    return host, int(port_text)


class ApiTlsConfig(ConfigModel):
    """TLS for the API: its certificate, and optionally the CA of the peers' certificates."""

    cert_file: ConfigPath
    """PEM certificate (chain) the API serves; its SANs name the host peers dial."""
    key_file: ConfigPath
    """PEM private key of ``cert_file``, unencrypted (protect it with file permissions)."""
    client_ca_file: ConfigPath | None = None
    """PEM CA whose client certificates count as peers on ``/v1/observations`` (mutual
    TLS). Clients without a certificate may still connect (status, metrics, control)."""


class PeerTlsConfig(ConfigModel):
    """How this daemon's poller dials ``https://`` peers and the witness.

    Each key left out falls back to ``api.tls``: ``ca_file`` to ``client_ca_file`` (one
    private CA signs every site), ``cert_file``/``key_file`` to the API's own pair.
    """

    ca_file: ConfigPath | None = None
    """PEM CA bundle that verifies the peers' server certificates."""
    cert_file: ConfigPath | None = None
    """PEM client certificate presented to peers that ask for one (mutual TLS)."""
    key_file: ConfigPath | None = None
    """PEM private key of ``cert_file``."""

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise problems_error([Problem((missing,), "cert_file and key_file go together")])
        return self


class ApiConfig(ConfigModel):
    """The daemon's HTTP API: status, observations for peers, metrics, control."""

    listen: str | None = "127.0.0.1:8787"
    """``host:port`` to listen on (port 0 picks a free one); null turns the API off."""
    token_file: ConfigPath | None = None
    """File holding the bearer token for POST /v1/*; without it control calls get 403."""
    peer_token_file: ConfigPath | None = None
    """File holding the peer token, shared by every site: ``/v1/observations`` requires
    it (or a client certificate, see ``tls.client_ca_file``) and the poller sends it.
    One token per line: any line is accepted, the first is sent (rotation)."""
    tls: ApiTlsConfig | None = None
    """Serve HTTPS instead of HTTP."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_listen(value)
        except ValueError as exc:
            raise PydanticCustomError("listen", str(exc)) from None
        return value


class KubernetesConfig(ConfigModel):
    """How to reach one region's Kubernetes cluster; exactly one way to authenticate."""

    api_url: HttpUrl | None = None
    """API server URL, used with ``token_file`` (and ``ca_file`` for TLS)."""
    token_file: ConfigPath | None = None
    ca_file: ConfigPath | None = None
    insecure: bool = False
    """Skip TLS verification (test clusters only)."""
    kubeconfig: ConfigPath | None = None
    in_cluster: bool = False
    """Use the pod's service account (when the watchdog runs in this cluster)."""
    namespace: NonBlank = DEFAULT_NAMESPACE
    """Every deployment in this namespace is scaled."""
    ready_timeout: PositiveDuration = 300.0
    """How long to wait for the scaled deployments to be ready."""

    @model_validator(mode="after")
    def _one_way_in(self) -> Self:
        ways = [name for name, on in (("api_url", self.api_url is not None),
                                      ("kubeconfig", self.kubeconfig is not None),
                                      ("in_cluster", self.in_cluster)) if on]
        if len(ways) != 1:
            got = ", ".join(ways) or "none"
            raise problems_error([Problem(
                (), f"set exactly one of api_url, kubeconfig, in_cluster (got {got})")])
        return self


class Route53Config(ConfigModel):
    """The service record to repoint on failover and failback."""

    hosted_zone_id: NonBlank
    record_name: NonBlank
    record_type: Literal["CNAME", "A", "AAAA"] = "CNAME"
    ttl: int = Field(default=60, ge=0, le=172800, strict=True)
    style: Literal["simple", "weighted", "failover"] = "simple"
    """simple: one record; weighted: one per region (failback shifts 10/50/100%);
    failover: PRIMARY/SECONDARY records."""
    endpoint_url: HttpUrl | None = None
    """A Route 53-compatible endpoint (tests); null for AWS itself."""
    aws_region: NonBlank = "us-east-1"


class DnsConfig(ConfigModel):
    route53: Route53Config | None = None


class WebhookConfig(ConfigModel):
    """One notification receiver."""

    kind: Literal["slack", "pagerduty", "generic"]
    url: HttpUrl = "https://events.pagerduty.com/v2/enqueue"
    routing_key_file: ConfigPath | None = None
    """PagerDuty Events API v2 routing key (required for kind pagerduty)."""

    @model_validator(mode="after")
    def _pagerduty_key(self) -> Self:
        if self.kind == "pagerduty" and self.routing_key_file is None:
            raise problems_error([Problem(("routing_key_file",), "is required for pagerduty")])
        if self.kind != "pagerduty" and "url" not in self.model_fields_set:
            raise problems_error([Problem(("url",), f"is required for {self.kind}")])
        return self


class NotificationsConfig(ConfigModel):
    webhooks: tuple[WebhookConfig, ...] = ()


class RunbookConfig(ConfigModel):
    """The failover runbook's knobs."""

    scale_percent: int = Field(default=50, ge=0, le=1000, strict=True)
    """Scale the new primary region's deployments up by this much (plan: +50%)."""
    verify_timeout: PositiveDuration = 120.0
    """How long service verification may take before the step fails."""
    notify_timeout: PositiveDuration = 10.0
    """Bound on each notification; a failing notifier never blocks the failover."""
