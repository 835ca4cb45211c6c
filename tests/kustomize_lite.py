"""Render the kustomize overlays of deploy/kubernetes: with ``kubectl kustomize`` when it is
installed, otherwise with the small subset of kustomize those overlays use.

The subset: ``resources`` (files and directories), ``labels`` (metadata only),
``images``, ``configMapGenerator`` from files (without the name hash: references keep the
plain name), and ``patches`` — strategic-merge files (``$patch: delete`` of an object or of
a list item, lists merged by ``name`` or ``mountPath``) and JSON 6902 ops on a target.
When kubectl is there, a test renders both ways and compares them.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

#: The keys kustomize merges a list of maps by (strategic merge), for the lists we patch.
_MERGE_KEYS = {"containers": "name", "volumes": "name", "env": "name", "ports": "name",
               "volumeMounts": "mountPath"}


def render(overlay: Path) -> list[Object]:
    """The overlay's objects: kubectl's rendering when kubectl is installed."""
    rendered = render_with_kubectl(overlay)
    return rendered if rendered is not None else render_lite(overlay)


def render_with_kubectl(overlay: Path) -> list[Object] | None:
    """``kubectl kustomize OVERLAY``, or None when kubectl is missing or cannot do it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True,
                                text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_lite(directory: Path) -> list[Object]:
    """The subset of kustomize described in the module doc."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Object] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render_lite(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for generator in spec.get("configMapGenerator", []):
        data = {Path(name).name: (directory / name).read_text()
                for name in generator.get("files", [])}
        metadata = {"name": generator["name"]}
        if "namespace" in generator:
            metadata["namespace"] = generator["namespace"]
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
                        "data": data})
    for patch in spec.get("patches", []):
        if "path" in patch:
            for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
                objects = _strategic_merge(objects, doc)
        else:
            target = patch["target"]
            for obj in objects:
                if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]:
                    for op in yaml.safe_load(patch["patch"]):
                        _json_patch(obj, op)
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:" \
                                         f"{image['newTag']}"
    return objects


def _same(obj: Object, patch: Object) -> bool:
    return (obj["kind"] == patch["kind"]
            and obj["metadata"]["name"] == patch["metadata"]["name"]
            and obj["metadata"].get("namespace") == patch["metadata"].get("namespace"))


def _strategic_merge(objects: list[Object], patch: Object) -> list[Object]:
    matches = [obj for obj in objects if _same(obj, patch)]
    assert len(matches) == 1, f"patch matches {len(matches)} objects: {patch['metadata']}"
    if patch.get("$patch") == "delete":
        return [obj for obj in objects if obj is not matches[0]]
    _merge(matches[0], patch)
    return objects


def _merge(target: Object, patch: Object) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = _MERGE_KEYS[key]
            for item in value:
                found = [t for t in target[key] if t.get(merge_key) == item[merge_key]]
                if item.get("$patch") == "delete":
                    target[key] = [t for t in target[key] if t not in found]
                elif found:
                    _merge(found[0], item)
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _json_patch(obj: Object, op: Object) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~")
                      for p in op["path"].lstrip("/").split("/")]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    index: int | str = int(last) if isinstance(node, list) and re.fullmatch(r"\d+", last) \
        else last
    if op["op"] in ("replace", "add"):
        node[index] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del node[index]
    else:
        raise AssertionError(f"unsupported JSON patch op {op['op']}")


def _containers(obj: Object) -> list[Object]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def without_name_hashes(objects: list[Object]) -> list[Object]:
    """``objects`` with kustomize's generated-name hashes (``-84fch775tg``) removed."""
    hashed = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ConfigMap"}
    plain = {name: re.sub(r"-[a-z0-9]{10}$", "", name) for name in hashed}
    text = yaml.safe_dump_all(objects, sort_keys=True)
    for name, base in plain.items():
        text = text.replace(name, base)
    return list(yaml.safe_load_all(text))
