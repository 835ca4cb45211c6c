"""The Kubernetes permissions agentaskit-dr needs, derived from its code and its requests.

:func:`needed_by_source` parses every module of ``agentaskit_dr`` with ``ast`` for calls
of a ``kubernetes_asyncio`` API method (``apps.patch_namespaced_deployment_scale(...)``);
the client's own ``*_with_http_info`` code says which HTTP method and path each one
requests, and :func:`permission` turns that into what RBAC checks: (API group,
resource[/subresource], verb), as the API server's authorizer does. The integration test
maps the requests the Kubernetes emulation received the same way (:func:`permission`).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import kubernetes_asyncio.client as kube_client

PACKAGE = Path(__file__).resolve().parents[1] / "agentaskit_dr"

#: /api/v1/... (the core group) or /apis/GROUP/VERSION/..., then the namespaced or
#: cluster-wide collection, an object's name, a subresource.
_PATH = re.compile(
    r"^/(?:api|apis/(?P<group>[^/]+))/(?P<version>v[^/]+)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


class Permission(NamedTuple):
    group: str
    resource: str
    verb: str


class Call(NamedTuple):
    """One API method called in the package, where, and what it needs."""

    method: str
    where: str
    permission: Permission


def permission(http_method: str, path: str) -> Permission:
    """What RBAC checks for one request (a client's path template or a real path)."""
    found = _PATH.match(path.split("?", 1)[0])
    if found is None:
        raise ValueError(f"not a resource path: {path}")
    group, resource = found["group"] or "", found["resource"]
    if found["subresource"]:
        resource = f"{resource}/{found['subresource']}"
    named = found["name"] is not None
    method = http_method.upper()
    if method == "GET":
        verb = "get" if named else "list"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = _VERBS[method]
    return Permission(group, resource, verb)


@cache
def _api_methods() -> dict[str, list[type]]:
    """Every public method of the client's API classes (AppsV1Api, CoreV1Api, ...)."""
    methods: dict[str, list[type]] = {}
    for name in dir(kube_client):
        cls = getattr(kube_client, name)
        if not (isinstance(cls, type) and name.endswith("Api") and name != "ApiClient"):
            continue
        for method in vars(cls):
            if not method.startswith("_") and hasattr(cls, f"{method}_with_http_info"):
                methods.setdefault(method, []).append(cls)
    return methods


def request_of(method: str) -> tuple[str, str]:
    """(HTTP method, path template) that the client's ``method`` requests."""
    classes = _api_methods()[method]
    requests = set()
    for cls in classes:
        source = inspect.getsource(getattr(cls, f"{method}_with_http_info"))
        found = re.search(r"call_api\(\s*'([^']+)',\s*'([A-Z]+)'", source)
        assert found, f"{cls.__name__}.{method}: no call_api in its source"
        requests.add((found[2], found[1]))
    assert len(requests) == 1, f"{method} is ambiguous among {classes}: {requests}"
    return requests.pop()


def calls_in(source: str, where: str) -> list[Call]:
    """The client API methods ``source`` uses (``anything.method``): called, or handed to
    ``kubernetes_asyncio.watch.Watch().stream``, which lists and watches with it."""
    methods = _api_methods()
    tree = ast.parse(source)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in methods:
            http_method, path = request_of(node.attr)
            needed = permission(http_method, path)
            found.append(Call(node.attr, f"{where}:{node.lineno}", needed))
            if id(node) not in called and needed.verb == "list":
                found.append(Call(node.attr, f"{where}:{node.lineno}",
                                  needed._replace(verb="watch")))
    return found


def needed_by_source(package: Path = PACKAGE) -> list[Call]:
    """Every Kubernetes API call in the package's modules."""
    return [
        call
        for path in sorted(package.rglob("*.py"))
        for call in calls_in(path.read_text(), str(path.relative_to(package.parent)))
    ]


def granted_by(rules: Iterable[dict[str, list[str]]]) -> set[Permission]:
    """The (group, resource, verb) triples a Role's rules grant; no wildcards allowed."""
    granted = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"a wildcard in {field}: {rule}"
        assert not rule.get("resourceNames"), "resourceNames: the scaler acts on every name"
        granted |= {Permission(group, resource, verb) for group in rule["apiGroups"]
                    for resource in rule["resources"] for verb in rule["verbs"]}
    return granted
