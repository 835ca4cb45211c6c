"""``verify-data-integrity --config C [--timeout T] [--json]``: failback step 3.

Exit 0: the two copies hold the same data; 1: something differs or is corrupt (each
relation named on stderr); 2: bad input; 3: the check could not be carried out (a server
unreachable, a privilege or amcheck missing, no consistent point in time): one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agentaskit_dr.config_cli import positive_seconds
from agentaskit_dr.exit_codes import EXIT_USAGE

if TYPE_CHECKING:
    from agentaskit_dr.integrity import IntegrityReport

# Its answer is in the exit code: same, differs, or could not be verified; bad input is
# the shared EXIT_USAGE (2).
EXIT_SAME, EXIT_DIFFERS, EXIT_UNVERIFIED = 0, 1, 3
_NAME = "verify-data-integrity"


def add_integrity_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify-data-integrity`` to the CLI."""
    command = sub.add_parser(
        _NAME, help="failback: prove the primary and its resynced standby hold the same data "
        "(lineage and lag, amcheck, per-table hashes at one WAL position)")
    command.add_argument("--config", required=True, type=Path, help="watchdog YAML file")
    command.add_argument("--timeout", type=positive_seconds, default=60.0,
                         help="bound on each wait: the standby's catch-up, the consistent "
                              "point (default 60s; the scans themselves are not bounded)")
    command.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    command.set_defaults(integrity_command=_NAME)


def run_integrity_command(args: argparse.Namespace) -> int:
    """Run the check; every expected failure is one line, never a traceback."""
    import asyncio

    from agentaskit_dr import logs
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.integrity import IntegrityUnverified, verify_data_integrity

    # stdout carries the answer; anything a library logs goes to stderr as JSON.
    logs.configure("warning", stream=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return EXIT_USAGE
    try:
        report = asyncio.run(verify_data_integrity(config, max_wait=args.timeout))
    except IntegrityUnverified as exc:
        print(f"agentaskit-dr {_NAME}: cannot verify: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIED
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_text(report)
    for problem in report.problems:
        print(f"agentaskit-dr {_NAME}: {problem}", file=sys.stderr)
    return EXIT_SAME if report.same else EXIT_DIFFERS


def _print_text(report: IntegrityReport) -> None:
    lineage = report.lineage
    if lineage is not None:
        print(f"lineage: {report.standby_region} streams timeline {lineage.standby_timeline} "
              f"of {report.primary_region} (timeline {lineage.primary_timeline}, system "
              f"{lineage.system_identifier}); replay lag {lineage.lag_bytes_at_start} bytes "
              f"at start, caught up with {lineage.primary_lsn} in "
              f"{lineage.catch_up_seconds:g}s")
    if report.relations_checked:
        print(f"amcheck on {report.standby_region}: {report.relations_checked} relations in "
              f"{report.amcheck_seconds:g}s, {len(report.corruption)} corrupt")
    if report.compared_at_lsn is not None:
        mib = report.bytes_compared / 2**20
        print(f"compared {len(report.tables)} tables ({mib:.1f} MiB) of database "
              f"{report.database!r} at {report.compared_at_lsn} in {report.compare_seconds:g}s "
              f"(writes to them paused {report.write_pause_ms:g} ms)")
        for table in report.tables:
            verdict = "same" if table.same else (table.error or "DIFFERS")
            print(f"  {table.table}: {report.primary_region} {table.primary_rows} rows "
                  f"{table.primary_hash}, {report.standby_region} {table.standby_rows} rows "
                  f"{table.standby_hash}: {verdict}")
    if report.same:
        print(f"{report.primary_region} and {report.standby_region} hold the same data")
