"""The hold's effect on a server that is already down (runtime/own_hold.py): nothing to
hold, and no ``standby.signal`` that would bring a restart back in recovery when no
failover happened (the start gate decides that restart)."""

from __future__ import annotations

from pathlib import Path

from agentaskit_dr.config import load_config
from agentaskit_dr.core import HoldOwnPrimary
from agentaskit_dr.runtime.own_hold import hold_own_primary
from tests.unit.test_config import shipped_env  # noqa: F401 (autouse: the passwords)
from tests.unit.test_config_control import with_control


async def test_a_server_already_down_is_left_as_it_is(tmp_path: Path) -> None:
    datadir = tmp_path / "pgdata"
    datadir.mkdir()
    config = load_config(with_control(tmp_path, {"data_directory": str(datadir)}))

    result = await hold_own_primary(config, HoldOwnPrimary("unreachable", 0.0, 97.0),
                                    monotonic_now=97.0)

    assert result.held, result.detail
    assert "already down" in result.detail
    assert not (datadir / "standby.signal").exists()
