"""Runbook step 4, "scale up the secondary cluster", with the real kubernetes_asyncio client
against an emulated API server (``kube_api``): +50% replicas, fenced by an epoch annotation."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from agentaskit_dr.actuators.kube_scale import (
    ANNOTATION_EPOCH,
    ANNOTATION_ORIGINAL,
    ANNOTATION_RUN,
    DeploymentScaler,
    kube_api_client,
)
from agentaskit_dr.ports import ActuationFailed, StaleEpoch
from tests.integration.kube_api import KubeApi, kube_api_fixture  # noqa: F401 -- the fixture

pytestmark = pytest.mark.integration

NS = "agentaskit-production"
RUN = "fo-2024-06-01-a"


@contextlib.asynccontextmanager
async def scaler_for(
    api: KubeApi, *, client: Any = None, **settings: Any
) -> AsyncIterator[DeploymentScaler]:
    settings = {"poll_interval": 0.02, "ready_timeout": 5.0, "retry_wait": 0.01} | settings
    factory = client or functools.partial(kube_api_client, api_url=api.url)
    scaler = DeploymentScaler(factory, namespace=NS, **settings)
    try:
        yield scaler
    finally:
        await scaler.close()


def scale_patches(api: KubeApi, status: int | None = 200) -> int:
    return len(api.requests("PATCH", "/scale", status))


async def test_scales_every_deployment_up_by_half_rounding_up_and_waits_for_ready(
    kube_api: KubeApi,
) -> None:
    kube_api.rollout_delay = 0.2
    for name, replicas in (("api", 4), ("web", 3), ("worker", 1)):
        kube_api.add_deployment(NS, name, replicas)
    kube_api.add_deployment("other-namespace", "api", 4)

    async with scaler_for(kube_api) as scaler:
        with capture_logs() as events:
            outcome = await scaler.apply(epoch=3, failover_id=RUN)

    assert outcome.changed
    scaled = [e for e in events if e["event"] == "deployment_scaled"]
    assert [e["deployment"] for e in scaled] == ["api", "web", "worker"]
    assert all(e["failover_id"] == RUN and e["epoch"] == 3 for e in events)
    assert events[-1]["event"] == "kube_scale_done"
    assert outcome.data == {
        "api": {"original": 4, "target": 6, "scaled": True},
        "web": {"original": 3, "target": 5, "scaled": True},
        "worker": {"original": 1, "target": 2, "scaled": True},
    }
    for name, target in (("api", 6), ("web", 5), ("worker", 2)):
        deployment = kube_api.get(NS, name)
        assert deployment.replicas == target
        # apply returned only once the rollout delay had passed and all were ready
        assert deployment.ready(kube_api.rollout_delay) == target
    assert kube_api.get("other-namespace", "api").replicas == 4
    assert scale_patches(kube_api) == 3
    assert "api 4 -> 6" in outcome.detail


async def test_records_original_epoch_and_run_as_annotations(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4, annotations={"team": "payments"})

    async with scaler_for(kube_api) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)

    assert kube_api.get(NS, "api").annotations == {
        "team": "payments",
        ANNOTATION_ORIGINAL: "4",
        ANNOTATION_EPOCH: "3",
        ANNOTATION_RUN: RUN,
    }
    # the scale went to the /scale subresource as an autoscaling/v1 Scale patch
    (scale_call,) = kube_api.requests("PATCH", "/deployments/api/scale")
    assert scale_call.body["spec"] == {"replicas": 6}


async def test_reapplying_the_same_epoch_changes_nothing(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    async with scaler_for(kube_api) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)
        writes_before = len(kube_api.writes())

        again = await scaler.apply(epoch=3, failover_id=RUN)
        described = await scaler.describe()

    assert not again.changed
    assert "deploy/api 6 -> 6 (original 4, scaled under epoch 3" in described
    assert again.data == {"api": {"original": 4, "target": 6, "scaled": False}}
    assert len(kube_api.writes()) == writes_before
    assert kube_api.get(NS, "api").replicas == 6


async def test_successor_epoch_resuming_the_run_does_not_compound(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    async with scaler_for(kube_api) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)
        resumed = await scaler.apply(epoch=4, failover_id=RUN)

    assert resumed.data == {"api": {"original": 4, "target": 6, "scaled": False}}
    assert kube_api.get(NS, "api").replicas == 6
    assert kube_api.get(NS, "api").annotations[ANNOTATION_EPOCH] == "4"
    assert scale_patches(kube_api) == 1


async def test_crash_between_annotation_and_scale_is_finished_on_resume(kube_api: KubeApi) -> None:
    marks = {ANNOTATION_ORIGINAL: "4", ANNOTATION_EPOCH: "3", ANNOTATION_RUN: RUN}
    kube_api.add_deployment(NS, "api", 4, annotations=marks)

    async with scaler_for(kube_api) as scaler:
        outcome = await scaler.apply(epoch=3, failover_id=RUN)

    assert outcome.changed
    assert outcome.data["api"] == {"original": 4, "target": 6, "scaled": True}
    assert kube_api.get(NS, "api").replicas == 6


async def test_newer_epoch_on_any_deployment_refuses_before_any_write(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    newer = {ANNOTATION_ORIGINAL: "3", ANNOTATION_EPOCH: "9", ANNOTATION_RUN: "fo-later"}
    kube_api.add_deployment(NS, "web", 5, annotations=newer)

    async with scaler_for(kube_api) as scaler:
        with (
            capture_logs() as events,
            pytest.raises(StaleEpoch, match=r"deployment web .*9.*ours 3"),
        ):
            await scaler.apply(epoch=3, failover_id=RUN)

    assert kube_api.writes() == []
    (refused,) = [e for e in events if e["event"] == "kube_scale_refused"]
    assert refused["error"] == "StaleEpoch"
    assert (refused["failover_id"], refused["epoch"]) == (RUN, 3)
    assert kube_api.get(NS, "api").replicas == 4


async def test_newer_epoch_landing_between_read_and_write_is_refused(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    # Another leader stamps epoch 9 just before our annotation patch reaches the server:
    # our patch carries the resourceVersion we decided on, so it gets 409 and we re-read.
    kube_api.on_next(
        "PATCH",
        "/deployments/api",
        lambda: kube_api.set_annotations(NS, "api", {ANNOTATION_EPOCH: "9"}),
    )

    async with scaler_for(kube_api) as scaler:
        with pytest.raises(StaleEpoch, match="epoch 9"):
            await scaler.apply(epoch=3, failover_id=RUN)

    assert kube_api.requests("PATCH", "/deployments/api", 409)
    assert scale_patches(kube_api, None) == 0
    assert kube_api.get(NS, "api").replicas == 4


async def test_conflict_once_is_reread_and_retried(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.fail_next("PATCH", "/deployments/api/scale", 409)

    async with scaler_for(kube_api) as scaler:
        outcome = await scaler.apply(epoch=3, failover_id=RUN)

    assert outcome.data["api"]["target"] == 6
    assert kube_api.get(NS, "api").replicas == 6
    assert scale_patches(kube_api, 409) == 1
    assert scale_patches(kube_api, 200) == 1
    # the retry re-read the deployment, found its own marks and kept the original 4
    assert len(kube_api.requests("GET", "/deployments/api")) == 2
    assert kube_api.get(NS, "api").annotations[ANNOTATION_ORIGINAL] == "4"


async def test_forbidden_fails_at_once_naming_namespace_deployment_and_verb(
    kube_api: KubeApi,
) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.fail_next("PATCH", "/deployments/api/scale", 403)

    async with scaler_for(kube_api) as scaler:
        with pytest.raises(ActuationFailed) as failed:
            await scaler.apply(epoch=3, failover_id=RUN)

    message = str(failed.value)
    assert message.startswith(
        f"forbidden: cannot patch deployments/scale of deployment api in namespace {NS}"
    )
    assert "grant the service account 'patch' on deployments/scale in API group apps" in message
    assert 'cannot patch resource "deployments/scale"' in message  # the server's own words
    assert scale_patches(kube_api, None) == 1  # not retried


async def test_server_errors_are_retried(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.fail_next("GET", "/deployments", 500, count=2)
    kube_api.fail_next("PATCH", "/deployments/api/scale", 503)

    async with scaler_for(kube_api) as scaler:
        outcome = await scaler.apply(epoch=3, failover_id=RUN)

    assert outcome.data["api"]["scaled"]
    assert kube_api.get(NS, "api").replicas == 6


async def test_server_errors_give_up_after_the_attempt_budget(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.fail_next("GET", "/deployments", 500, count=10)

    async with scaler_for(kube_api, attempts=3) as scaler:
        with pytest.raises(ActuationFailed, match=r"HTTP 500.*still failing after 3 attempts"):
            await scaler.apply(epoch=3, failover_id=RUN)

    assert len(kube_api.requests("GET", "/deployments", 500)) == 3


async def test_unreachable_api_server_fails_after_bounded_retries(kube_api: KubeApi) -> None:
    url = kube_api.url
    await kube_api.stop()

    client = functools.partial(kube_api_client, api_url=url)
    async with scaler_for(kube_api, client=client, attempts=2) as scaler:
        with pytest.raises(ActuationFailed, match="still failing after 2 attempts"):
            await scaler.apply(epoch=3, failover_id=RUN)


async def test_ready_timeout_names_the_lagging_deployment(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.add_deployment(NS, "web", 2, stuck=True)

    async with scaler_for(kube_api, ready_timeout=0.3) as scaler:
        with pytest.raises(
            ActuationFailed, match=r"not ready within 0.3s: web 2/3 ready"
        ) as failed:
            await scaler.apply(epoch=3, failover_id=RUN)

    assert "api" not in str(failed.value)
    assert kube_api.get(NS, "web").replicas == 3


async def test_restore_scales_back_and_clears_the_original(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.add_deployment(NS, "web", 3)
    async with scaler_for(kube_api) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)

        restored = await scaler.restore(epoch=5, failover_id="fb-1")
        again = await scaler.restore(epoch=5, failover_id="fb-1")
        # the failback's epoch stays on the deployment: the old leader is now fenced out
        with pytest.raises(StaleEpoch):
            await scaler.apply(epoch=3, failover_id=RUN)

    assert restored.changed
    assert restored.data["api"] == {"from": 6, "original": 4, "scaled_by_epoch": 3}
    assert not again.changed
    for name, original in (("api", 4), ("web", 3)):
        deployment = kube_api.get(NS, name)
        assert deployment.replicas == original
        assert deployment.annotations == {ANNOTATION_EPOCH: "5", ANNOTATION_RUN: "fb-1"}


async def test_restore_refuses_a_newer_epoch(kube_api: KubeApi) -> None:
    newer = {ANNOTATION_ORIGINAL: "4", ANNOTATION_EPOCH: "9", ANNOTATION_RUN: "fo-later"}
    kube_api.add_deployment(NS, "api", 6, annotations=newer)

    async with scaler_for(kube_api) as scaler:
        with pytest.raises(StaleEpoch, match="epoch 9"):
            await scaler.restore(epoch=5, failover_id="fb-1")

    assert kube_api.writes() == []


async def test_describe_lists_changes_without_writing(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    kube_api.add_deployment(NS, "web", 3)

    async with scaler_for(kube_api) as scaler:
        text = await scaler.describe()

    assert "deploy/api 4 -> 6" in text
    assert "deploy/web 3 -> 5" in text
    assert kube_api.writes() == []


@pytest.mark.parametrize(("percent", "expected"), [(50, 6), (100, 8), (0, 4)])
async def test_scale_by_percent(kube_api: KubeApi, percent: int, expected: int) -> None:
    kube_api.add_deployment(NS, "api", 4)

    async with scaler_for(kube_api, percent=percent) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)

    assert kube_api.get(NS, "api").replicas == expected


async def test_label_selector_limits_the_deployments(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4, labels={"app": "api", "tier": "web"})
    kube_api.add_deployment(NS, "batch", 2, labels={"app": "batch", "tier": "jobs"})

    async with scaler_for(kube_api, label_selector="tier=web") as scaler:
        outcome = await scaler.apply(epoch=3, failover_id=RUN)

    assert set(outcome.data) == {"api"}
    assert kube_api.get(NS, "batch").replicas == 2


async def test_empty_namespace_is_an_error_not_a_silent_success(kube_api: KubeApi) -> None:
    async with scaler_for(kube_api) as scaler:
        with pytest.raises(ActuationFailed, match=f"no deployments in namespace {NS}"):
            await scaler.apply(epoch=3, failover_id=RUN)


async def test_kubeconfig_with_a_token_reaches_the_api(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.token = "kubeconfig-token-123"
    kube_api.add_deployment(NS, "api", 4)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "secondary", "cluster": {"server": kube_api.url}}],
                "users": [{"name": "watchdog", "user": {"token": kube_api.token}}],
                "contexts": [
                    {"name": "dr", "context": {"cluster": "secondary", "user": "watchdog"}}
                ],
                "current-context": "dr",
            }
        )
    )

    client = functools.partial(kube_api_client, kubeconfig=kubeconfig)
    async with scaler_for(kube_api, client=client) as scaler:
        await scaler.apply(epoch=3, failover_id=RUN)

    assert kube_api.get(NS, "api").replicas == 6


async def test_token_file_is_sent_as_bearer_token(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.token = "file-token-456"
    kube_api.add_deployment(NS, "api", 4)
    token_file = tmp_path / "token"
    token_file.write_text("file-token-456\n")
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not-the-token")

    good = functools.partial(kube_api_client, api_url=kube_api.url, token_file=token_file)
    wrong = functools.partial(kube_api_client, api_url=kube_api.url, token_file=wrong_file)
    with capture_logs() as events:
        async with scaler_for(kube_api, client=good) as scaler:
            await scaler.apply(epoch=3, failover_id=RUN)
        async with scaler_for(kube_api, client=wrong) as scaler:
            with pytest.raises(ActuationFailed, match="unauthorized: list deployments") as failed:
                await scaler.describe()

    assert kube_api.get(NS, "api").replicas == 6
    assert "not-the-token" not in str(failed.value)
    assert events
    assert not [e for e in events if "file-token-456" in repr(e)]


async def test_a_given_client_stays_open_for_its_owner(kube_api: KubeApi) -> None:
    kube_api.add_deployment(NS, "api", 4)
    client = await kube_api_client(api_url=kube_api.url)
    try:
        async with scaler_for(kube_api, client=client) as scaler:
            await scaler.describe()
        async with scaler_for(kube_api, client=client) as scaler:
            assert "deploy/api 4 -> 6" in await scaler.describe()
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "exactly one of api_url, kubeconfig, in_cluster"),
        ({"api_url": "http://127.0.0.1:1", "in_cluster": True}, "got api_url, in_cluster"),
        ({"kubeconfig": Path("kc"), "token_file": Path("t")}, "token_file applies only"),
        ({"in_cluster": True, "insecure": True}, "insecure applies only"),
        ({"api_url": "127.0.0.1:6443"}, "api_url '127.0.0.1:6443' must start with"),
        ({"api_url": "https://127.0.0.1:1", "ca_file": Path("/nonexistent/ca")}, "ca_file"),
        ({"kubeconfig": Path("/nonexistent/kubeconfig")}, "kubeconfig /nonexistent"),
    ],
)
async def test_bad_client_options_are_named(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        await kube_api_client(**options)


async def test_empty_token_file_and_missing_cluster_env_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"token_file {empty} is empty"):
        await kube_api_client(api_url="http://127.0.0.1:1", token_file=empty)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="in_cluster: not in a Kubernetes pod"):
        await kube_api_client(in_cluster=True)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"factor": 1.5, "percent": 50}, "factor or percent, not both"),
        ({"factor": 0.5}, "factor must be >= 1"),
        ({"percent": -10}, "percent must be >= 0"),
        ({"ready_timeout": 0}, "ready_timeout must be > 0"),
        ({"namespace": ""}, "namespace must not be empty"),
    ],
)
async def test_bad_scaler_settings_are_named(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        DeploymentScaler(
            functools.partial(kube_api_client, api_url="http://127.0.0.1:1"), **settings
        )


def test_factor_is_exact_for_decimal_factors() -> None:
    scaler = DeploymentScaler(functools.partial(kube_api_client, api_url="http://x"), factor=1.1)
    assert [scaler.target(n) for n in (0, 1, 10, 4)] == [0, 2, 11, 5]
