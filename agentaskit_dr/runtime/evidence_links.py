"""The failover's evidence points to the failback that closed it.

When a failback (or ``restore-standby``) run completes, the failover it undid (the run
that recorded the away region as the cluster's primary) gets, in its evidence file,
``extra.failback: "done"`` and ``extra.closed_by`` (the failback's run id and relative
paths), and in its incident review draft a ticked follow-up and a "Closed by failback"
section linking to ``../failback/<id>.md`` (relative to wherever the failback's evidence
is: the failover's may be in the layout before ``evidence_layout``). The review is a draft
people edit: it is amended in place, never redrafted, and a second call changes nothing.
Only the evidence directory of this host is looked at: a failover whose files are on
another host's is left alone (logged).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from agentaskit_dr.runtime.evidence import read_evidence, write_evidence
from agentaskit_dr.runtime.evidence_layout import find_root
from agentaskit_dr.runtime.rpo import measured_rpo

log = structlog.get_logger(__name__)

FAILOVER_KIND = "failover"
_PLANNED = "- [ ] Failback planned:"


def link_failback(directory: Path, *, failover_id: str, kind: str, run_id: str,
                  finished_at: str | None, roots: Sequence[Path] = ()) -> Path | None:
    """Amend failover ``failover_id``'s evidence and review to link failback ``run_id``
    (evidence kind ``kind``, written under ``directory``); the failover is looked for in
    ``directory`` and then ``roots`` (older layouts). The review's path, or None when
    there is nothing to amend."""
    failover = _failover(directory, roots, failover_id, run_id, "failover_evidence_not_linked")
    if failover is None:
        return None
    found, document = failover
    # Relative, so the pair stays linked when the evidence directory is copied or moved.
    there = Path(os.path.relpath(directory / kind, found / FAILOVER_KIND))
    review_link = f"{there.as_posix()}/{run_id}.md"
    evidence_link = f"{there.as_posix()}/{run_id}.json"
    closed_by = {"kind": kind, "run_id": run_id, "finished_at": finished_at,
                 "review": review_link, "evidence": evidence_link}
    extra = dict(document.get("extra") or {})
    extra.update(failback="done", closed_by=closed_by)
    document["extra"] = extra
    review = found / FAILOVER_KIND / f"{failover_id}.md"
    try:
        write_evidence(found, FAILOVER_KIND, failover_id, document)
        text = review.read_text(encoding="utf-8") if review.exists() else ""
        if review_link not in text:
            text = text.replace(_PLANNED, "- [x] Failback planned:", 1)
            text = (text.rstrip("\n") + "\n\n## Closed by failback\n\n"
                    f"- [{kind} {run_id}]({review_link}) completed at {finished_at or '—'}: "
                    f"the primary is back in its home region (evidence: "
                    f"[{run_id}.json]({evidence_link}))\n")
            review.write_text(text, encoding="utf-8")
    except OSError as exc:
        log.error("failover_evidence_not_linked", failover_id=failover_id,  # noqa: TRY400
                  failback_id=run_id, reason=exc.strerror or str(exc))
        return None
    log.info("failover_evidence_linked", failover_id=failover_id, failback_id=run_id,
             review=str(review))
    return review


def record_measured_loss(directory: Path, *, failover_id: str, loss: Mapping[str, Any],
                         kind: str, run_id: str, roots: Sequence[Path] = ()) -> Path | None:
    """Record in failover ``failover_id``'s evidence, as ``rpo.measured``, the loss the
    resync of ``run_id`` (evidence kind ``kind``, written under ``directory``) read from
    the old primary's WAL (``ResyncResult.fork_loss``), and add it to its review once; the
    failover is looked for in ``directory`` and then ``roots`` (older layouts). The
    evidence path, or None when there is none here."""
    failover = _failover(directory, roots, failover_id, run_id, "failover_loss_not_recorded")
    if failover is None:
        return None
    found, document = failover
    rpo = dict(document.get("rpo") or {})
    rpo["measured"] = measured_rpo(loss, kind=kind, run_id=run_id)
    document["rpo"] = rpo
    review = found / FAILOVER_KIND / f"{failover_id}.md"
    there = Path(os.path.relpath(directory / kind, found / FAILOVER_KIND)).as_posix()
    try:
        path = write_evidence(found, FAILOVER_KIND, failover_id, document)
        text = review.read_text(encoding="utf-8") if review.exists() else ""
        if text and "## Data loss measured at the resync" not in text:
            review.write_text(text.rstrip("\n") + "\n\n## Data loss measured at the resync\n\n"
                              f"- {_loss_line(loss)} (by [{kind} {run_id}]({there}/{run_id}"
                              ".md))\n", encoding="utf-8")
    except OSError as exc:
        log.error("failover_loss_not_recorded", failover_id=failover_id,  # noqa: TRY400
                  failback_id=run_id, reason=exc.strerror or str(exc))
        return None
    log.warning("failover_loss_recorded", failover_id=failover_id, failback_id=run_id,
                lost_wal_bytes=loss.get("lost_wal_bytes"), lost_commits=loss.get("lost_commits"))
    return path


def _failover(directory: Path, roots: Sequence[Path], failover_id: str, run_id: str,
              event: str) -> tuple[Path, dict[str, Any]] | None:
    """(the root holding failover ``failover_id``'s evidence, its document), looked for in
    ``directory`` and then ``roots``; None (logged as ``event``) when it cannot be read."""
    found = find_root(list(dict.fromkeys([directory, *roots])), FAILOVER_KIND, failover_id)
    try:
        return found, read_evidence(found, FAILOVER_KIND, failover_id)
    except (OSError, ValueError) as exc:
        log.warning(event, failover_id=failover_id, failback_id=run_id, reason=str(exc))
        return None


def _loss_line(loss: Mapping[str, Any]) -> str:
    if loss.get("lost_wal_bytes") is None:
        return f"not measured: {loss.get('note')}"
    return (f"{loss['lost_wal_bytes']} bytes of WAL and {loss.get('lost_commits')} committed "
            f"transaction(s) beyond the fork at {loss.get('fork_lsn')} (timeline "
            f"{loss.get('old_timeline')}); lost commits from {loss.get('first_lost_commit_at')}"
            f" to {loss.get('last_lost_commit_at')}")
