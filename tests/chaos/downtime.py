"""Servers the daemons stopped themselves, from the stop until the history shows them up.

A self-fence in control mode and an own-primary hold stop their region's server: a fault
no schedule injected, but a real one, which the false-failover rule counts as the server
down. It is down until the first proof, after the stop, that the server runs again:

- a commit it acknowledged that was sent after the stop (a server that acknowledges a
  commit is up and writable): up at the ack;
- a start by the world (a ``kill_db`` heal, the binding), recorded once it answered
  (:class:`~tests.chaos.history.ServerStart`);
- a start by the daemon that controls it: ``self_fence_lifted`` that says "server
  started", a switchover's ``switchover_rejoined`` or ``switchover_rolled_back``.

Nothing else ends it: a fault's heal that starts nothing (seed 8005: a SIGCONT to a
postmaster the hold had killed) leaves the server down. With no proof the server stays
down to the end of the run, the lenient reading for the false-failover rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentaskit_dr.sandbox.drill import event_time
from tests.chaos.history import Commit, FaultRecord, ServerStart

#: The server in each watchdog's own region: the only one it controls in the world
#: (``regions.<r>.database.control``), so the one its stops and starts act on.
OWN_SERVER = {"west": "west-db", "east": "east-db"}
#: Daemon events that stop their own region's server when their detail says so.
STOPPING = {"self_fenced", "own_primary_held_before_threshold"}
#: Daemon events after which their own region's server runs (the lift only if it started
#: the server: a lift of a running server's SQL fence starts nothing).
STARTING = {"self_fence_lifted", "switchover_rejoined", "switchover_rolled_back"}


@dataclass(frozen=True, slots=True)
class ServerUp:
    """A proof that ``server`` ran at ``at``, valid for a stop at or before ``since``
    (a commit proves nothing about a stop logged after its send); ``how``: what shows it."""

    server: str
    since: float
    at: float
    how: str


def up_proofs(commits: Sequence[Commit], starts: Sequence[ServerStart],
              events: Sequence[dict[str, Any]]) -> list[ServerUp]:
    """Every proof in the history that a server was up, in time order."""
    found = [ServerUp(c.server, c.sent, c.acked, f"commit {c.id} acknowledged")
             for c in commits]
    found += [ServerUp(s.server, s.at, s.at, f"started by {s.by}") for s in starts]
    for event in events:
        name = event.get("event")
        server = OWN_SERVER.get(str(event.get("watchdog")))
        if name not in STARTING or server is None:
            continue
        if name == "self_fence_lifted" and "server started" not in str(event.get("detail")):
            continue
        at = event_time(event)
        found.append(ServerUp(server, at, at, f"{name} by {event['watchdog']}"))
    return sorted(found, key=lambda up: up.at)


def daemon_faults(events: Sequence[dict[str, Any]],
                  proofs: Sequence[ServerUp]) -> list[FaultRecord]:
    """Servers the daemons stopped themselves, each down from its stop to the first
    proof in ``proofs`` that it ran again (no end: none did)."""
    found = []
    for event in sorted(events, key=event_time):
        stopping = event.get("event") in STOPPING and event.get("fenced", True) is True
        if not stopping or not any(word in str(event.get("detail"))
                                   for word in ("stopped", "killed")):
            continue
        server = OWN_SERVER.get(event["watchdog"])
        if server is None:
            continue
        stopped = event_time(event)
        back = next((up for up in proofs if up.server == server and up.since >= stopped),
                    None)
        kind = "self_fence" if event["event"] == "self_fenced" else "own_hold"
        found.append(FaultRecord(kind, server, stopped, None if back is None else back.at,
                                 down=(server,)))
    return found
