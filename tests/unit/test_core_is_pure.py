"""core/ imports nothing but a small allowlist of the standard library: no I/O, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import agentaskit_dr.core

CORE = Path(agentaskit_dr.core.__file__).parent
ALLOWED = {"__future__", "dataclasses", "enum", "typing", "collections.abc", "agentaskit_dr.core"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            modules.add(node.module or "")
    return modules


def allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_core_imports_only_the_pure_allowlist() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 3
    offenders = {
        f"{path.name}: {module}"
        for path in files
        for module in imported_modules(path)
        if not allowed(module)
    }
    assert offenders == set()


def test_the_check_catches_an_io_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import asyncio\nfrom time import monotonic\nimport structlog\n")
    assert {m for m in imported_modules(sample) if not allowed(m)} == {
        "asyncio", "time", "structlog"
    }
