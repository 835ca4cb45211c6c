"""``agentaskit-dr drill --failback``: after the failover, the full circle back home.

The drill's watchdogs then run beside their servers as in production: each has
``regions.<r>.database.control`` of its own region only, and all share a peer token. Once
the failover is done the drill pauses the cluster (the watchdogs leave the lock to the
on-call command) and runs ``agentaskit-dr failback --yes`` as an on-call person would,
from a config that controls *no* server: the resync of the old primary is done by its
region's watchdog and the switchover by the other's (``POST /v1/host-steps/...``). It
then reads both evidence files and prints their figures side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agentaskit_dr.local_servers.postgres import PostgresServer
from agentaskit_dr.sandbox.postgres import PostgresPair

#: Bound on the whole failback command (resync, integrity, switchover) in the sandbox.
FAILBACK_TIMEOUT = 240.0


def control_of(server: PostgresServer) -> dict[str, str]:
    """``regions.<r>.database.control`` for a sandbox server."""
    return {"data_directory": str(server.datadir), "bin_dir": str(server.bindir),
            "os_user": "postgres", "stop_timeout": "10s"}


def peer_token(workdir: Path) -> Path:
    """The peer token file every site of the drill shares."""
    path = workdir / "peer-token"
    if not path.exists():
        path.write_text(secrets.token_hex(16) + "\n")
        path.chmod(0o600)
    return path


def apply_site_overrides(config: dict[str, Any], site: str, pair: PostgresPair,
                         workdir: Path) -> None:
    """What a drill site's config gets for ``--failback``: the peer token, and for a
    region's watchdog the control of its own region's server (the first region's is the
    pair's primary)."""
    config["api"]["peer_token_file"] = str(peer_token(workdir))
    regions = list(config["regions"])
    if site in regions:
        server = pair.primary if site == regions[0] else pair.replica
        config["regions"][site]["database"]["control"] = control_of(server)


def full_circle(redis_url: str, base: dict[str, Any], workdir: Path,
                peers: list[str]) -> dict[str, Any]:
    """Pause the watchdogs, run the failback from a config controlling no server (built
    from ``base``, asking ``peers``), and return its evidence's figures."""
    pause_cluster(redis_url)
    return failback_figures(run_failback(operator_config(base, workdir, peers), workdir))


def prepare(pair: PostgresPair) -> None:
    """amcheck for verify_data_integrity: created on the primary, before the failover (a
    standby cannot)."""
    pair.primary.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    pair.wait_replayed()


def operator_config(base: dict[str, Any], workdir: Path, peers: list[str]) -> Path:
    """The on-call person's config: a watchdog config that controls no server and asks
    the region watchdogs (``peers``) to run the host-bound steps."""
    config = copy.deepcopy(base)
    for region in config["regions"].values():
        region["database"].pop("control", None)
    config.update(node_name="drill-operator", peers=peers, role="watchdog")
    config.pop("witness", None)
    config["api"] = {"listen": None, "peer_token_file": str(peer_token(workdir))}
    config["promotion"] = {**config.get("promotion", {}), "catch_up_timeout": "20s",
                           "timeout": "20s"}
    path = workdir / "operator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pause_cluster(redis_url: str) -> None:
    """Pause every watchdog, so the failback command may take the lock."""
    from agentaskit_dr.leadership.cluster import RedisClusterStore

    async def pause() -> None:
        store = RedisClusterStore(redis_url)
        try:
            await store.pause(reason="drill: failback by hand", by="drill")
        finally:
            await store.close()

    asyncio.run(pause())


def run_failback(config: Path, workdir: Path) -> dict[str, Any]:
    """``agentaskit-dr failback --yes`` (retried while the paused watchdogs' lease runs
    out); its JSON answer plus ``stderr`` and ``seconds``."""
    deadline = time.monotonic() + FAILBACK_TIMEOUT
    started = time.monotonic()
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "agentaskit_dr", "failback", "--yes", "--config",
             str(config), "--sync-timeout", "120s", "--integrity-wait", "30s"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
            timeout=max(1.0, deadline - time.monotonic()))
        if "leader lock is held" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (workdir / "failback.out").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    start = done.stdout.find("\n{")
    answer: dict[str, Any] = {}
    if start >= 0:
        with contextlib.suppress(ValueError):
            answer = json.loads(done.stdout[start + 1:])
    answer.update(exit_code=done.returncode, stderr=done.stderr.strip()[-2000:],
                  seconds=round(time.monotonic() - started, 3))
    return answer


def failback_figures(answer: dict[str, Any]) -> dict[str, Any]:
    """The figures of the failback's evidence file (``answer`` from ``run_failback``)."""
    figures: dict[str, Any] = {"outcome": answer.get("outcome"),
                               "exit_code": answer.get("exit_code"),
                               "run_id": answer.get("run_id"),
                               "command_seconds": answer.get("seconds")}
    path = answer.get("evidence")
    if not isinstance(path, str) or not Path(path).is_file():
        figures["error"] = answer.get("detail") or answer.get("stderr") or "no evidence"
        return figures
    document = json.loads(Path(path).read_text())
    extra = document.get("extra") or {}
    sync, switch = extra.get("sync") or {}, extra.get("switchover") or {}
    figures.update(
        evidence=path,
        undoes=extra.get("undoes"),
        per_step_seconds=_step_seconds(document.get("timeline", [])),
        resync_method=sync.get("method"),
        reclone_reason=sync.get("reclone_reason"),
        resync_phases=sync.get("phases"),
        switchover_write_unavailable_seconds=switch.get("write_unavailable_seconds"),
        switchover_phases=switch.get("phases"),
        timelines=[sync.get("timeline"), switch.get("new_timeline")],
        final_epoch=extra.get("final_epoch"),
        rpo_lag_bytes=(document.get("rpo") or {}).get("lag_bytes"),
        total_seconds=extra.get("total_seconds"),
    )
    return figures


def _step_seconds(timeline: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per step: its first start to its end (done or skipped), from the evidence timeline
    (a step's progress marks are starts too: the first one is when it began)."""
    began: dict[str, float] = {}
    took: dict[str, float | None] = {}
    for entry in timeline:
        step, at = entry["step"], float(entry["at_unix"])
        if entry["status"] == "started":
            began.setdefault(step, at)
        elif entry["status"] in ("done", "skipped") and step in began:
            took[step] = round(at - began[step], 3)
    return took


def stop_servers(pair: PostgresPair) -> None:
    """The failback restarts both servers with pg_ctl, outside the pair's own handles."""
    for server in (pair.primary, pair.replica):
        if (server.datadir / "postmaster.pid").exists():
            subprocess.run([str(server.bindir / "pg_ctl"), "stop", "-D", str(server.datadir),
                            "-m", "immediate"], user="postgres", capture_output=True,
                           check=False, cwd="/")


def print_failback(figures: dict[str, Any], failover: dict[str, Any],
                   out: Any = sys.stdout) -> None:
    """Both evidence files' figures, for the operator."""
    print("\nFull circle (failover, then failback):", file=out)
    rows = [
        ("failover: kill -> writable", failover.get("kill_to_writable"), "s"),
        ("failover: decision -> writable", failover.get("decision_to_writable"), "s"),
        ("failback: outcome", figures.get("outcome"), ""),
        ("failback: resync method", figures.get("resync_method"), ""),
        ("failback: re-clone reason", figures.get("reclone_reason"), ""),
        ("failback: resync phases", figures.get("resync_phases"), ""),
        ("failback: per-step times", figures.get("per_step_seconds"), ""),
        ("switchover: write-unavailable", figures.get("switchover_write_unavailable_seconds"),
         "s"),
        ("switchover: phases", figures.get("switchover_phases"), ""),
        ("failback: timelines (resync, final)", figures.get("timelines"), ""),
        ("failback: final epoch", figures.get("final_epoch"), ""),
        ("failback: RPO", figures.get("rpo_lag_bytes"), " bytes"),
        ("failback: total", figures.get("total_seconds"), "s"),
    ]
    for name, value, unit in rows:
        print(f"  {name:<38} {value}{unit if value is not None else ''}", file=out)
    if figures.get("error"):
        print(f"  failback error: {figures['error']}", file=out)
