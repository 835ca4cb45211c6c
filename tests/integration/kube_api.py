"""A small Kubernetes API server emulation (aiohttp) for the scale actuator's tests.

Serves what ``kubernetes_asyncio``'s ``AppsV1Api`` uses for deployments, as a real API
server answers it:

- ``GET  /apis/apps/v1/namespaces/{ns}/deployments`` (DeploymentList, ``labelSelector``
  with ``k=v``, ``k==v``, ``k!=v`` and bare ``k``);
- ``GET|PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}``;
- ``GET|PATCH|PUT /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` (an
  ``autoscaling/v1`` Scale, not the Deployment).

PATCH takes merge and strategic-merge JSON (the same for maps: ``null`` deletes a key).
A ``metadata.resourceVersion`` in a write is a precondition: a mismatch answers 409, as
the real server does. Errors are ``Status`` objects. ``status.readyReplicas`` follows
``spec.replicas`` ``rollout_delay`` seconds after a change, unless the deployment is
``stuck``. Every request is recorded in ``calls``; ``fail_next`` injects errors and
``on_next`` runs a callback (a concurrent writer) just before a request is handled.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}
_MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


@dataclass(frozen=True)
class Call:
    """One request as the emulation saw it; ``status`` is what it answered."""

    method: str
    path: str
    body: Any
    status: int


@dataclass
class EmulatedDeployment:
    """One deployment's state; ``ready_from`` is the ready count when the rollout began."""

    namespace: str
    name: str
    replicas: int
    labels: dict[str, str]
    annotations: dict[str, str]
    resource_version: int
    stuck: bool
    ready_from: int
    changed_at: float
    generation: int = 1

    def ready(self, delay: float) -> int:
        if self.replicas <= self.ready_from:
            return self.replicas
        if self.stuck or time.monotonic() < self.changed_at + delay:
            return self.ready_from
        return self.replicas


@dataclass
class _Fault:
    method: str
    suffix: str
    status: int
    count: int
    message: str | None


@dataclass
class KubeApi:
    """The emulated API server. ``token``: when set, requests need ``Bearer <token>``."""

    token: str | None = None
    rollout_delay: float = 0.05
    calls: list[Call] = field(default_factory=list)
    deployments: dict[tuple[str, str], EmulatedDeployment] = field(default_factory=dict)
    _faults: list[_Fault] = field(default_factory=list)
    _hooks: list[tuple[str, str, Callable[[], None]]] = field(default_factory=list)
    _revision: int = 100
    _runner: web.AppRunner | None = None
    url: str = ""

    # ------------------------------------------------------------ test controls

    def add_deployment(
        self,
        namespace: str,
        name: str,
        replicas: int,
        *,
        ready: bool = True,
        stuck: bool = False,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> EmulatedDeployment:
        """Create a deployment; ``ready=False`` starts it with no ready replicas, ``stuck``
        keeps its ready count from ever rising (no capacity for new pods)."""
        deployment = EmulatedDeployment(
            namespace=namespace,
            name=name,
            replicas=replicas,
            labels=dict(labels or {"app": name}),
            annotations=dict(annotations or {}),
            resource_version=self._next_revision(),
            stuck=stuck,
            ready_from=replicas if ready else 0,
            changed_at=time.monotonic(),
        )
        self.deployments[namespace, name] = deployment
        return deployment

    def get(self, namespace: str, name: str) -> EmulatedDeployment:
        return self.deployments[namespace, name]

    def set_annotations(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Another writer's annotation change (bumps resourceVersion, not recorded)."""
        deployment = self.get(namespace, name)
        deployment.annotations.update(annotations)
        deployment.resource_version = self._next_revision()

    def fail_next(
        self, method: str, path_suffix: str, status: int, count: int = 1, message: str | None = None
    ) -> None:
        """Answer the next ``count`` ``method`` requests whose path ends with
        ``path_suffix`` with ``status`` and a Status body, without handling them."""
        self._faults.append(_Fault(method.upper(), path_suffix, status, count, message))

    def on_next(self, method: str, path_suffix: str, action: Callable[[], None]) -> None:
        """Run ``action`` once, right before the next matching request is handled."""
        self._hooks.append((method.upper(), path_suffix, action))

    def requests(self, method: str, path_suffix: str, status: int | None = None) -> list[Call]:
        """Recorded calls matching ``method`` and ``path_suffix`` (and ``status`` if given)."""
        return [
            call
            for call in self.calls
            if call.method == method.upper()
            and call.path.endswith(path_suffix)
            and (status is None or call.status == status)
        ]

    def writes(self) -> list[Call]:
        return [call for call in self.calls if call.method in {"PATCH", "PUT", "POST", "DELETE"}]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> KubeApi:
        app = web.Application(middlewares=[self._middleware])
        base = "/apis/apps/v1/namespaces/{ns}/deployments"
        app.router.add_get(base, self._list)
        app.router.add_get(base + "/{name}", self._get)
        app.router.add_patch(base + "/{name}", self._patch)
        app.router.add_get(base + "/{name}/scale", self._get_scale)
        app.router.add_patch(base + "/{name}/scale", self._patch_scale)
        app.router.add_put(base + "/{name}/scale", self._put_scale)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        # Port 0: the kernel picks a free port, with no window for another process to take it.
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        response = await self._answer(request, handler, body)
        self.calls.append(Call(request.method, request.path, body, response.status))
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Any], body: Any
    ) -> web.StreamResponse:
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _status(401, "Unauthorized")
        for hook in list(self._hooks):
            if hook[0] == request.method and request.path.endswith(hook[1]):
                self._hooks.remove(hook)
                hook[2]()
        for fault in self._faults:
            if fault.method == request.method and request.path.endswith(fault.suffix):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return _status(fault.status, fault.message or _message(fault.status, request))
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            return _status(404, f"the server could not find the requested resource {request.path}")
        return response

    async def _list(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        items = [
            self._deployment_json(d)
            for (ns, _), d in sorted(self.deployments.items())
            if ns == namespace and _matches(d.labels, selector)
        ]
        return web.json_response(
            {
                "apiVersion": "apps/v1",
                "kind": "DeploymentList",
                "metadata": {"resourceVersion": str(self._revision)},
                "items": items,
            }
        )

    async def _get(self, request: web.Request) -> web.Response:
        deployment = self._find(request)
        if isinstance(deployment, web.Response):
            return deployment
        return web.json_response(self._deployment_json(deployment))

    async def _patch(self, request: web.Request) -> web.Response:
        deployment = self._find(request)
        if isinstance(deployment, web.Response):
            return deployment
        patch = await _merge_patch_body(request)
        if isinstance(patch, web.Response):
            return patch
        conflict = _precondition(deployment, patch)
        if conflict is not None:
            return conflict
        merged = _merge(self._deployment_json(deployment), patch)
        replicas = merged.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return _status(422, f"spec.replicas: Invalid value: {replicas!r}")
        deployment.annotations = dict(merged["metadata"].get("annotations") or {})
        deployment.labels = dict(merged["metadata"].get("labels") or {})
        self._set_replicas(deployment, replicas)
        deployment.resource_version = self._next_revision()
        return web.json_response(self._deployment_json(deployment))

    async def _get_scale(self, request: web.Request) -> web.Response:
        deployment = self._find(request)
        if isinstance(deployment, web.Response):
            return deployment
        return web.json_response(self._scale_json(deployment))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        deployment = self._find(request)
        if isinstance(deployment, web.Response):
            return deployment
        patch = await _merge_patch_body(request)
        if isinstance(patch, web.Response):
            return patch
        return self._write_scale(deployment, _merge(self._scale_json(deployment), patch))

    async def _put_scale(self, request: web.Request) -> web.Response:
        deployment = self._find(request)
        if isinstance(deployment, web.Response):
            return deployment
        return self._write_scale(deployment, await request.json())

    # ------------------------------------------------------------ state

    def _write_scale(self, deployment: EmulatedDeployment, scale: dict[str, Any]) -> web.Response:
        conflict = _precondition(deployment, scale)
        if conflict is not None:
            return conflict
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return _status(422, f"spec.replicas: Invalid value: {replicas!r}")
        if replicas != deployment.replicas:
            self._set_replicas(deployment, replicas)
            deployment.resource_version = self._next_revision()
        return web.json_response(self._scale_json(deployment))

    def _set_replicas(self, deployment: EmulatedDeployment, replicas: int) -> None:
        if replicas == deployment.replicas:
            return
        deployment.ready_from = deployment.ready(self.rollout_delay)
        deployment.replicas = replicas
        deployment.changed_at = time.monotonic()
        deployment.generation += 1

    def _find(self, request: web.Request) -> EmulatedDeployment | web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        found = self.deployments.get(key)
        if found is None:
            return _status(404, f'deployments.apps "{key[1]}" not found')
        return found

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _deployment_json(self, d: EmulatedDeployment) -> dict[str, Any]:
        ready = d.ready(self.rollout_delay)
        status: dict[str, Any] = {"observedGeneration": d.generation, "replicas": d.replicas}
        # Like the real server, zero counts are left out: clients must read them as None.
        if ready:
            status.update(readyReplicas=ready, availableReplicas=ready, updatedReplicas=ready)
        selector = {"app": d.name}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": d.name,
                "namespace": d.namespace,
                "uid": f"uid-{d.namespace}-{d.name}",
                "resourceVersion": str(d.resource_version),
                "generation": d.generation,
                "labels": dict(d.labels),
                "annotations": dict(d.annotations),
            },
            "spec": {
                "replicas": d.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {"containers": [{"name": d.name, "image": f"example/{d.name}:1"}]},
                },
            },
            "status": status,
        }

    def _scale_json(self, d: EmulatedDeployment) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": d.name,
                "namespace": d.namespace,
                "uid": f"uid-{d.namespace}-{d.name}",
                "resourceVersion": str(d.resource_version),
            },
            "spec": {"replicas": d.replicas},
            "status": {"replicas": d.replicas, "selector": f"app={d.name}"},
        }


def _status(code: int, message: str) -> web.Response:
    reason = _REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _message(code: int, request: web.Request) -> str:
    name = request.match_info.get("name", "")
    resource = "deployments/scale" if request.path.endswith("/scale") else "deployments"
    namespace = request.match_info.get("ns", "")
    if code == 403:
        return (
            f'deployments.apps "{name}" is forbidden: User "system:serviceaccount:dr:watchdog" '
            f'cannot {request.method.lower()} resource "{resource}" in API group "apps" in the '
            f'namespace "{namespace}"'
        )
    if code == 409:
        return (
            f'Operation cannot be fulfilled on deployments.apps "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again"
        )
    return f"injected {code} for {request.method} {request.path}"


def _precondition(deployment: EmulatedDeployment, body: dict[str, Any]) -> web.Response | None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted is None or wanted == str(deployment.resource_version):
        return None
    return _status(
        409,
        f'Operation cannot be fulfilled on deployments.apps "{deployment.name}": the object '
        "has been modified; please apply your changes to the latest version and try again",
    )


async def _merge_patch_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type not in _MERGE_TYPES:
        return _status(
            415, f"the body of the request was in an unknown format: {request.content_type}"
        )
    body = await request.json()
    if not isinstance(body, dict):
        return _status(422, "a merge patch must be a JSON object")
    return body


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch (what strategic merge does for maps)."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term not in labels:
            return False
    return True


@pytest.fixture(name="kube_api")
async def kube_api_fixture() -> AsyncIterator[KubeApi]:
    """A started emulated API server on 127.0.0.1 (free port), stopped after the test."""
    api = await KubeApi().start()
    try:
        yield api
    finally:
        await api.stop()
