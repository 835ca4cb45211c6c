"""The ``appstate`` command group: application state besides PostgreSQL.

``appstate backup|list|verify|prune REDIS|VAULT|CONFIGS`` and ``appstate test-restore
redis`` live in :mod:`agentaskit_dr.appstate.command` (docs/appstate.md).
"""

from __future__ import annotations

import argparse


def add_appstate_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``appstate`` group (application state besides PostgreSQL)."""
    from agentaskit_dr.appstate.command import add_backup_actions

    group = sub.add_parser("appstate", help="application state besides PostgreSQL")
    actions = group.add_subparsers(dest="appstate_action", required=True, metavar="ACTION")
    add_backup_actions(actions)


def run_appstate_command(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    from agentaskit_dr.appstate.command import run_backup_action

    return run_backup_action(args)
