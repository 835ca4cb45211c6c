"""What the console script loads: the daemon's commands do not pay for rich (issue 13)."""

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
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
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
