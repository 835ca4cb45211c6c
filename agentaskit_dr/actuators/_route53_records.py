"""Route 53 record sets and the fencing marker as values: parsing, comparing, describing.

Pure helpers of ``dns_route53``; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Set identifier ("" for a simple record) -> {"value", "ttl", and "weight" or "failover"}.
Records = dict[str, dict[str, Any]]

# Failover ids and region names go into the marker's TXT string (255 characters at most).
NAME = re.compile(r"[A-Za-z0-9._:-]{1,100}")


@dataclass(frozen=True, slots=True)
class FencingMarker:
    """The TXT record that says which epoch last switched the record, and to what."""

    epoch: int
    run: str
    serving: str
    weight: int
    values: tuple[str, ...]  # as stored, quoted: the DELETE of a compare-and-set needs them
    ttl: int


def validate_settings(
    *, zone: str, record_type: str, ttl: int, style: str, targets: Mapping[str, str],
    serving: str, weight: int,
) -> None:
    """Raise ValueError naming the bad setting; config validation should catch these first."""
    problems = []
    if not zone.strip():
        problems.append("hosted_zone_id is empty")
    if record_type not in {"CNAME", "A", "AAAA"}:
        problems.append(f"record_type {record_type!r} is not CNAME, A or AAAA")
    if not 0 <= ttl <= 2_147_483_647:
        problems.append(f"ttl {ttl} is out of range")
    if style not in {"simple", "weighted", "failover"}:
        problems.append(f"style {style!r} is not simple, weighted or failover")
    if serving not in targets:
        problems.append(f"serving_region {serving!r} has no entry in targets {sorted(targets)}")
    if style in {"weighted", "failover"} and len(targets) != 2:
        problems.append(f"style {style!r} needs exactly two regions in targets, got {len(targets)}")
    if not 0 <= weight <= 100:
        problems.append(f"weight {weight} is not a percentage (0-100)")
    elif weight != 100 and style != "weighted":
        problems.append(f"weight {weight} needs style 'weighted', not {style!r}")
    for region, value in targets.items():
        if not NAME.fullmatch(region):
            problems.append(f"targets region {region!r} is not a name like 'us-east-1'")
        if record_type in {"A", "AAAA"}:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                problems.append(f"targets[{region!r}] {value!r} is not an IP address")
        elif not value.strip():
            problems.append(f"targets[{region!r}] is empty")
    if problems:
        raise ValueError("; ".join(problems))


def normalize(record_type: str, value: str) -> str:
    """Compare values as Route 53 means them: case and final dot of names do not matter."""
    if record_type == "CNAME":
        return value.rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def rrset_value(record_type: str, rrset: dict[str, Any]) -> str:
    if "AliasTarget" in rrset:
        return "alias:" + normalize("CNAME", rrset["AliasTarget"]["DNSName"])
    values = sorted(normalize(record_type, r["Value"]) for r in rrset.get("ResourceRecords", []))
    return ",".join(values)


def matches(records: Records, desired: Records) -> bool:
    return all(records.get(set_id) == fields for set_id, fields in desired.items())


def split_of(records: Records, targets: Mapping[str, str], style: str) -> tuple[str, int] | None:
    """Where the records send traffic: (region, its percent), the region with the larger
    share; None when they match no split between the ``targets`` (normalized values)."""
    if style == "weighted":
        weights = {set_id: fields["weight"] for set_id, fields in records.items()
                   if set_id in targets and fields.get("value") == targets[set_id]
                   and "weight" in fields}
        if set(weights) != set(targets) or sum(weights.values()) != 100:
            return None
        serving = max(weights, key=lambda region: weights[region])
        return serving, weights[serving]
    by_value = {value: region for region, value in targets.items()}
    fields = records.get("" if style == "simple" else "primary")
    region = None if fields is None else by_value.get(fields["value"])
    return None if region is None else (region, 100)


def summary(records: Records) -> str:
    if not records:
        return "(no record)"
    parts = []
    for set_id, fields in sorted(records.items()):
        text = fields["value"] or "(empty)"
        if "weight" in fields:
            text = f"{set_id}={text}@{fields['weight']}"
        elif "failover" in fields:
            text = f"{fields['failover']}={text}"
        parts.append(text)
    return ", ".join(parts)


def txt_rrset(name: str, values: tuple[str, ...], ttl: int) -> dict[str, Any]:
    return {"Name": name, "Type": "TXT", "TTL": ttl,
            "ResourceRecords": [{"Value": value} for value in values]}


def parse_marker(values: tuple[str, ...], ttl: int) -> FencingMarker:
    """The marker of the highest epoch among the TXT strings; ValueError if none parses."""
    best: FencingMarker | None = None
    for value in values:
        fields = dict(token.split("=", 1) for token in value.strip('"').split() if "=" in token)
        marker = FencingMarker(
            epoch=int(fields["epoch"]), run=fields.get("run", ""),
            serving=fields.get("serving", ""), weight=int(fields.get("weight", "100")),
            values=values, ttl=ttl,
        )
        if best is None or marker.epoch > best.epoch:
            best = marker
    if best is None:
        raise ValueError("no TXT string")
    return best
