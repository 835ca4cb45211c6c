"""What a failover's RPO figures are, said with them, so a 0 is never misread.

At promotion the lag is measured against one of three references (``basis``):

- ``fenced_final_position``: the old primary answered, was fenced, and its WAL position
  was read after the fence, when nothing more could commit: the lag is the loss (exact).
- ``last_view``: nobody reached the old primary; the lag is measured against the last WAL
  position this watchdog saw on it, ``last_view_age_seconds`` before the promotion.
  Whatever it committed after that view is not counted: a **lower bound**.
- ``received_wal``: no position of the old primary was ever seen; the lag is the standby's
  received minus replayed WAL: a **lower bound** too.

The real loss becomes knowable when the old primary is resynced (``sync-primary`` reads
its WAL beyond the fork, ``actuators/resync_loss``); it is then recorded as ``measured``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FENCED_FINAL = "fenced_final_position"
LAST_VIEW = "last_view"
RECEIVED = "received_wal"
SWITCHOVER = "switchover_shutdown_checkpoint"


def promotion_rpo(*, lag_bytes: int | None, final_lsn: int | None,
                  primary_last_lsn: int | None, promoted_at: float | None,
                  last_seen_at: float | None) -> dict[str, Any]:
    """The RPO fields of a promotion (wall-clock times); see the module doc."""
    if final_lsn is not None:
        return {"basis": FENCED_FINAL, "lower_bound": False, "lag_bytes": lag_bytes,
                "rpo_lag_bytes_at_last_view": None, "last_view_age_seconds": None}
    age = (round(max(0.0, promoted_at - last_seen_at), 3)
           if promoted_at is not None and last_seen_at is not None else None)
    return {"basis": LAST_VIEW if primary_last_lsn is not None else RECEIVED,
            "lower_bound": True, "lag_bytes": lag_bytes,
            "rpo_lag_bytes_at_last_view": lag_bytes if primary_last_lsn is not None else None,
            "last_view_age_seconds": age}


def measured_rpo(fork_loss: Mapping[str, Any], *, kind: str, run_id: str) -> dict[str, Any]:
    """The loss measured at the resync (``ResyncResult.fork_loss``), with where from."""
    return {**fork_loss, "by": {"kind": kind, "run_id": run_id,
                                "evidence": f"../{kind}/{run_id}.json"}}


def rpo_words(rpo: Mapping[str, Any]) -> str:
    """The RPO of an evidence document in a few words, for the review and the listing."""
    measured = rpo.get("measured")
    if isinstance(measured, Mapping) and measured.get("lost_wal_bytes") is not None:
        return (f"measured at the resync: {measured['lost_wal_bytes']} bytes of WAL, "
                f"{measured.get('lost_commits')} committed transaction(s) lost")
    lag = rpo.get("lag_bytes")
    basis = rpo.get("basis")
    if basis == FENCED_FINAL:
        return f"{lag} bytes (exact: the fenced old primary's final position)"
    if basis == SWITCHOVER:
        return f"{lag} bytes (exact: the switchover replays the shutdown checkpoint)"
    if basis == LAST_VIEW:
        return (f"at least {lag} bytes: lag at the last view of the old primary, "
                f"{rpo.get('last_view_age_seconds')} s before the promotion (lower bound; "
                "measured when the old primary is resynced)")
    if basis == RECEIVED:
        return (f"at least {lag} bytes: received but not replayed WAL only (lower bound; "
                "measured when the old primary is resynced)")
    return f"{lag} bytes (basis not recorded)"
