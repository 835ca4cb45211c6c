"""The old primary's own watchdog stops it for good once it learns of a failover away
from its region (the frozen primary that wakes up after the promotion).

A primary hung through the whole threshold (SIGSTOP, a stuck disk) is legitimately failed
over and may wake up writable. Its region's watchdog sees the standby promoted (the epoch
marker) and fences its own server: in control mode that is a stop for good (the
postmaster killed if a stop cannot complete) with ``standby.signal`` written, otherwise
the SQL fence. Like a self-fence it needs no lock (read-only is the safe direction), and
it is retried every ``retry_backoff`` until confirmed: a server frozen now is fenced the
moment it answers again. A server found in recovery counts as fenced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agentaskit_dr.config import WatchdogConfig
from agentaskit_dr.core import Alert, Command, Severity
from agentaskit_dr.runtime.executor import Promoter

log = structlog.get_logger(__name__)

KEY = "old_primary"


@dataclass(frozen=True, slots=True)
class _Due:
    region: str
    epoch: int | None
    at: float
    attempts: int = 0
    last_failure: str | None = None


class OldPrimaryStopper:
    """Keeps trying to fence this watchdog's own region's server after a failover away."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._due: _Due | None = None

    @property
    def pending(self) -> str | None:
        """The region whose old primary is still to be fenced, if any."""
        return None if self._due is None else self._due.region

    def failed_over_away(self, region: str, epoch: int | None) -> None:
        """A failover moved the primary away from ``region`` (this watchdog's own)."""
        self._due = _Due(region, epoch, self._clock())
        log.warning("old_primary_fence_due", region=region, epoch=epoch)

    def cancel(self) -> None:
        self._due = None

    async def step(self, config: WatchdogConfig,
                   promoter: Callable[[WatchdogConfig], Promoter]) -> list[Command]:
        """Try once if due; the alerts to raise or resolve. ``promoter`` builds the promoter
        of a topology: it is given one whose old primary is the region to fence, so the
        fence runs in control mode where this watchdog controls that server."""
        due = self._due
        if due is None or self._clock() < due.at:
            return []
        dsn = config.regions[due.region].database.connect_dsn()
        try:
            # The failover's epoch: a server carrying that epoch's marker (or a newer one)
            # is the new primary and is refused; None fences whatever promoted it.
            fencer = promoter(config.with_primary(due.region))
            result = await fencer.fence(dsn, epoch=due.epoch)
        except Exception as exc:  # noqa: BLE001 (any failure is a fence not confirmed)
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if result.fenced:
                self._due = None
                log.critical("old_primary_fenced_by_its_watchdog", region=due.region,
                             epoch=due.epoch, detail=result.detail)
                return [Alert(Severity.INFO, f"old primary in {due.region} fenced: "
                              f"{result.detail}", key=KEY, resolve=True)]
            failure = result.detail
        backoff = config.thresholds.retry_backoff
        attempt = due.attempts + 1
        self._due = _Due(due.region, due.epoch, self._clock() + backoff, attempt,
                         failure)
        # A dead server fails the same way at every retry: said when the reason changes,
        # and every tenth attempt, not every retry_backoff.
        if failure != due.last_failure or attempt % 10 == 0:
            log.error("old_primary_fence_failed", region=due.region, epoch=due.epoch,
                      attempt=attempt, error=failure)
        return [Alert(Severity.CRITICAL, f"the old primary in {due.region} is not fenced yet "
                      f"({failure}); retrying every {backoff:g}s until it is", key=KEY)]
