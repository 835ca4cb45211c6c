"""The seams between the runtime and its plug-ins, as Protocols, plus the values they exchange.

Plug-ins (``probes/``, ``actuators/``, ``leadership/``) import this module and nothing of
each other. The runtime composes them. Unit tests of the runtime may put fakes behind
these Protocols; every real plug-in also has an integration test against the real part.
"""

from agentaskit_dr.ports._leadership import (
    ClusterControls,
    ClusterPrimary,
    ClusterRecord,
    ClusterStore,
    LeaderLock,
    Lease,
    LockUnavailable,
    StaleEpoch,
    refuse_newer_epoch,
)
from agentaskit_dr.ports._notifications import (
    Notification,
    Notifier,
)
from agentaskit_dr.ports._observations import (
    Clock,
    HttpAnswer,
    Observation,
    ObservationT_co,
    PostgresObservation,
    Probe,
    RegionHealthObservation,
    UrlCheck,
)
from agentaskit_dr.ports._runs import (
    MARKER_SCHEMA,
    MARKER_TABLE,
    ActuationFailed,
    Actuator,
    Journal,
    JournalEntry,
    PeerFence,
    RunJournal,
    StepOutcome,
    StepStatus,
)

__all__ = [
    "MARKER_SCHEMA",
    "MARKER_TABLE",
    "ActuationFailed",
    "Actuator",
    "Clock",
    "ClusterControls",
    "ClusterPrimary",
    "ClusterRecord",
    "ClusterStore",
    "HttpAnswer",
    "Journal",
    "JournalEntry",
    "LeaderLock",
    "Lease",
    "LockUnavailable",
    "Notification",
    "Notifier",
    "Observation",
    "ObservationT_co",
    "PeerFence",
    "PostgresObservation",
    "Probe",
    "RegionHealthObservation",
    "RunJournal",
    "StaleEpoch",
    "StepOutcome",
    "StepStatus",
    "UrlCheck",
    "refuse_newer_epoch",
]
