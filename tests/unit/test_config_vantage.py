"""Configuration of vantage points, the API and the runbook's actuators.

Each key is loaded from YAML next to the test the way an operator writes it; each bad
value is refused with a ConfigError whose problem line names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentaskit_dr.cli import main
from agentaskit_dr.config import ConfigError, WatchdogConfig, load_config

WEST, EAST = "us-west-2", "us-east-1"
Edit = Callable[[dict[str, Any]], object]


def minimal() -> dict[str, Any]:
    """The smallest valid watchdog config: two regions, no secrets, defaults elsewhere."""
    return {
        "region": EAST,
        "primary_region": WEST,
        "node_name": "watchdog-east",
        "regions": {
            name: {
                "health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
                "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{name}"},
            }
            for name in (WEST, EAST)
        },
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path: Path, edit: Edit) -> WatchdogConfig:
    data = minimal()
    edit(data)
    return load_config(write(tmp_path, data))


def problems(tmp_path: Path, edit: Edit) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, edit)
    return caught.value.problems


def fields_of(lines: list[str]) -> list[str]:
    return [line.split(": ")[0] for line in lines]


def west(data: dict[str, Any]) -> dict[str, Any]:
    region: dict[str, Any] = data["regions"][WEST]
    return region


def test_the_minimal_config_loads_with_no_vantage_points() -> None:
    config = WatchdogConfig.model_validate(minimal())

    assert (config.role, config.peers, config.witness) == ("watchdog", (), None)
    assert config.vantage_urls == {}
    assert config.effective_fence_after is None
    assert config.core_thresholds().fence_after is None
    assert config.api.listen == "127.0.0.1:8787"


# ---------------------------------------------------------------- role


def test_a_witness_may_run_in_a_region_outside_the_two(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(role="witness", region="witness-site"))

    assert (config.role, config.region) == ("witness", "witness-site")


def test_a_watchdog_must_run_in_one_of_the_two_regions(tmp_path: Path) -> None:
    assert problems(tmp_path, lambda d: d.update(region="witness-site")) == [
        "region: must be one of the regions: us-west-2, us-east-1 (got 'witness-site')"
    ]


def test_a_witness_still_needs_a_primary_region_among_the_two(tmp_path: Path) -> None:
    edit: Edit = lambda d: d.update(role="witness", region="witness-site",  # noqa: E731
                                    primary_region="eu-west-1")
    assert fields_of(problems(tmp_path, edit)) == ["primary_region"]


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    assert fields_of(problems(tmp_path, lambda d: d.update(role="observer"))) == ["role"]


# ---------------------------------------------------------------- api


@pytest.mark.parametrize("listen", ["127.0.0.1:8787", "0.0.0.0:0", "[::1]:8787",
                                    "watchdog.internal:65535"])
def test_api_listen_takes_host_and_port(tmp_path: Path, listen: str) -> None:
    assert load(tmp_path, lambda d: d.update(api={"listen": listen})).api.listen == listen


def test_api_listen_null_turns_the_api_off(tmp_path: Path) -> None:
    assert load(tmp_path, lambda d: d.update(api={"listen": None})).api.listen is None


@pytest.mark.parametrize("listen", ["8787", "localhost", "127.0.0.1:65536", "127.0.0.1:http",
                                    ":8787", "127.0.0.1:", "127.0.0.1:-1"])
def test_api_listen_without_host_and_port_is_refused(tmp_path: Path, listen: str) -> None:
    assert problems(tmp_path, lambda d: d.update(api={"listen": listen})) == [
        f"api.listen: must be host:port, like 127.0.0.1:8787 (got {listen!r})"
    ]


def test_api_listen_must_be_text(tmp_path: Path) -> None:
    assert fields_of(problems(tmp_path, lambda d: d.update(api={"listen": 8787}))) == [
        "api.listen"
    ]


def test_api_token_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(api={"token_file": "secrets/api-token"}))

    assert config.api.token_file == tmp_path / "secrets" / "api-token"


def test_an_unknown_api_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    assert problems(tmp_path, lambda d: d.update(api={"token": "x"})) == [
        "api.token: unknown key; did you mean 'token_file'?"
    ]


# ---------------------------------------------------------------- peers and witness


def test_peers_and_witness_become_vantage_urls_without_trailing_slashes(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(
        peers=["https://127.0.0.1:8788/", "https://west.example.test:8787"],
        witness="https://witness.example.test/", peer_tls={"ca_file": "ca.crt"},
    ))

    assert config.vantage_urls == {
        "peer1": "https://127.0.0.1:8788",
        "peer2": "https://west.example.test:8787",
        "witness": "https://witness.example.test",
    }


@pytest.mark.parametrize("url", ["ftp://west.example.test", "west.example.test:8787",
                                 "redis://127.0.0.1:6379", "http://"])
def test_a_peer_url_must_be_http_or_https(tmp_path: Path, url: str) -> None:
    lines = problems(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788", url]))

    assert lines == [f"peers[1]: must be an http:// or https:// URL (got {url!r})"]


def test_the_witness_url_must_be_http_or_https(tmp_path: Path) -> None:
    assert problems(tmp_path, lambda d: d.update(witness="file:///etc/passwd")) == [
        "witness: must be an http:// or https:// URL (got 'file:///etc/passwd')"
    ]


# ---------------------------------------------------------------- fence_after


def test_fence_after_defaults_to_three_quarters_of_the_self_fence_budget_with_peers(
    tmp_path: Path,
) -> None:
    config = load(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788"]))

    # budget = db_unreachable 120 s - (staleness 2 x 5 s + 2 s) - 2 x 5 s x 1.1 - 2 s = 95 s
    assert config.self_fence_budget == 95.0
    assert config.effective_fence_after == 71.25
    assert config.core_thresholds().fence_after == 71.25


def test_fence_after_default_follows_the_shorter_threshold(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(
        witness="http://127.0.0.1:8790",
        thresholds={"db_unreachable": "10m", "region_unhealthy": "1m"},
    ))

    assert config.effective_fence_after == 0.75 * (60.0 - 25.0)  # 25 s: the delay terms


def test_the_self_fence_lands_before_the_other_sides_earliest_promotion(tmp_path: Path) -> None:
    # The inequality, checked over the whole timeline with the worst case of every term:
    # partition at 0; the last peer report arrived at 0; own probes every interval x 1.1.
    config = load(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788"]))
    probe = config.probe
    fence_after = config.effective_fence_after
    assert fence_after is not None
    slowest_probe = probe.interval * (1 + probe.jitter)
    isolated_from = config.peer_stale_after + slowest_probe
    fence_issued = isolated_from + fence_after + slowest_probe
    writes_stop = fence_issued + 3 * probe.timeout  # connect, read-only, end sessions
    # The other side: ripe at the threshold, then its check_primary probe and its fence
    # attempt each hang for a timeout on the cut-off primary before pg_promote.
    earliest_promotion = config.thresholds.db_unreachable + 2 * probe.timeout
    assert writes_stop < earliest_promotion


def test_thresholds_too_short_for_self_fencing_are_refused_when_peers_listen(
    tmp_path: Path,
) -> None:
    lines = problems(tmp_path, lambda d: d.update(
        peers=["http://127.0.0.1:8788"], probe={"interval": "10s", "timeout": "5s"},
        thresholds={"db_unreachable": "40s", "region_unhealthy": "5m", "recovery": "30s",
                    "retry_backoff": "30s"}))

    assert fields_of(lines) == ["thresholds.db_unreachable"]
    assert "too short for self-fencing with peers" in lines[0]


def test_a_witness_never_self_fences(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(role="witness", region="witness-site",
                                               peers=["http://127.0.0.1:8788"]))

    assert config.effective_fence_after is None


def test_fence_after_just_inside_the_self_fence_budget_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788"],
                                               fence_after="1m34s"))

    assert config.effective_fence_after == 94.0


@pytest.mark.parametrize("fence_after", ["1m35s", "1m50s", "2m", "10m"])
def test_fence_after_not_inside_the_self_fence_budget_is_refused(
    tmp_path: Path, fence_after: str
) -> None:
    lines = problems(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788"],
                                                  fence_after=fence_after))

    assert fields_of(lines) == ["fence_after"]
    assert "must be shorter than the self-fence budget (1m35s" in lines[0]


def test_fence_after_without_peers_or_witness_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, lambda d: d.update(fence_after="60s")) == [
        "fence_after: needs peers or a witness to listen to"
    ]


@pytest.mark.parametrize("fence_after", ["0s", -5, "soon"])
def test_fence_after_must_be_a_positive_duration(tmp_path: Path, fence_after: object) -> None:
    lines = problems(tmp_path, lambda d: d.update(peers=["http://127.0.0.1:8788"],
                                                  fence_after=fence_after))
    assert fields_of(lines) == ["fence_after"]


@pytest.mark.parametrize(("db_unreachable", "interval", "timeout"),
                         [("10s", "5s", "2s"), ("20s", "6s", "2s"), ("8s", "2s", "1s")])
def test_the_default_fence_after_also_fences_before_the_promotion_deadline(
    tmp_path: Path, db_unreachable: str, interval: str, timeout: str
) -> None:
    """Invariant 5: the primary side fences before the other side may promote. The
    default must obey the rule an explicit value must, also with short thresholds."""
    def edit(data: dict[str, Any]) -> None:
        data.update(peers=["http://127.0.0.1:8788"],
                    thresholds={"db_unreachable": db_unreachable, "recovery": "30s",
                                "retry_backoff": "30s"},
                    probe={"interval": interval, "timeout": timeout})

    # Either fix is right: refuse the config naming fence_after or the threshold too short
    # for any self-fence, or pick a default inside the budget.
    refused: list[str] | None
    try:
        config = load(tmp_path, edit)
    except ConfigError as exc:
        refused = exc.problems
    else:
        refused = None
    if refused is not None:
        assert fields_of(refused) in (["fence_after"], ["thresholds.db_unreachable"])
        return
    fence_after = config.effective_fence_after
    assert fence_after is not None
    assert fence_after + config.self_fence_delay < config.thresholds.db_unreachable, (
        f"default fence_after {fence_after:g}s plus the detection delay "
        f"{config.self_fence_delay:g}s is not before the other side's earliest promotion: "
        "the config loads, yet the secondary may promote while the primary still takes writes"
    )


# ---------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("kubernetes", [
    {"api_url": "https://k8s.us-west-2.example.test:6443", "token_file": "k8s-token"},
    {"kubeconfig": "kube/west.yaml"},
    {"in_cluster": True},
])
def test_kubernetes_takes_exactly_one_way_in(tmp_path: Path, kubernetes: dict[str, Any]) -> None:
    config = load(tmp_path, lambda d: west(d).update(kubernetes=kubernetes))

    cluster = config.regions[WEST].kubernetes
    assert cluster is not None
    assert cluster.namespace == "agentaskit-production"
    if "kubeconfig" in kubernetes:
        assert cluster.kubeconfig == tmp_path / "kube" / "west.yaml"
    if "token_file" in kubernetes:
        assert cluster.token_file == tmp_path / "k8s-token"


@pytest.mark.parametrize(("kubernetes", "got"), [
    ({}, "none"),
    ({"namespace": "apps"}, "none"),
    ({"api_url": "https://k8s.example.test", "in_cluster": True}, "api_url, in_cluster"),
    ({"kubeconfig": "k.yaml", "in_cluster": True}, "kubeconfig, in_cluster"),
    ({"api_url": "https://k8s.example.test", "kubeconfig": "k.yaml"}, "api_url, kubeconfig"),
])
def test_kubernetes_with_none_or_several_ways_in_is_refused(
    tmp_path: Path, kubernetes: dict[str, Any], got: str
) -> None:
    assert problems(tmp_path, lambda d: west(d).update(kubernetes=kubernetes)) == [
        f"regions.us-west-2.kubernetes: set exactly one of api_url, kubeconfig, in_cluster "
        f"(got {got})"
    ]


@pytest.mark.parametrize(("kubernetes", "field"), [
    ({"api_url": "ftp://k8s.example.test"}, "regions.us-west-2.kubernetes.api_url"),
    ({"in_cluster": True, "namespace": " "}, "regions.us-west-2.kubernetes.namespace"),
    ({"in_cluster": True, "ready_timeout": "0s"}, "regions.us-west-2.kubernetes.ready_timeout"),
    ({"in_cluster": True, "context": "west"}, "regions.us-west-2.kubernetes.context"),
])
def test_each_kubernetes_field_rule(tmp_path: Path, kubernetes: dict[str, Any],
                                    field: str) -> None:
    assert fields_of(problems(tmp_path, lambda d: west(d).update(kubernetes=kubernetes))) == [
        field
    ]


# ---------------------------------------------------------------- dns.route53

ROUTE53 = {"hosted_zone_id": "Z0123456789", "record_name": "api.agentaskit.example."}


def test_route53_with_its_defaults(tmp_path: Path) -> None:
    route53 = load(tmp_path, lambda d: d.update(dns={"route53": ROUTE53})).dns.route53

    assert route53 is not None
    assert (route53.record_type, route53.ttl, route53.style, route53.aws_region) == (
        "CNAME", 60, "simple", "us-east-1"
    )
    assert route53.endpoint_url is None


def test_route53_fully_written_out(tmp_path: Path) -> None:
    full = {**ROUTE53, "record_type": "A", "ttl": 0, "style": "weighted",
            "endpoint_url": "http://127.0.0.1:5000", "aws_region": "us-west-2"}
    route53 = load(tmp_path, lambda d: d.update(dns={"route53": full})).dns.route53

    assert route53 is not None
    assert (route53.record_type, route53.ttl, route53.style) == ("A", 0, "weighted")


def test_no_dns_section_means_no_dns_switch(tmp_path: Path) -> None:
    assert load(tmp_path, lambda d: None).dns.route53 is None


@pytest.mark.parametrize(("change", "field"), [
    ({"hosted_zone_id": None}, "dns.route53.hosted_zone_id"),
    ({"record_name": " "}, "dns.route53.record_name"),
    ({"record_type": "MX"}, "dns.route53.record_type"),
    ({"ttl": -1}, "dns.route53.ttl"),
    ({"ttl": 172801}, "dns.route53.ttl"),
    ({"ttl": "60"}, "dns.route53.ttl"),
    ({"style": "geolocation"}, "dns.route53.style"),
    ({"endpoint_url": "127.0.0.1:5000"}, "dns.route53.endpoint_url"),
    ({"zone": "Z1"}, "dns.route53.zone"),
])
def test_each_route53_field_rule(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    route53 = {key: value for key, value in {**ROUTE53, **change}.items() if value is not None}

    assert fields_of(problems(tmp_path, lambda d: d.update(dns={"route53": route53}))) == [field]


# ---------------------------------------------------------------- notifications


def test_webhooks_of_each_kind(tmp_path: Path) -> None:
    webhooks = [
        {"kind": "pagerduty", "routing_key_file": "pd.key"},
        {"kind": "slack", "url": "https://hooks.slack.test/services/T/B/x"},
        {"kind": "generic", "url": "http://127.0.0.1:9999/alerts"},
    ]
    config = load(tmp_path, lambda d: d.update(notifications={"webhooks": webhooks}))

    pagerduty, slack, generic = config.notifications.webhooks
    assert pagerduty.url == "https://events.pagerduty.com/v2/enqueue"
    assert pagerduty.routing_key_file == tmp_path / "pd.key"
    assert (slack.kind, generic.kind) == ("slack", "generic")


@pytest.mark.parametrize(("webhook", "line"), [
    ({"kind": "pagerduty"},
     "notifications.webhooks[0].routing_key_file: is required for pagerduty"),
    ({"kind": "slack"}, "notifications.webhooks[0].url: is required for slack"),
    ({"kind": "generic", "routing_key_file": "k"},
     "notifications.webhooks[0].url: is required for generic"),
])
def test_a_webhook_missing_what_its_kind_needs_is_refused(
    tmp_path: Path, webhook: dict[str, Any], line: str
) -> None:
    assert problems(tmp_path, lambda d: d.update(notifications={"webhooks": [webhook]})) == [
        line
    ]


@pytest.mark.parametrize(("webhook", "field"), [
    ({"kind": "email", "url": "https://x.test"}, "notifications.webhooks[0].kind"),
    ({"url": "https://x.test"}, "notifications.webhooks[0].kind"),
    ({"kind": "slack", "url": "mailto:ops@x.test"}, "notifications.webhooks[0].url"),
    ({"kind": "slack", "url": "https://x.test", "channel": "#ops"},
     "notifications.webhooks[0].channel"),
])
def test_each_webhook_field_rule(tmp_path: Path, webhook: dict[str, Any], field: str) -> None:
    edit: Edit = lambda d: d.update(notifications={"webhooks": [webhook]})  # noqa: E731
    assert fields_of(problems(tmp_path, edit)) == [field]


# ---------------------------------------------------------------- runbook and evidence


def test_runbook_defaults_are_the_plans() -> None:
    runbook = WatchdogConfig.model_validate(minimal()).runbook

    assert (runbook.scale_percent, runbook.verify_timeout, runbook.notify_timeout) == (
        50, 120.0, 10.0
    )


def test_runbook_written_out(tmp_path: Path) -> None:
    runbook = load(tmp_path, lambda d: d.update(runbook={
        "scale_percent": 100, "verify_timeout": "5m", "notify_timeout": "3s"})).runbook

    assert (runbook.scale_percent, runbook.verify_timeout, runbook.notify_timeout) == (
        100, 300.0, 3.0
    )


@pytest.mark.parametrize(("runbook", "field"), [
    ({"scale_percent": -1}, "runbook.scale_percent"),
    ({"scale_percent": 1001}, "runbook.scale_percent"),
    ({"scale_percent": "50%"}, "runbook.scale_percent"),
    ({"scale_percent": 12.5}, "runbook.scale_percent"),
    ({"verify_timeout": "soon"}, "runbook.verify_timeout"),
    ({"verify_timeout": "0s"}, "runbook.verify_timeout"),
    ({"notify_timeout": -1}, "runbook.notify_timeout"),
    ({"scale": 50}, "runbook.scale"),
])
def test_each_runbook_field_rule(tmp_path: Path, runbook: dict[str, Any], field: str) -> None:
    assert fields_of(problems(tmp_path, lambda d: d.update(runbook=runbook))) == [field]


def test_evidence_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(evidence_dir="evidence/dr"))

    assert config.evidence_dir == tmp_path / "evidence" / "dr"


def test_an_absolute_evidence_dir_stays_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, lambda d: d.update(evidence_dir="/srv/dr-evidence"))

    assert config.evidence_dir == Path("/srv/dr-evidence")


# ---------------------------------------------------------------- several at once, and the CLI


def test_problems_in_several_new_sections_are_reported_together(tmp_path: Path) -> None:
    def break_four(data: dict[str, Any]) -> None:
        data.update(api={"listen": "localhost"}, peers=["ftp://west"],
                    notifications={"webhooks": [{"kind": "pagerduty"}]},
                    runbook={"scale_percent": -5})

    assert sorted(fields_of(problems(tmp_path, break_four))) == [
        "api.listen", "notifications.webhooks[0].routing_key_file", "peers[0]",
        "runbook.scale_percent",
    ]


def test_check_config_of_a_bad_vantage_config_names_each_field_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data.update(api={"listen": "8787"}, witness="ftp://witness", fence_after="10m",
                dns={"route53": {"record_name": "api."}})
    west(data).update(kubernetes={})
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith(f"{path}: invalid configuration\n")
    for field in ("api.listen: must be host:port", "witness: must be an http:// or https://",
                  "dns.route53.hosted_zone_id: required key is missing",
                  "regions.us-west-2.kubernetes: set exactly one of"):
        assert field in err


def test_check_config_accepts_a_full_vantage_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = minimal()
    data.update(api={"listen": "127.0.0.1:0", "token_file": "token"},
                peers=["http://127.0.0.1:8788"], witness="http://127.0.0.1:8790",
                fence_after="1m", dns={"route53": ROUTE53},
                notifications={"webhooks": [{"kind": "pagerduty", "routing_key_file": "pd"}]},
                runbook={"scale_percent": 50}, evidence_dir="evidence")
    west(data).update(kubernetes={"in_cluster": True})
    path = write(tmp_path, data)

    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid watchdog configuration\n"
