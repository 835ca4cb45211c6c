"""deploy/kubernetes: each overlay rendered (``kubectl kustomize`` when installed, else the
subset in tests/kustomize_lite.py), every object validated against the Kubernetes OpenAPI
schema (``kubernetes-validate``, strict: an unknown field fails), and the shape the issue
asks for: one Recreate replica, probes on routes the API has, least-privilege RBAC derived
from the code both ways, the config a valid config with its secrets in Secrets only.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from agentaskit_dr.api.metrics import Metrics
from agentaskit_dr.api.server import build_app
from agentaskit_dr.config import load_config
from tests import kustomize_lite
from tests.kube_permissions import Permission, calls_in, granted_by, needed_by_source

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ["us-west-2", "us-east-1", "witness"]
#: Validated against the oldest Kubernetes minor still maintained when written and the
#: newest the schema package knows.
SCHEMA_VERSIONS = ["1.31", "1.37"]
APP_NAMESPACE = "agentaskit-production"

Object = dict[str, Any]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Object]]:
    name = str(request.param)
    return name, kustomize_lite.render(DEPLOY / "overlays" / name)


def only(objects: list[Object], kind: str) -> Object:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(objects: list[Object]) -> Object:
    return only(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[Object]) -> Object:
    containers = pod_spec(objects)["containers"]
    assert len(containers) == 1
    return containers[0]


def test_the_overlays_are_the_three_sites() -> None:
    assert sorted(p.name for p in (DEPLOY / "overlays").iterdir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_openapi_schema(
    overlay: tuple[str, list[Object]], version: str,
) -> None:
    validator = pytest.importorskip("kubernetes_validate",
                                    reason="kubernetes-validate (dev extra) is not installed")
    _, objects = overlay
    assert objects
    for obj in objects:
        try:
            validator.validate(obj, version, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    validator = pytest.importorskip("kubernetes_validate")
    deployment = only(kustomize_lite.render_lite(DEPLOY / "overlays" / "us-west-2"),
                      "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFs"] = True
    with pytest.raises(validator.ValidationError, match="readOnlyRootFs"):
        validator.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_fallback_renderer_agrees_with_kubectl(name: str) -> None:
    rendered = kustomize_lite.render_with_kubectl(DEPLOY / "overlays" / name)
    if rendered is None:
        pytest.skip("kubectl is not installed: the fallback renderer is all there is")

    def keyed(objects: list[Object]) -> dict[tuple[str, str], Object]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    expected = keyed(kustomize_lite.without_name_hashes(rendered))
    assert keyed(kustomize_lite.render_lite(DEPLOY / "overlays" / name)) == expected


def test_one_replica_replaced_by_recreate_never_rolled(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    spec = only(objects, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_probes_use_routes_the_api_serves(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    main = container(objects)
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    controller = SimpleNamespace(status=dict)  # routes only: nothing is called
    app = build_app(controller, metrics=Metrics(clock=lambda: 0.0),  # type: ignore[arg-type]
                    token_file=None)
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None}
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= routes
    port = main["ports"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["port"] == port["name"]
        # The config serves HTTPS (api.tls): a plain HTTP probe would fail the handshake.
        assert main[probe]["httpGet"]["scheme"] == "HTTPS"


def test_the_service_exposes_the_named_port_for_a_servicemonitor(
    overlay: tuple[str, list[Object]],
) -> None:
    _, objects = overlay
    port = container(objects)["ports"][0]
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": port["name"], "port": port["containerPort"],
                                         "targetPort": port["name"], "protocol": "TCP"}]
    # IANA service name syntax, which ServiceMonitor endpoints refer to.
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", port["name"])
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_pod_is_locked_down(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    pod, main = pod_spec(objects), container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = main["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert main["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in main["resources"]["limits"]
    namespace = only(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_ingress_only_from_peers_witness_and_prometheus(
    overlay: tuple[str, list[Object]],
) -> None:
    name, objects = overlay
    policy = only(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    port = container(objects)["ports"][0]["name"]
    sources = []
    for rule in policy["ingress"]:
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        sources.extend(rule["from"])
    cidrs = sorted(s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s)
    others = [s for s in sources if "ipBlock" not in s]
    assert others == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]
    # Two sites besides this one, the same ranges the load balancer admits.
    assert len(cidrs) == 2
    assert "192.0.2.0/32" not in cidrs, f"{name}: the base's placeholder was not replaced"
    assert sorted(only(objects, "Service")["spec"]["loadBalancerSourceRanges"]) == cidrs


def test_the_disruption_budget_covers_the_watchdog(overlay: tuple[str, list[Object]]) -> None:
    _, objects = overlay
    budget = only(objects, "PodDisruptionBudget")["spec"]
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] == 1


def config_of(objects: list[Object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The overlay's ConfigMap as the daemon loads it, with the Secret-backed variables
    the Deployment sets (and only those) in the environment."""
    main = container(objects)
    path = Path(main["args"][main["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    config_map = only(objects, "ConfigMap")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    config_volume = next(n for n, v in volumes.items()
                         if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
    assert path.parent == Path(mounts[config_volume])
    local = tmp_path / path.name
    local.write_text(config_map["data"][path.name])
    for variable in main["env"]:
        assert "secretKeyRef" in variable["valueFrom"], variable
        monkeypatch.setenv(variable["name"], "from-the-secret")
    return load_config(local)


def test_the_config_map_is_a_valid_config_whose_secrets_come_from_secrets(
    overlay: tuple[str, list[Object]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, objects = overlay
    config = config_of(objects, tmp_path, monkeypatch)
    assert config.role == ("witness" if name == "witness" else "watchdog")
    text = only(objects, "ConfigMap")["data"]["watchdog.yaml"]
    assert not re.search(r"^\s*(password|token|secret)\s*:", text, re.MULTILINE | re.I)
    assert "hooks.slack.com" not in text  # a Slack webhook URL is a credential
    # Every file the config names lives on a Secret volume (or the ConfigMap's own).
    main = container(objects)
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    secret_dirs = [Path(m["mountPath"]) for m in main["volumeMounts"]
                   if "secret" in volumes[m["name"]]]
    named = [Path(p) for p in re.findall(r"_file:\s*(/\S+)|kubeconfig:\s*(/\S+)", text)
             for p in p if p]
    assert named
    for path in named:
        assert any(path.parent == d for d in secret_dirs), f"{path} is on no Secret volume"


# ---------------------------------------------------------------- RBAC


def needed() -> set[Permission]:
    return {call.permission for call in needed_by_source()}


def test_the_role_grants_exactly_what_the_code_calls_both_ways() -> None:
    calls = needed_by_source()
    assert calls, "no Kubernetes API call found: the derivation is broken"
    objects = kustomize_lite.render(DEPLOY / "overlays" / "us-west-2")
    granted = granted_by(only(objects, "Role")["rules"])
    wanted = needed()
    missing = {p: [c.where for c in calls if c.permission == p] for p in wanted - granted}
    assert not missing, f"the Role lacks what the code calls: {missing}"
    assert not granted - wanted, f"the Role grants what no code calls: {granted - wanted}"


def test_the_derivation_sees_any_new_call() -> None:
    snippet = ("apps.delete_namespaced_deployment(name, ns)\n"
               "core.read_namespaced_deployment_scale(name, ns)\n"
               "watch.stream(core.list_namespaced_pod, ns)\n")
    assert {c.permission for c in calls_in(snippet, "snippet")} == {
        Permission("apps", "deployments", "delete"),
        Permission("apps", "deployments/scale", "get"),
        Permission("", "pods", "list"),
        Permission("", "pods", "watch"),
    }


@pytest.mark.parametrize("name", ["us-west-2", "us-east-1"])
def test_the_role_is_bound_to_the_pods_account_in_the_scaled_namespace(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = kustomize_lite.render(DEPLOY / "overlays" / name)
    role, binding = only(objects, "Role"), only(objects, "RoleBinding")
    account = only(objects, "ServiceAccount")
    assert pod_spec(objects)["serviceAccountName"] == account["metadata"]["name"]
    assert pod_spec(objects)["automountServiceAccountToken"] is True
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    # The Role is where the scaler acts: the namespace the config scales in this cluster.
    config = config_of(objects, tmp_path, monkeypatch)
    own = config.regions[name].kubernetes
    assert own is not None
    assert own.in_cluster
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == own.namespace
    assert own.namespace == APP_NAMESPACE
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_witness_gets_no_kubernetes_access() -> None:
    objects = kustomize_lite.render(DEPLOY / "overlays" / "witness")
    kinds = {obj["kind"] for obj in objects}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert pod_spec(objects)["automountServiceAccountToken"] is False
    assert "/etc/agentaskit-dr/kube" not in {m["mountPath"]
                                             for m in container(objects)["volumeMounts"]}


def test_the_base_renders_the_same_role_as_rbac_yaml() -> None:
    """The test reads the rendered Role; the file a reader opens says the same."""
    docs = list(yaml.safe_load_all((DEPLOY / "base" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    assert granted_by(role["rules"]) == needed()


BOUND_EXAMPLE = DEPLOY / "examples" / "postgres-bound-to-watchdog.yaml"


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_bound_postgres_example_validates_against_the_openapi_schema(
    version: str,
) -> None:
    validator = pytest.importorskip("kubernetes_validate",
                                    reason="kubernetes-validate (dev extra) is not installed")
    example = yaml.safe_load(BOUND_EXAMPLE.read_text())
    try:
        validator.validate(example, version, strict=True)
    except validator.ValidationError as exc:
        pytest.fail(f"{BOUND_EXAMPLE.name} (Kubernetes {version}): {exc.message} at "
                    f"{'.'.join(map(str, exc.path))}")


def test_the_bound_postgres_dies_with_its_watchdog_before_the_default_threshold() -> None:
    from agentaskit_dr.config import BindingConfig, binding_budget

    spec = yaml.safe_load(BOUND_EXAMPLE.read_text())["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    (server,) = spec["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar, started first
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    probe = server["livenessProbe"]
    # The server's liveness is the watchdog's: its /healthz, on the sidecar's port.
    assert probe["httpGet"]["path"] == "/healthz"
    assert probe["httpGet"]["port"] == sidecar["ports"][0]["containerPort"]
    assert probe["httpGet"]["scheme"] == "HTTPS"
    assert "start-gate" in " ".join(server["args"])
    liveness = probe["periodSeconds"] * probe["failureThreshold"] + probe["timeoutSeconds"]
    stop = probe["terminationGracePeriodSeconds"]
    defaults = BindingConfig()
    assert (liveness, stop) == (defaults.liveness_timeout, defaults.postgres_stop_timeout)
    budget = binding_budget(interval=5.0, db_unreachable=120.0, region_unhealthy=300.0,
                            liveness=liveness, stop=stop)
    assert budget.problem() is None
    assert budget.warning() is None
