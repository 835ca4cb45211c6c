"""The ``agentaskit-dr`` console script: ``wal-push``/``wal-fetch`` skip the full CLI.

PostgreSQL runs them once per WAL file, several times a second under load: they must not
pay for loading structlog, pydantic and the rest of the CLI (about 0.3 s here).

Every other command, once its arguments parsed, loads structlog with rich hidden
(:func:`load_structlog_without_rich`): structlog imports rich (about 3 MiB of a daemon's
RSS) only to render exception locals, which JSON logs never do. Commands that print
tables import rich themselves, as usual. Parsing itself imports none of the commands'
run-time modules (pydantic, asyncio, structlog, aiohttp, ...): ``--help`` and bad
arguments are answered in a fraction of the time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

WAL_COMMANDS = ("wal-push", "wal-fetch")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the light WAL client or to :func:`agentaskit_dr.cli.main`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in WAL_COMMANDS:
        from agentaskit_dr.backup.wal_client import main as wal_main

        return wal_main(args)
    from agentaskit_dr.cli import main as cli_main

    return cli_main(args)


def load_structlog_without_rich() -> None:
    """Import structlog with rich hidden (a no-op once either is loaded).

    :func:`agentaskit_dr.cli.main` calls it once the arguments parsed, before a command
    imports anything that logs: ``--help`` and a usage error load neither.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # ``import rich`` fails: skipped
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
