"""The checker's convergence rule: after the quiet period the system settled."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tests.chaos.history import REGION_DB, FinalState, Violation


def convergence(final: FinalState, non_json: Sequence[tuple[str, str]],
                exited: Sequence[str] = ()) -> list[Violation]:
    """One writable primary; the daemons agree on the primary region (the writable
    server's) and the epoch; no daemon exited; every daemon line was JSON."""
    found = []
    if len(final.writable) != 1:
        found.append(Violation("convergence", f"{len(final.writable)} writable primaries "
                               f"after the quiet period: {final.writable or 'none'}"))
    answers = {node: status for node, status in final.status.items() if status is not None}
    for node, status in final.status.items():
        if status is None:
            found.append(Violation("convergence", f"{node} did not answer /v1/status"))
    regions = {node: s.get("primary_region") for node, s in answers.items()}
    if len(set(regions.values())) > 1:
        found.append(Violation("convergence", f"daemons disagree on the primary region: "
                               f"{regions}"))
    elif regions and len(final.writable) == 1:
        (region,) = set(regions.values())
        if REGION_DB.get(str(region)) != final.writable[0]:
            found.append(Violation("convergence", f"the daemons name {region} primary but "
                                   f"{final.writable[0]} takes the writes"))
    holders = [node for node, s in answers.items() if s.get("epoch") is not None]
    if answers and len(holders) != 1:
        found.append(Violation("convergence", f"{len(holders)} daemons hold the lock "
                               f"after the quiet period: {holders or 'none'}"))
    epochs = {node: epoch for node, s in answers.items()
              if (epoch := status_epoch(s)) is not None}
    if len(set(epochs.values())) > 1:
        found.append(Violation("convergence", f"daemons disagree on the epoch: {epochs}"))
    found += [Violation("convergence", f"daemon {node} exited") for node in exited]
    found += [Violation("non_json", f"{node} wrote a line that is not JSON: {line[:200]!r}")
              for node, line in non_json]
    return found


def status_epoch(status: dict[str, Any]) -> int | None:
    """The epoch a daemon's status names: its own lock's, or the holder's it heard of
    (``lock_holder: "west (epoch 2)"``)."""
    if status.get("epoch") is not None:
        return int(status["epoch"])
    match = re.search(r"\(epoch (\d+)\)", str(status.get("lock_holder") or ""))
    return int(match.group(1)) if match else None
