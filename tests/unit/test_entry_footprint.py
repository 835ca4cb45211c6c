"""What the console script loads: the daemon's commands do not pay for rich (issue 13);
parsing arguments pays for none of the commands' run-time modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_cli_loads_structlog_without_rich() -> None:
    seen = run_python(
        "import sys\n"
        "from agentaskit_dr._entry import main\n"
        "main(['check-config', '--config', '/nonexistent/watchdog.yaml'])\n"
        "import agentaskit_dr.runtime.supervisor, structlog.tracebacks\n"
        "print('rich' in sys.modules, structlog.tracebacks.rich)\n"
    )
    assert seen.splitlines()[-1] == "False None"


def test_rich_still_loads_for_the_commands_that_print_tables() -> None:
    seen = run_python(
        "from agentaskit_dr._entry import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "from rich.table import Table\n"
        "print(Table.__name__)\n"
    )
    assert seen.splitlines()[-1] == "Table"


#: Loaded only by the commands that need them, once their arguments parsed.
RUN_TIME_MODULES = ("aiohttp", "redis", "asyncpg", "pydantic", "yaml", "structlog", "asyncio",
                    "ssl", "agentaskit_dr.config", "agentaskit_dr.runtime", "agentaskit_dr.core")


def loaded_after(argv: list[str]) -> list[str]:
    """The run-time modules a fresh interpreter holds after ``main(argv)``, with its exit."""
    seen = run_python(
        "import sys\n"
        "from agentaskit_dr._entry import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(code, *sorted(m for m in {RUN_TIME_MODULES!r} if m in sys.modules))\n"
    )
    return seen.splitlines()[-1].split()


def test_help_loads_none_of_the_commands_run_time_modules() -> None:
    assert loaded_after(["--help"]) == ["0"]


def test_a_subcommands_help_loads_none_of_them_either() -> None:
    assert loaded_after(["failover", "--help"]) == ["0"]


def test_a_usage_error_is_answered_before_loading_them() -> None:
    assert loaded_after(["shift-traffic", "--config", "x.yaml", "--target", "primary",
                         "--percent", "101"]) == ["2"]
    assert loaded_after(["status", "--bogus"]) == ["2"]


def test_a_bad_duration_is_refused_without_the_config_package() -> None:
    assert loaded_after(["drill", "--threshold", "soon"]) == ["2"]


def test_run_with_a_missing_config_does_not_load_the_daemon() -> None:
    loaded = loaded_after(["run", "--config", "/nonexistent/watchdog.yaml"])
    assert loaded[0] == "2"
    assert "agentaskit_dr.runtime" not in loaded
    assert "aiohttp" not in loaded
