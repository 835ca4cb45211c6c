"""Point a Route 53 record at the serving region, fenced by an epoch kept in a TXT record.

Runbook step 3 (``update-dns --target=secondary``) and failback step 4 (``shift-traffic
--percent=10|50|100``). One ChangeBatch carries the record change and the fencing marker,
``_agentaskit-dr.<record>`` TXT ``"epoch=N run=ID serving=REGION weight=W at=TIME"``, so
they land together or not at all. The marker is replaced with DELETE (its exact current
value) + CREATE, not UPSERT: Route 53 rejects a DELETE whose value no longer matches, which
makes the write a compare-and-set. A leader that read epoch 3, stalled, and wakes after
epoch 5 wrote cannot overwrite epoch 5's records (safety invariant 4,
docs/architecture.md). ``at`` makes every marker value new, which also keeps emulators
that refuse to re-CREATE a value happy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from structlog.typing import FilteringBoundLogger

from agentaskit_dr.actuators._route53_client import BatchRejected, Route53Client
from agentaskit_dr.actuators._route53_records import (
    NAME,
    FencingMarker,
    Records,
    matches,
    normalize,
    parse_marker,
    rrset_value,
    split_of,
    summary,
    txt_rrset,
    validate_settings,
)
from agentaskit_dr.ports import ActuationFailed, StepOutcome, refuse_newer_epoch

__all__ = ["FencingMarker", "Route53Switch"]

log = structlog.get_logger(__name__)

Style = Literal["simple", "weighted", "failover"]

_MARKER_PREFIX = "_agentaskit-dr."
_MARKER_TTL = 60
# The marker may move under us a few times (a lost answer to our own change, a rival);
# beyond that something is writing it in a loop and a human must look.
_CAS_ROUNDS = 3


class Route53Switch:
    """The ``update_dns`` actuator: ``record_name`` serves ``serving_region`` after ``apply``.

    ``targets`` maps each region to the value the record takes when that region serves.
    ``style`` "simple" is one record; "weighted" two with SetIdentifier = region and
    ``weight`` percent to ``serving_region`` (the rest to the other region); "failover" a
    PRIMARY at the serving region and a SECONDARY at the other. ``timeout`` bounds each
    API call, ``attempts`` and ``backoff`` its retries on transient errors, and
    ``insync_timeout`` the wait for Route 53 to report the change INSYNC. Credentials come
    from the normal AWS chain (environment, shared files, instance role).
    """

    name = "update_dns"

    def __init__(
        self,
        *,
        hosted_zone_id: str,
        record_name: str,
        record_type: Literal["CNAME", "A", "AAAA"],
        ttl: int,
        style: Style,
        targets: Mapping[str, str],
        serving_region: str,
        weight: int = 100,
        endpoint_url: str | None = None,
        aws_region: str = "us-east-1",
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: float = 0.2,
        insync_timeout: float = 120.0,
        insync_poll: float = 2.0,
    ) -> None:
        validate_settings(zone=hosted_zone_id, record_type=record_type, ttl=ttl, style=style,
                  targets=targets, serving=serving_region, weight=weight)
        self._zone = hosted_zone_id.removeprefix("/hostedzone/")
        self._record = record_name.rstrip(".").lower()
        self._marker_name = _MARKER_PREFIX + self._record
        self._type = record_type
        self._ttl = ttl
        self._style = style
        self._targets = {region: normalize(record_type, v) for region, v in targets.items()}
        self._serving = serving_region
        others = [region for region in targets if region != serving_region]
        self._other = others[0] if others else None
        self._weight = weight
        self._insync_timeout = insync_timeout
        self._insync_poll = insync_poll
        self._api = Route53Client(zone=self._zone, record=self._record,
                                  endpoint_url=endpoint_url, aws_region=aws_region,
                                  timeout=timeout, attempts=attempts, backoff=backoff)

    async def describe(self) -> str:
        """``api.example.com CNAME: west-lb -> east-lb (marker epoch 3 -> this run's epoch)``."""
        records, marker = await self._read_state()
        desired = self._desired()
        epoch = "none" if marker is None else marker.epoch
        head = f"{self._record} {self._type}"
        if self._style != "simple":
            head += f" {self._style}"
        if matches(records, desired):
            return f"{head}: already {summary(desired)} (marker epoch {epoch})"
        return (
            f"{head}: {summary(records)} -> {summary(desired)} "
            f"(marker epoch {epoch} -> this run's epoch)"
        )

    async def current(self) -> dict[str, Any]:
        """The record sets as Route 53 serves them and the fencing marker, for status."""
        records, marker = await self._read_state()
        return {
            "zone": self._zone,
            "record": self._record,
            "type": self._type,
            "style": self._style,
            "records": records,
            "epoch": None if marker is None else marker.epoch,
            "run": None if marker is None else marker.run,
            "serving": None if marker is None else marker.serving,
            "weight": None if marker is None else marker.weight,
        }

    async def split(self) -> tuple[str, int] | None:
        """Where the record sends traffic now: (region, its percent), the region with the
        larger share; None when the records match no split between the targets."""
        records, _ = await self._read_state()
        return split_of(records, self._targets, self._style)

    async def apply(self, *, epoch: int, failover_id: str) -> StepOutcome:
        """Switch the record under ``epoch``; StaleEpoch if the marker carries a newer one."""
        if not NAME.fullmatch(failover_id):
            raise ActuationFailed(
                f"failover_id {failover_id!r} cannot be recorded in the DNS marker: use up to "
                "100 letters, digits, '.', '_', ':' or '-'"
            )
        flog = log.bind(
            failover_id=failover_id, epoch=epoch, zone=self._zone, record=self._record,
            serving=self._serving, weight=self._weight,
        )
        desired = self._desired()
        old: Records | None = None
        sent = False
        for _ in range(_CAS_ROUNDS):
            records, marker = await self._read_state()
            old = records if old is None else old
            _refuse_stale(marker, epoch, self._record, flog)
            if self._done(records, marker, epoch, failover_id):
                if sent:  # our earlier batch landed though its answer was lost
                    return self._applied(old, desired, epoch, None, flog)
                flog.info("dns_switch_already_done", records=records)
                return StepOutcome(
                    changed=False,
                    detail=f"{self._record} {self._type} already {summary(desired)} "
                    f"under epoch {epoch}",
                    data={"old": records, "new": desired, "epoch": epoch, "change_id": None},
                )
            sent = True
            try:
                change_id = await self._change(desired, marker, epoch, failover_id)
            except BatchRejected:
                if await self._read_marker() == marker:
                    raise
                flog.warning("dns_marker_moved", reason="the marker changed since it was read")
                continue
            insync = await self._wait_insync(change_id, flog)
            await self._verify(desired, epoch, flog)
            return self._applied(old, desired, epoch, change_id, flog, insync=insync)
        raise ActuationFailed(
            f"fencing marker {self._marker_name} in zone {self._zone} kept changing during "
            f"{_CAS_ROUNDS} attempts to switch {self._record}; another writer is active"
        )

    async def close(self) -> None:
        """Close the Route 53 client (and its connections); the switch can be used again."""
        await self._api.close()

    # ---------------------------------------------------------------- decisions

    def _desired(self) -> Records:
        serving = {"value": self._targets[self._serving], "ttl": self._ttl}
        if self._style == "simple":
            return {"": serving}
        assert self._other is not None  # validate_settings demands two regions for these styles
        other = {"value": self._targets[self._other], "ttl": self._ttl}
        if self._style == "weighted":
            return {
                self._serving: serving | {"weight": self._weight},
                self._other: other | {"weight": 100 - self._weight},
            }
        return {
            "primary": serving | {"failover": "PRIMARY"},
            "secondary": other | {"failover": "SECONDARY"},
        }

    def _done(
        self, records: Records, marker: FencingMarker | None, epoch: int, failover_id: str
    ) -> bool:
        # The same run resumed under a newer epoch (after a crash) finds its own switch
        # done: it is not applied a second time.
        return (
            marker is not None
            and (marker.epoch == epoch or (marker.run == failover_id and marker.epoch < epoch))
            and (marker.serving, marker.weight) == (self._serving, self._weight)
            and matches(records, self._desired())
        )

    def _applied(
        self, old: Records, desired: Records, epoch: int, change_id: str | None,
        flog: FilteringBoundLogger, *, insync: bool | None = None,
    ) -> StepOutcome:
        flog.info("dns_switch_applied", old=old, new=desired, change_id=change_id,
                  insync=insync)
        return StepOutcome(
            changed=True,
            detail=f"{self._record} {self._type}: {summary(old)} -> {summary(desired)}",
            data={"old": old, "new": desired, "epoch": epoch, "change_id": change_id,
                  "insync": insync},
        )

    # ---------------------------------------------------------------- Route 53 calls

    async def _read_state(self) -> tuple[Records, FencingMarker | None]:
        records: Records = {}
        for rrset in await self._list(self._record, self._type):
            fields: dict[str, Any] = {"value": rrset_value(self._type, rrset),
                                      "ttl": rrset.get("TTL")}
            if "Weight" in rrset:
                fields["weight"] = int(rrset["Weight"])
            if "Failover" in rrset:
                fields["failover"] = rrset["Failover"]
            records[rrset.get("SetIdentifier", "")] = fields
        return records, await self._read_marker()

    async def _read_marker(self) -> FencingMarker | None:
        rrsets = await self._list(self._marker_name, "TXT")
        if not rrsets:
            return None
        values = tuple(r["Value"] for r in rrsets[0].get("ResourceRecords", []))
        try:
            return parse_marker(values, int(rrsets[0]["TTL"]))
        except (ValueError, KeyError) as exc:
            raise ActuationFailed(
                f"fencing marker {self._marker_name} in zone {self._zone} is unreadable "
                f"({values!r}: {exc}); fix or delete it by hand"
            ) from exc

    async def _list(self, name: str, record_type: str) -> list[dict[str, Any]]:
        # Route 53 lists in (reversed name, type) order from the start point, so the few
        # sets of this name and type come first; 100 leaves room for any set identifiers.
        answer = await self._api.call(
            "list_resource_record_sets", HostedZoneId=self._zone,
            StartRecordName=name, StartRecordType=record_type, MaxItems="100",
        )
        return [
            rrset for rrset in answer.get("ResourceRecordSets", [])
            if rrset["Name"].rstrip(".").lower() == name and rrset["Type"] == record_type
        ]

    async def _change(
        self, desired: Records, marker: FencingMarker | None, epoch: int, failover_id: str
    ) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = (f'"epoch={epoch} run={failover_id} serving={self._serving} '
                f'weight={self._weight} at={stamp}"')
        changes: list[dict[str, Any]] = [
            {"Action": "UPSERT", "ResourceRecordSet": self._rrset(set_id, fields)}
            for set_id, fields in desired.items()
        ]
        if marker is not None:
            changes.append({"Action": "DELETE", "ResourceRecordSet": txt_rrset(
                self._marker_name, marker.values, marker.ttl)})
        changes.append({"Action": "CREATE", "ResourceRecordSet": txt_rrset(
            self._marker_name, (text,), _MARKER_TTL)})
        answer = await self._api.call(
            "change_resource_record_sets", HostedZoneId=self._zone,
            ChangeBatch={"Comment": f"agentaskit-dr epoch {epoch} run {failover_id}",
                         "Changes": changes},
        )
        return str(answer["ChangeInfo"]["Id"])

    def _rrset(self, set_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        rrset: dict[str, Any] = {
            "Name": self._record, "Type": self._type, "TTL": fields["ttl"],
            "ResourceRecords": [{"Value": fields["value"]}],
        }
        if set_id:
            rrset["SetIdentifier"] = set_id
        if "weight" in fields:
            rrset["Weight"] = fields["weight"]
        if "failover" in fields:
            rrset["Failover"] = fields["failover"]
        return rrset

    async def _wait_insync(self, change_id: str, flog: FilteringBoundLogger) -> bool:
        """Poll GetChange until INSYNC; False (logged) when ``insync_timeout`` passes first.

        Not INSYNC in time does not undo the change: it will still propagate. Failing the
        step would only hold back the rest of the failover, so it is a warning.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._insync_timeout
        while True:
            answer = await self._api.call("get_change", Id=change_id)
            if answer["ChangeInfo"]["Status"] == "INSYNC":
                return True
            if loop.time() + self._insync_poll > deadline:
                flog.warning("dns_change_not_insync", change_id=change_id,
                             waited=self._insync_timeout)
                return False
            await asyncio.sleep(self._insync_poll)

    async def _verify(self, desired: Records, epoch: int, flog: FilteringBoundLogger) -> None:
        records, marker = await self._read_state()
        _refuse_stale(marker, epoch, self._record, flog)
        if not matches(records, desired) or marker is None or marker.epoch != epoch:
            found = "none" if marker is None else marker.epoch
            raise ActuationFailed(
                f"{self._record} {self._type} in zone {self._zone} reads back "
                f"{summary(records)} with marker epoch {found} after the change, "
                f"expected {summary(desired)} with epoch {epoch}"
            )


def _refuse_stale(
    marker: FencingMarker | None, epoch: int, record: str, flog: FilteringBoundLogger
) -> None:
    if marker is None:
        return
    refuse_newer_epoch(
        marker.epoch, epoch,
        f"DNS record {record} was switched under epoch {marker.epoch} (run {marker.run}), "
        f"newer than our epoch {epoch}",
        on_refusal=lambda reason: flog.error("dns_switch_refused", reason=reason,
                                             marker_epoch=marker.epoch))

