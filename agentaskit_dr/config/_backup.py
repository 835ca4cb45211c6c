"""The backup schema (``configs/backup.yaml``), with the operations plan's values as defaults.

Storage and encryption have no defaults: a backup config must say where backups go
and how they are encrypted. The encryption key is read at load time and checked to be
256 bits; it is kept as a :class:`~pydantic.SecretBytes` and never printed.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._appstate import (
    ConfigsStateSource,
    RedisStateSource,
    SecretsStateSource,
)
from agentaskit_dr.config._backup_keys import EncryptionConfig
from agentaskit_dr.config._backup_source import (
    PostgresSource,
    RestoreTarget,
    production_target_problems,
)
from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    HttpUrl,
    NonBlank,
    PositiveDuration,
    Problem,
    problem_error,
    problems_error,
    redact,
)
from agentaskit_dr.config._drills import DrillsConfig, ObjectivesConfig, S3ObjectsBackup
from agentaskit_dr.config._layout import EvidenceLayout

DAY = 86400.0

# ---------------------------------------------------------------- cron

_CRON_HINT = (
    "must be a cron expression of 5 fields (minute hour day month weekday) like '0 2 * * *'"
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, lowest, highest, names for values starting at ``lowest``) per cron field.
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)


def _cron_value(text: str, lowest: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        return int(text)
    if text.lower() in names:
        return lowest + names.index(text.lower())
    return None


def _check_cron_field(
    text: str, name: str, lowest: int, highest: int, names: tuple[str, ...]
) -> None:
    """Superficial: syntax and ranges, enough to catch typos like '0 25 * * *'."""
    for item in text.split(","):
        span, has_step, step = item.partition("/")
        if has_step and not (step.isdigit() and int(step) > 0):
            raise PydanticCustomError("cron", f"{_CRON_HINT}; bad step in {name} field {text!r}")
        if span == "*":
            continue
        bounds = [_cron_value(bound, lowest, names) for bound in span.split("-")]
        if len(bounds) > 2 or None in bounds:
            raise PydanticCustomError("cron", f"{_CRON_HINT}; cannot read {name} field {text!r}")
        values = [value for value in bounds if value is not None]
        if any(not lowest <= value <= highest for value in values) or values != sorted(values):
            raise PydanticCustomError(
                "cron", f"{name} field {text!r} must stay within {lowest}-{highest}"
            )


def _cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 5:
        raise PydanticCustomError("cron", _CRON_HINT)
    for text, (name, lowest, highest, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(text, name, lowest, highest, names)
    return expression


def _schedule(value: str) -> str:
    if value in ("continuous", "on-change"):
        return value
    try:
        return _cron(value)
    except PydanticCustomError as exc:
        raise PydanticCustomError(
            "schedule", f"must be 'continuous', 'on-change' or a cron expression: {exc.message()}"
        ) from None


#: A 5-field cron expression, checked for syntax and ranges.
Cron = Annotated[str, AfterValidator(_cron)]
#: A cron expression, or "continuous" (streamed), or "on-change" (event driven).
Schedule = Annotated[str, AfterValidator(_schedule)]

# ---------------------------------------------------------------- S3

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _s3_url(url: str) -> str:
    """``s3://bucket[/prefix]`` with a bucket name S3 accepts."""
    scheme, separator, rest = url.partition("://")
    bucket = rest.partition("/")[0]
    if scheme != "s3" or not separator:
        raise PydanticCustomError("s3_url", "must be an S3 URL like s3://bucket-name")
    if (
        not _BUCKET_NAME.fullmatch(bucket)
        or ".." in bucket
        or bucket.startswith("xn--")
        or _is_ip_address(bucket)
    ):
        raise PydanticCustomError(
            "s3_url",
            "bucket name must be 3-63 lowercase letters, digits, dots or hyphens, "
            "starting and ending with a letter or digit",
        )
    return url


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


S3Url = Annotated[str, AfterValidator(_s3_url)]


# ---------------------------------------------------------------- sections


class ScheduledBackup(ConfigModel):
    """A backup taken on a cron schedule and kept for ``retention``."""

    schedule: Cron
    retention: PositiveDuration


class WalArchiving(ConfigModel):
    """WAL segments archived as PostgreSQL completes them (point-in-time recovery)."""

    mode: Literal["continuous"] = "continuous"
    retention: PositiveDuration = 1 * DAY
    spool_dir: ConfigPath = Path("/var/spool/agentaskit-dr/wal")
    """Where ``wal-push``/``wal-fetch`` meet the WAL archiver (docs/backups.md)."""
    push_parallel: int = Field(default=4, ge=1, le=32)
    """WAL files the archiver uploads at once."""
    prefetch: int = Field(default=8, ge=0, le=64)
    """Segments ``wal-fetch`` downloads ahead of the one asked for."""
    idle_exit: PositiveDuration = 60.0
    """The archiver exits after this long with nothing to do (the next call restarts it)."""


class PostgresBackupConfig(PostgresSource):
    """PostgreSQL: full base backups, incrementals on top of them, and WAL."""

    full: ScheduledBackup = Field(
        default_factory=lambda: ScheduledBackup(schedule="0 2 * * *", retention=30 * DAY)
    )
    incremental: ScheduledBackup = Field(
        default_factory=lambda: ScheduledBackup(schedule="0 * * * *", retention=7 * DAY)
    )
    wal: WalArchiving = Field(default_factory=WalArchiving)

    @model_validator(mode="after")
    def _incrementals_need_their_full(self) -> Self:
        if self.incremental.retention > self.full.retention:
            raise problem_error(
                ("incremental", "retention"),
                "must not exceed full.retention: an incremental needs its full backup",
            )
        return self


class Bucket(ConfigModel):
    """An S3 location for backups and the AWS region that hosts it."""

    url: S3Url
    region: NonBlank | None = None

    @property
    def bucket(self) -> str:
        """The bucket name from ``url``."""
        return self.url.removeprefix("s3://").partition("/")[0]

    @property
    def prefix(self) -> str:
        """The key prefix from ``url`` (may be empty)."""
        return self.url.removeprefix("s3://").partition("/")[2]


class StorageConfig(ConfigModel):
    """Where backups go: a primary bucket and a replica bucket in the other region."""

    primary: Bucket
    replica: Bucket
    endpoint_url: HttpUrl | None = None
    """S3-compatible endpoint (MinIO, a test server); None means AWS."""
    replication: Literal["client", "s3"] = "client"
    """``client``: every object is written to both buckets by us; ``s3``: written to the
    primary only, S3 replication copies it to the replica (verification compares both)."""

    @model_validator(mode="after")
    def _two_distinct_buckets(self) -> Self:
        if self.primary.bucket == self.replica.bucket:
            raise problem_error(
                ("replica", "url"),
                "must be a different bucket from primary",
                got=repr(self.replica.url),
            )
        return self


StateMethod = Literal["rdb+aof", "cross-region-replication", "git+s3", "vault-snapshot"]


class StateBackup(ConfigModel):
    """One kind of application state and how it is kept."""

    method: StateMethod
    schedule: Schedule
    retention: PositiveDuration


class RedisStateBackup(StateBackup, RedisStateSource):
    """Redis: the RDB over the replication protocol, plus the AOF files beside it."""


class ConfigsStateBackup(StateBackup, ConfigsStateSource):
    """Config files: a git commit and an encrypted archive on each change."""


class SecretsStateBackup(StateBackup, SecretsStateSource):
    """Vault: a raft snapshot, checked against its own SHA256SUMS."""


#: The method each application state item is backed up with.
_STATE_METHODS: dict[str, StateMethod] = {
    "redis": "rdb+aof",
    "s3_objects": "cross-region-replication",
    "configs": "git+s3",
    "secrets": "vault-snapshot",
}


class ApplicationStateConfig(ConfigModel):
    """Application state besides PostgreSQL (which has its own section)."""

    redis: RedisStateBackup = Field(
        default_factory=lambda: RedisStateBackup(
            method="rdb+aof", schedule="0 * * * *", retention=7 * DAY
        )
    )
    s3_objects: S3ObjectsBackup = Field(default_factory=S3ObjectsBackup)
    configs: ConfigsStateBackup = Field(
        default_factory=lambda: ConfigsStateBackup(
            method="git+s3", schedule="on-change", retention=365 * DAY
        )
    )
    secrets: SecretsStateBackup = Field(
        default_factory=lambda: SecretsStateBackup(
            method="vault-snapshot", schedule="0 3 * * *", retention=30 * DAY
        )
    )

    @model_validator(mode="after")
    def _methods_fit_their_items(self) -> Self:
        problems = [
            Problem((item, "method"), f"must be {method!r} for {item}", got=repr(backup.method))
            for item, method in _STATE_METHODS.items()
            if (backup := getattr(self, item)).method != method
        ]
        if problems:
            raise problems_error(problems)
        return self


class VerifyBackupConfig(ConfigModel):
    """``verify-backup``: checksums and a catalogue check of the latest backups."""

    schedule: Cron = "0 4 * * 0"


class RestoreTestConfig(ConfigModel):
    """``test-restore``: restore the latest backup into a scratch environment."""

    schedule: Cron = "0 5 1 * *"
    target: NonBlank = "staging"

    @model_validator(mode="after")
    def _never_into_production(self) -> Self:
        if "prod" in self.target.lower():
            raise problem_error(
                "target", "must not be a production environment", got=repr(self.target)
            )
        return self


class VerificationConfig(ConfigModel):
    """The plan's checks: weekly backup verification, monthly restore test."""

    verify_backup: VerifyBackupConfig = Field(default_factory=VerifyBackupConfig)
    test_restore: RestoreTestConfig = Field(default_factory=RestoreTestConfig)


class BackupConfig(ConfigModel):
    """Everything the backup jobs need; load it with :func:`load_backup_config`."""

    postgresql: PostgresBackupConfig = Field(default_factory=PostgresBackupConfig)
    storage: StorageConfig
    encryption: EncryptionConfig
    application_state: ApplicationStateConfig = Field(default_factory=ApplicationStateConfig)
    verification: VerificationConfig = Field(default_factory=VerificationConfig)
    drills: DrillsConfig = Field(default_factory=DrillsConfig)
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    restore_targets: dict[NonBlank, RestoreTarget] = Field(default_factory=dict)
    """Scratch places ``test-restore --target NAME`` may restore into."""
    evidence_dir: ConfigPath = Path("/var/lib/agentaskit-dr/evidence")
    """Evidence of each backup job goes to ``<evidence_dir>/backups/``."""
    evidence_layout: EvidenceLayout = Field(default_factory=EvidenceLayout)
    """Where the backup logs and the drills go under ``evidence_dir`` (the plan's layout)."""

    @model_validator(mode="after")
    def _restore_targets_are_not_production(self) -> Self:
        problems = production_target_problems(list(self.restore_targets))
        if problems:
            raise problems_error(problems)
        return self

    def redacted(self) -> dict[str, Any]:
        """A JSON-able dict for logs and status; the key itself is never in it."""
        data: dict[str, Any] = redact(self.model_dump(mode="json"))
        return data
