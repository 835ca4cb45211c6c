"""The DR testing schedule's own keys (``drills:`` in the backup config) and the S3
objects row of the application state (``application_state.s3_objects``).

Backup verification and the restore test keep their schedules under ``verification``;
the failover drill and the full DR exercise have theirs here, with how late a test may
be before it is an alert and how often that alert is repeated.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from croniter import croniter  # type: ignore[import-untyped,unused-ignore]
from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    PositiveDuration,
    problem_error,
)

DAY = 86400.0


def _cron(expression: str) -> str:
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise PydanticCustomError(
            "cron", "must be a cron expression of 5 fields (minute hour day month weekday) "
            "like '0 10 1 1,4,7,10 *'")
    return expression


#: A 5-field cron expression, checked by croniter (which also computes the next runs).
CronSchedule = Annotated[str, AfterValidator(_cron)]

_S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?")


def _s3_url(url: str) -> str:
    if not _S3_URL.fullmatch(url):
        raise PydanticCustomError("s3_url", "must be an S3 URL like s3://bucket-name")
    return url


S3BucketUrl = Annotated[str, AfterValidator(_s3_url)]


class FailoverDrillConfig(ConfigModel):
    """The quarterly failover drill: a planned switchover to the secondary and back."""

    schedule: CronSchedule = "0 10 1 1,4,7,10 *"
    """Cron: quarterly by default (the 1st of January, April, July, October, 10:00)."""
    config: ConfigPath | None = None
    """The watchdog config of the drill environment (staging); None: the sandbox drill."""
    allow_production: bool = False
    """A drill config that names production runs only with this set."""
    timeout: PositiveDuration = 600.0
    """The longest each switchover of the drill may take."""

    @model_validator(mode="after")
    def _production_only_when_allowed(self) -> Self:
        if (self.config is not None and "prod" in str(self.config).lower()
                and not self.allow_production):
            raise problem_error(
                "config", "names a production environment: set allow_production: true "
                "to drill production on purpose", got=repr(str(self.config)))
        return self


class ExerciseConfig(ConfigModel):
    """The annual full DR exercise (led by people, carried by ``agentaskit-dr exercise``)."""

    schedule: CronSchedule = "0 10 15 3 *"
    """Cron: annually by default (15 March, 10:00)."""


class DrillsConfig(ConfigModel):
    """The failover drill and the full DR exercise, and when a late test is an alert."""

    failover: FailoverDrillConfig = Field(default_factory=FailoverDrillConfig)
    exercise: ExerciseConfig = Field(default_factory=ExerciseConfig)
    grace: PositiveDuration = 1 * DAY
    """A test is overdue this long after its due time."""
    remind_every: PositiveDuration = 1 * DAY
    """An overdue or failed test is alerted once, then reminded this often."""


class S3ObjectsBackup(ConfigModel):
    """S3 objects: not copied by us, checked (``agentaskit-dr appstate check-s3``).

    Versioning on both buckets, a replication rule primary → replica, a lifecycle rule
    keeping noncurrent versions ``retention`` long, and a canary object that must reach
    the replica within ``replication_slo``.
    """

    method: Literal["cross-region-replication"] = "cross-region-replication"
    schedule: Literal["continuous"] = "continuous"
    retention: PositiveDuration = 90 * DAY
    replication_slo: PositiveDuration = 15 * 60.0
    """The longest a canary may take to appear in the replica bucket."""
    primary: S3BucketUrl | None = None
    """The application's primary bucket; None: ``storage.primary.url``."""
    replica: S3BucketUrl | None = None
    """Its cross-region replica; None: ``storage.replica.url``."""
    canary_prefix: str = "agentaskit-dr/canary/"
    """Where canary objects are written (a key prefix in the primary bucket)."""
    poll_interval: PositiveDuration = 5.0
    """How often the replica is asked whether the canary arrived."""


class ObjectivesConfig(ConfigModel):
    """The plan's recovery objectives, the targets ``agentaskit-dr objectives`` measures
    against."""

    rpo: PositiveDuration = 3600.0
    """Recovery point objective: the plan's 1 hour."""
    rto: PositiveDuration = 4 * 3600.0
    """Recovery time objective: the plan's 4 hours."""
    mttr: PositiveDuration = 2 * 3600.0
    """Mean time to recovery: the plan's 2 hours."""
    drills_considered: int = Field(default=4, ge=1, le=100)
    """RTO counts the worst of this many most recent drills."""
