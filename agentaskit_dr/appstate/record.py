"""Our record of one application-state backup (``record.json``), written after its objects.

Modelled on the base backups' ``backup.json``: a backup is good only once its record
exists (a job that dies mid-way leaves objects, never a record). Layout in both buckets::

    appstate/<component>/<backup id>/<object name>     encrypted objects
    appstate/<component>/<backup id>/record.json       this record, encrypted too

Each object is named with its stored size and the SHA-256 of its stored (encrypted)
bytes, and the size and SHA-256 of its plaintext, so verification can check both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agentaskit_dr.backup.manifest import StoredObject

RECORD_FORMAT = 1
PREFIX = "appstate/"
RECORD_NAME = "record.json"

Component = Literal["redis", "vault", "configs"]
COMPONENTS: tuple[Component, ...] = ("redis", "vault", "configs")
#: The ``application_state`` item that configures each component.
CONFIG_ITEM: dict[Component, str] = {"redis": "redis", "vault": "secrets", "configs": "configs"}
_ID = re.compile(r"(\d{8}T\d{6}Z)-[0-9a-f]{4}")


class RecordError(ValueError):
    """A ``record.json`` that cannot be read as an application-state backup record."""


def new_backup_id(now: float) -> str:
    """Sortable by time, unique enough for jobs of one component: ``20261129T020000Z-3fa1``."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{os.urandom(2).hex()}"


def backup_id_time(backup_id: str) -> float | None:
    """When the backup with this id started (epoch seconds); None if it is not an id."""
    match = _ID.fullmatch(backup_id)
    if match is None:
        return None
    moment = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return moment.timestamp()


def component_prefix(component: Component) -> str:
    return f"{PREFIX}{component}/"


def object_key(component: Component, backup_id: str, name: str) -> str:
    """The key of one object of a backup, relative to the bucket URL's prefix."""
    return f"{PREFIX}{component}/{backup_id}/{name}"


@dataclass(frozen=True, slots=True)
class AppStateRecord:
    """What ``record.json`` holds; see the module docstring."""

    component: Component
    backup_id: str
    started_at: float
    finished_at: float
    key_id: str
    objects: tuple[StoredObject, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    """What was copied: the Redis server and its figures, Vault's address, config paths,
    their content hash and the git commit that recorded them."""
    checks: Mapping[str, str] = field(default_factory=dict)
    """Each check run before the record was written and its one-line result."""
    format: int = RECORD_FORMAT

    @property
    def stored_bytes(self) -> int:
        return sum(item.size for item in self.objects)

    def object(self, name: str) -> StoredObject:
        for item in self.objects:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["source"] = dict(self.source)
        data["checks"] = dict(self.checks)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AppStateRecord:
        try:
            data = json.loads(raw)
            objects = tuple(StoredObject(**item) for item in data.pop("objects"))
            fmt, component = data.get("format"), data.get("component")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecordError(f"not an application-state record: {exc}") from None
        if fmt != RECORD_FORMAT:
            raise RecordError(f"record format {fmt!r} is not {RECORD_FORMAT}")
        if component not in COMPONENTS:
            raise RecordError(f"unknown component {component!r}")
        try:
            return cls(objects=objects, **data)
        except TypeError as exc:
            raise RecordError(f"not an application-state record: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """A JSON-able line for ``appstate list``."""
        return {
            "component": self.component, "backup_id": self.backup_id,
            "finished_at": dt.datetime.fromtimestamp(self.finished_at, dt.UTC).isoformat(),
            "objects": len(self.objects), "stored_bytes": self.stored_bytes,
            "plain_bytes": sum(item.plain_size for item in self.objects),
            "key_id": self.key_id,
        }
