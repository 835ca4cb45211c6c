"""What the probes see: PostgreSQL and region-health observations, and the Probe and
Clock Protocols."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

# ---------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class PostgresObservation:
    """One look at a PostgreSQL server; failures are data, never exceptions.

    LSNs are integers (bytes since the start of WAL), as ``pg_lsn - '0/0'`` gives them.
    ``current_lsn`` is ``pg_current_wal_lsn()`` on a primary and None on a standby.
    ``replay_lag_seconds`` is now minus ``pg_last_xact_replay_timestamp()`` on a standby.
    ``receiver_status`` is ``pg_stat_wal_receiver.status`` ('streaming', ...) or None (no
    WAL receiver); 'unreadable' when the role may not read it (grant ``pg_monitor``).
    ``marker_epoch`` is the fencing epoch recorded by the last promotion, if any.
    ``archive_pending_segments`` / ``archive_lag_seconds``: on a primary with
    ``archive_mode`` on, completed WAL segments not archived yet and, when some are, the
    time since the last one was (``pg_stat_archiver``); None elsewhere.

    ``reachable`` means the server answered. One that answered with an error (pg_hba
    rejection, too many connections, database missing, starting up...) is reachable with
    ``refusal`` naming the kind of answer (see ``pg_answers``) and
    ``sqlstate`` the server's code; its role and positions are then unknown (None).
    Only a server that did not answer (refused, reset, timeout) is ``reachable=False``.
    """

    target: str
    reachable: bool
    latency: float
    error: str | None = None
    refusal: str | None = None
    sqlstate: str | None = None
    in_recovery: bool | None = None
    read_only: bool | None = None
    current_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    replay_lag_seconds: float | None = None
    receiver_status: str | None = None
    marker_epoch: int | None = None
    archive_pending_segments: int | None = None
    archive_lag_seconds: float | None = None

    @property
    def writable(self) -> bool:
        return bool(self.reachable and self.in_recovery is False and self.read_only is False)

    @property
    def status_read(self) -> bool:
        """The server answered and its status was read (role and positions are known)."""
        return self.reachable and self.refusal is None and self.in_recovery is not None


class HttpAnswer(enum.StrEnum):
    """How one health URL answered: the load balancer's "no" is not its silence."""

    OK = "ok"  # 2xx
    ANSWERED_BADLY = "answered_badly"  # an HTTP status other than 2xx (5xx, 4xx, 3xx)
    NO_ANSWER = "no_answer"  # connection refused or reset, timeout: no status line


@dataclass(frozen=True, slots=True)
class UrlCheck:
    """One health URL's check; ``status`` is None when no status line came back."""

    url: str
    ok: bool
    status: int | None
    latency: float
    error: str | None = None

    @property
    def answer(self) -> HttpAnswer:
        if self.ok:
            return HttpAnswer.OK
        return HttpAnswer.NO_ANSWER if self.status is None else HttpAnswer.ANSWERED_BADLY


@dataclass(frozen=True, slots=True)
class RegionHealthObservation:
    """Health of one region's HTTP endpoints; ``healthy`` applies the quorum fraction."""

    region: str
    healthy: bool
    checks: tuple[UrlCheck, ...] = field(default_factory=tuple)

    def count(self, answer: HttpAnswer) -> int:
        """How many of the URLs answered this way."""
        return sum(1 for c in self.checks if c.answer is answer)

    @property
    def detail(self) -> str:
        good = self.count(HttpAnswer.OK)
        text = f"{good}/{len(self.checks)} health URLs of {self.region} answered 2xx"
        bad, silent = self.count(HttpAnswer.ANSWERED_BADLY), self.count(HttpAnswer.NO_ANSWER)
        apart = [f"{bad} answered badly"] if bad else []
        apart += [f"{silent} did not answer"] if silent else []
        return f"{text} ({', '.join(apart)})" if apart else text


Observation = PostgresObservation | RegionHealthObservation
ObservationT_co = TypeVar("ObservationT_co", bound=Observation, covariant=True)


@runtime_checkable
class Probe(Protocol[ObservationT_co]):
    """Looks at one target. Never raises: a failure is an observation.

    Must finish within its own timeout (the scheduler also bounds it, as a backstop).
    """

    name: str

    async def observe(self) -> ObservationT_co: ...

    def failure(self, error: str, latency: float) -> ObservationT_co:
        """The observation that reports this probe's target as failing with ``error``."""
        ...

    async def close(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds; the runtime passes ``loop.time`` so tests can run on virtual time."""

    def __call__(self) -> float: ...
