"""An ApiClient for one region's cluster, from the config's way in (URL, kubeconfig, pod)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, Configuration


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
