"""One region's cluster: an ApiClient from the config's way in (URL, kubeconfig, pod), and
the deployment requests the scaler makes, each bounded, retried on transient errors and
mapped to ``ActuationFailed`` with a message that names the cause."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import aiohttp
import structlog

from agentaskit_dr.ports import ActuationFailed
from agentaskit_dr.retry import RetryCallState, last_error, retry_policy

if TYPE_CHECKING:
    from kubernetes_asyncio.client import (
        ApiClient,
        AppsV1Api,
        Configuration,
        V1Deployment,
        V1Scale,
    )
    from kubernetes_asyncio.client.exceptions import ApiException

log = structlog.get_logger("agentaskit_dr.actuators.kube_scale")

#: Makes a new ApiClient; the scaler calls it on first use and closes what it made.
ClientFactory = Callable[[], Awaitable["ApiClient"]]

T = TypeVar("T")


async def kube_api_client(
    *,
    api_url: str | None = None,
    token_file: Path | None = None,
    ca_file: Path | None = None,
    insecure: bool = False,
    kubeconfig: Path | None = None,
    in_cluster: bool = False,
) -> ApiClient:
    """An ApiClient from exactly one of: ``api_url`` (optionally with a bearer token read
    from ``token_file``, ``ca_file``, ``insecure``), ``kubeconfig`` (its current context),
    or ``in_cluster`` (the pod's service account). ValueError names a bad option."""
    # Imported here: the library's models cost about 37 MiB, paid only when Kubernetes is.
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import ApiClient, Configuration

    chosen = [
        name
        for name, given in (
            ("api_url", api_url is not None),
            ("kubeconfig", kubeconfig is not None),
            ("in_cluster", in_cluster),
        )
        if given
    ]
    if len(chosen) != 1:
        raise ValueError(
            "give exactly one of api_url, kubeconfig, in_cluster to reach Kubernetes "
            f"(got {', '.join(chosen) or 'none'})"
        )
    if api_url is not None:
        return ApiClient(configuration=_url_configuration(api_url, token_file, ca_file, insecure))
    for name, given in (("token_file", token_file), ("ca_file", ca_file), ("insecure", insecure)):
        if given:
            raise ValueError(f"{name} applies only with api_url, not with {chosen[0]}")
    configuration = Configuration()
    try:
        if kubeconfig is not None:
            _require_file("kubeconfig", kubeconfig)
            await kube_config.load_kube_config(
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except kube_config.ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in_cluster: not in a Kubernetes pod"
        raise ValueError(f"{where}: {exc}") from exc
    return ApiClient(configuration=configuration)


def _url_configuration(
    api_url: str, token_file: Path | None, ca_file: Path | None, insecure: bool
) -> Configuration:
    if not api_url.startswith(("http://", "https://")):
        raise ValueError(f"api_url {api_url!r} must start with http:// or https://")
    from kubernetes_asyncio.client import Configuration

    configuration = Configuration(host=api_url.rstrip("/"))
    if token_file is not None:
        configuration.api_key = {"BearerToken": _read_token(token_file)}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    if ca_file is not None:
        _require_file("ca_file", ca_file)
        configuration.ssl_ca_cert = str(ca_file)
    configuration.verify_ssl = not insecure
    return configuration


def _require_file(option: str, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{option} {path} is not a file")


def _read_token(token_file: Path) -> str:
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"token_file {token_file} cannot be read: {exc.strerror}") from exc
    if not token:
        raise ValueError(f"token_file {token_file} is empty")
    return token


class _Transient(Exception):
    """A request worth repeating: 409 Conflict (re-read, decide again), 429, 5xx, I/O."""


class DeploymentsApi:
    """The deployments of one namespace (matching ``label_selector``), through an
    ApiClient the caller owns, or one made by ``factory`` on first use and closed in
    ``close``. Each request is bounded by ``request_timeout``; ``retried`` tries an
    operation at most ``attempts`` times, with exponential backoff from ``retry_wait``."""

    def __init__(
        self,
        client: ApiClient | ClientFactory,
        *,
        namespace: str,
        label_selector: str | None,
        request_timeout: float,
        attempts: int,
        retry_wait: float,
    ) -> None:
        # An ApiClient, or a factory of one (told apart without importing the library).
        given = None if callable(client) else client
        self._client: ApiClient | None = given
        self._factory: ClientFactory | None = None if given is not None else client  # type: ignore[assignment]
        self.namespace = namespace
        self._selector = label_selector
        self._request_timeout = request_timeout
        self._attempts = attempts
        self._retry_wait = retry_wait

    async def close(self) -> None:
        """Close the client if it was made from the factory."""
        if self._factory is not None and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def list(self) -> list[V1Deployment]:
        async def list_once() -> list[V1Deployment]:
            apps, timeout = await self._apps(), self._request_timeout
            request = (
                apps.list_namespaced_deployment(
                    self.namespace, label_selector=self._selector, _request_timeout=timeout
                )
                if self._selector
                else apps.list_namespaced_deployment(self.namespace, _request_timeout=timeout)
            )
            found = await self._call("list", "deployments", None, request)
            return sorted(found.items, key=lambda d: str(d.metadata.name))

        return await self.retried(f"list deployments in {self.namespace}", list_once)

    async def read(self, name: str) -> V1Deployment:
        apps = await self._apps()
        request = apps.read_namespaced_deployment(
            name, self.namespace, _request_timeout=self._request_timeout
        )
        return await self._call("get", "deployments", name, request)

    async def annotate(
        self, name: str, annotations: Mapping[str, str | None], version: str
    ) -> V1Deployment:
        # A dict body goes as a strategic merge patch: None deletes an annotation, and
        # the resourceVersion is a precondition (409 if the deployment changed).
        body = {"metadata": {"resourceVersion": version, "annotations": annotations}}
        apps = await self._apps()
        request = apps.patch_namespaced_deployment(
            name, self.namespace, body, _request_timeout=self._request_timeout
        )
        return await self._call("patch", "deployments", name, request)

    async def patch_scale(self, name: str, replicas: int, version: str) -> V1Scale:
        body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": replicas}}
        apps = await self._apps()
        request = apps.patch_namespaced_deployment_scale(
            name, self.namespace, body, _request_timeout=self._request_timeout
        )
        return await self._call("patch", "deployments/scale", name, request)

    async def _apps(self) -> AppsV1Api:
        if self._client is None:
            assert self._factory is not None  # one of the two is always set
            self._client = await self._factory()
        from kubernetes_asyncio.client import AppsV1Api

        return AppsV1Api(self._client)

    async def _call(self, verb: str, resource: str, name: str | None, request: Awaitable[T]) -> T:
        """Await one request; failures become _Transient (retry) or ActuationFailed."""
        from kubernetes_asyncio.client.exceptions import ApiException

        target = resource if name is None else f"{resource} of deployment {name}"
        where = f"{verb} {target} in namespace {self.namespace}"
        try:
            return await request
        except ApiException as exc:
            status, message = int(exc.status or 0), _status_message(exc)
            if status in {409, 429} or status >= 500:
                raise _Transient(f"{where}: HTTP {status}: {message}") from None
            if status == 403:
                raise ActuationFailed(
                    f"forbidden: cannot {where}; grant the service account '{verb}' on "
                    f"{resource} in API group apps: {message}"
                ) from None
            if status == 401:
                raise ActuationFailed(
                    f"unauthorized: {where}; check the token: {message}"
                ) from None
            raise ActuationFailed(f"cannot {where}: HTTP {status}: {message}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"{where}: {type(exc).__name__}: {exc}") from exc

    async def retried(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            log.warning("kube_request_retry", what=what, attempt=state.attempt_number,
                        reason=str(last_error(state)))

        retrying = retry_policy(_Transient, attempts=self._attempts, backoff=self._retry_wait,
                                on_retry=before_sleep)
        try:
            return cast(T, await retrying(operation))
        except _Transient as exc:
            raise ActuationFailed(f"{exc}; still failing after {self._attempts} attempts") from exc

    def where(self) -> str:
        return self.namespace + (f" matching {self._selector!r}" if self._selector else "")


def _status_message(exc: ApiException) -> str:
    # The API server answers errors with a Status object whose message names the cause.
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason)
