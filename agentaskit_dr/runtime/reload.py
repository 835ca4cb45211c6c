"""What a SIGHUP reload may apply: the file's config checked against the running one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from agentaskit_dr.config import ConfigError, WatchdogConfig, load_config
from agentaskit_dr.ports import Observation, Probe

log = structlog.get_logger(__name__)

ProbeFactory = Callable[[WatchdogConfig], Sequence[Probe[Observation]]]

#: Built once at start: the API server (address, TLS, tokens) and the peer poller.
_START_ONLY = ("api", "peers", "witness", "peer_tls")


async def reloadable(
    running: WatchdogConfig, path: Path, running_file_primary: str, probe_factory: ProbeFactory
) -> tuple[WatchdogConfig, str, bool]:
    """The file's config as it may run now, the primary the file names, and whether
    its lock settings were set aside; ConfigError if the file cannot be used live.
    """
    new = load_config(path)
    # The holder identity is in the lock and in every epoch marker: a live change
    # would make this watchdog a stranger to its own lease.
    changed = [
        f"{field}: changed from {getattr(running, field)!r} to {getattr(new, field)!r}; "
        "the lock holder identity changes only on restart"
        for field in ("region", "node_name")
        if getattr(new, field) != getattr(running, field)
    ]
    if changed:
        raise ConfigError(path, changed)
    # The lock was built at start and keeps running as built; config.lock must say so.
    lock_ignored = new.lock != running.lock
    if lock_ignored:
        new = new.model_copy(update={"lock": running.lock})
    file_primary = new.primary_region
    if file_primary == running_file_primary:
        if running.primary_region not in new.regions:
            raise ConfigError(path, [
                f"regions: must still include {running.primary_region!r}, the region "
                "serving as primary now"
            ])
        new = new.with_primary(running.primary_region)  # keep a failover's topology
    # Config must say what runs: a new certificate or peer list applies on restart.
    start_only = [name for name in _START_ONLY if getattr(new, name) != getattr(running, name)]
    if start_only:
        new = new.model_copy(update={name: getattr(running, name) for name in start_only})
    # Build the new probe set once before switching, so a config the probes refuse
    # is turned down here instead of leaving the engine without probes.
    for probe in probe_factory(new):
        await probe.close()
    if start_only:
        log.warning("config_reload_partial", path=str(path), ignored=", ".join(start_only),
                    keeping="the running API and peer settings",
                    reason="the API server and the peer poller are built at start: restart "
                    "to apply")
    return new, file_primary, lock_ignored
