"""``sync-primary``: the plan's failback step 2, on the old primary's host.

``sync-primary --config C [--region R] [--timeout T] [--json]``: region R's server (by
default the config's own region: run it where R's database runs) rejoins as a streaming
standby of the other region's server, by pg_rewind or, failing that, a re-clone (see
``actuators/resync``). Exit 0 once it streams with replay lag 0; 1 with one line naming
the problem; 2 for bad input, a missing ``regions.<R>.database.control`` included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from pydantic import SecretStr

    from agentaskit_dr.actuators.resync_plan import LibpqSource, ResyncPlan, ResyncResult
    from agentaskit_dr.config import WatchdogConfig

DEFAULT_TIMEOUT = "10m"
#: pg_rewind's session must not be cut by a role's or database's statement_timeout.
NO_STATEMENT_TIMEOUT = "-c statement_timeout=0"


class MissingControl(Exception):
    """This host may not control the region's server: the message names the missing key."""


def add_resync_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sync-primary`` to the CLI."""
    parser = sub.add_parser(
        "sync-primary", help="failback step 2: the old primary rejoins as a streaming standby "
        "of the new primary (pg_rewind, else re-clone); run on its host",
    )
    parser.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    parser.add_argument("--region", default=None,
                        help="the old primary's region (default: the config's region, i.e. "
                             "this host's)")
    parser.add_argument("--timeout", default=DEFAULT_TIMEOUT,
                        help=f"bound on the whole step (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(resync_command=True)


def run_resync_command(args: argparse.Namespace) -> int:
    """Run ``sync-primary``; every expected failure is one line on stderr, no traceback."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.actuators.resync_plan import ResyncFailed
    from agentaskit_dr.config import load_config, parse_duration
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.oncall_lock import Refused
    from agentaskit_dr.ports import LockUnavailable

    try:
        timeout = parse_duration(args.timeout)
    except (TypeError, ValueError, ArithmeticError) as exc:
        return _say(f"--timeout: {exc} (got {args.timeout!r})", EXIT_USAGE)
    if timeout <= 0:
        return _say(f"--timeout: must be longer than zero (got {args.timeout!r})", EXIT_USAGE)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    region = args.region or config.region
    if region not in config.regions:
        return _say(f"--region: must be one of the regions: {', '.join(sorted(config.regions))}"
                    f" (got {region!r})", EXIT_USAGE)
    try:
        plan = resync_plan(config, region, timeout)
    except MissingControl as exc:
        return _say(str(exc), EXIT_USAGE)
    logs.configure("warning", stream=sys.stderr)
    try:
        result = asyncio.run(_under_the_lock(config, plan))
    except (ResyncFailed, Refused) as exc:
        return _say(str(exc), EXIT_FAILURE)
    except LockUnavailable as exc:
        return _say(f"the lock store cannot be reached: {exc}", EXIT_FAILURE)
    print(json.dumps(result.to_json(), indent=2) if args.json else describe(result))
    return EXIT_OK


async def _under_the_lock(config: WatchdogConfig, plan: ResyncPlan) -> ResyncResult:
    """Run the step holding the leader lock, like every on-call command that changes
    something: no watchdog's runbook acts on the cluster meanwhile."""
    from agentaskit_dr.actuators.resync import resync_standby
    from agentaskit_dr.oncall_lock import held_lock

    async with held_lock(config):
        return await resync_standby(plan)


def _say(message: str, code: int) -> int:
    print(f"agentaskit-dr sync-primary: {message}", file=sys.stderr)
    return code


def describe_loss(loss: dict[str, object] | None) -> str:
    """The failover's measured loss (``ResyncResult.fork_loss``) in one line."""
    if not loss or loss.get("lost_wal_bytes") is None:
        why = (loss or {}).get("note")
        return "failover loss: not measured" + (f" ({why})" if why else "")
    return (f"failover loss: {loss['lost_wal_bytes']} bytes of WAL and "
            f"{loss['lost_commits']} committed transaction(s) beyond the fork at "
            f"{loss['fork_lsn']} (timeline {loss['old_timeline']}), last lost commit at "
            f"{loss.get('last_lost_commit_at') or '—'}")


def describe(result: ResyncResult) -> str:
    """The result in a few lines for the on-call person."""
    how = "rewound (pg_rewind)" if result.method == "rewind" else "re-cloned (pg_basebackup)"
    lines = [f"{result.region}: {how}; streaming from {result.primary_region}, replay lag 0 "
             f"bytes at {result.primary_lsn} (timeline {result.timeline})"]
    if result.rewind_note:
        lines.append(f"pg_rewind: {result.rewind_note}")
    if result.reclone_reason:
        lines.append(f"re-cloned because {result.reclone_reason}")
    if result.kept_aside:
        lines.append(f"old data directory kept at {result.kept_aside} (the diverged "
                     "transactions' only copy): remove it when no longer needed")
    lines.append(describe_loss(result.fork_loss))
    lines.append("phases: " + ", ".join(f"{name} {secs:.2f}s"
                                        for name, secs in result.phases.items()))
    return "\n".join(lines)


def resync_plan(config: WatchdogConfig, region: str, timeout: float) -> ResyncPlan:
    """What ``sync-primary`` of ``region`` needs from the config; MissingControl if this
    host may not control that region's server."""
    from agentaskit_dr.actuators.resync_plan import ResyncPlan
    from agentaskit_dr.fencing import (
        other_region,
        primary_elsewhere,
        recorded_primary,
        server_control,
    )

    control = server_control(config, region)
    if control is None:
        raise MissingControl(
            f"regions.{region}.database.control is not set: sync-primary stops, rewinds and "
            f"starts {region}'s server, so it runs on that server's host with "
            "control.data_directory (and os_user, bin_dir) configured"
        )
    other = other_region(config, region)
    primary = config.regions[other].database

    async def elsewhere() -> str | None:
        return await primary_elsewhere(config, region)

    async def here() -> str | None:
        recorded = await recorded_primary(config)
        if recorded is None or recorded.region != region:
            return None
        return (f"the cluster record in the lock store says the primary is in {region} "
                f"since epoch {recorded.epoch} (run {recorded.run_id})")

    rewind_source = libpq_source(primary.dsn, primary.password, options=NO_STATEMENT_TIMEOUT)
    clone_source = (
        _given(primary.replication_dsn) if primary.replication_dsn
        else libpq_source(primary.dsn, primary.password)
    )
    return ResyncPlan(
        region=region, control=control,
        target_dsn=config.regions[region].database.connect_dsn(),
        primary_region=other, primary_dsn=primary.connect_dsn(),
        primary_conninfo=primary.replication_dsn or standby_conninfo(primary.dsn, region),
        rewind_source=rewind_source, clone_source=clone_source,
        timeout=timeout, io_timeout=config.probe.timeout, primary_elsewhere=elsewhere,
        primary_here=here,
        standby_name=None if primary.replication_dsn else standby_name(region),
    )


def _given(conninfo: str) -> LibpqSource:
    from agentaskit_dr.actuators.resync_plan import LibpqSource

    return LibpqSource(conninfo)


def libpq_source(dsn: str, secret: SecretStr | None, *, options: str | None = None) -> LibpqSource:
    """``dsn`` as a libpq URL without its password (that goes in PGPASSWORD, never argv),
    with ``options`` added."""
    from agentaskit_dr.actuators.resync_plan import LibpqSource

    parts = urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, _, inline = userinfo.partition(":")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if options:
        query.append(("options", options))
    url = urlunsplit((parts.scheme, f"{user}@{hosts}" if at else hosts, parts.path,
                      urlencode(query, quote_via=quote), parts.fragment))
    password = secret.get_secret_value() if secret is not None else unquote(inline) or None
    return LibpqSource(url, password)


def standby_conninfo(dsn: str, standby_region: str) -> str:
    """``primary_conninfo`` from the new primary's DSN: host, port and user, no password
    (the standby's OS user's ``~/.pgpass``), named after the standby's region."""
    parts = urlsplit(dsn)
    words = [f"host={parts.hostname or 'localhost'}"]
    if parts.port:
        words.append(f"port={parts.port}")
    if parts.username:
        words.append(f"user={_quoted(unquote(parts.username))}")
    words.append(f"application_name={_quoted(standby_name(standby_region))}")
    return " ".join(words)


def standby_name(region: str) -> str:
    """The ``application_name`` a standby in ``region`` streams under (default conninfo)."""
    return f"agentaskit-dr-{region}"


def _quoted(value: str) -> str:
    if value and all(ch.isalnum() or ch in "-_." for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
