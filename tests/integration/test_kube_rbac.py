"""The Role of deploy/kubernetes against what the scale actuator really requests: every
request the Kubernetes emulation receives during a failover's scale-up, a resumed run, the
epoch floor's read and failback's restore, mapped to what RBAC checks. The Role must grant
each one, and each permission the code derivation finds must be used (both ways)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import kustomize_lite
from tests.integration.kube_api import KubeApi, kube_api_fixture  # noqa: F401 -- the fixture
from tests.integration.test_kube_scale import NS, scaler_for
from tests.kube_permissions import granted_by, needed_by_source, permission

pytestmark = pytest.mark.integration

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "overlays" / "us-east-1"


async def test_every_request_of_a_failover_and_failback_is_granted_and_nothing_more(
    kube_api: KubeApi,
) -> None:
    for name, replicas in (("api", 4), ("web", 3)):
        kube_api.add_deployment(NS, name, replicas)
    async with scaler_for(kube_api) as scaler:
        await scaler.describe()
        await scaler.apply(epoch=3, failover_id="fo-1")
        await scaler.apply(epoch=4, failover_id="fo-1")  # a successor resumes the run
        assert await scaler.recorded_epoch() == 4
        await scaler.restore(epoch=5, failover_id="fb-1")

    used = {permission(call.method, call.path) for call in kube_api.calls}
    role = next(o for o in kustomize_lite.render(OVERLAY) if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == NS
    granted = granted_by(role["rules"])
    assert used <= granted, f"requested but not granted: {used - granted}"
    assert used == {call.permission for call in needed_by_source()}
    assert granted == used
