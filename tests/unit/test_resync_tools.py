"""The one way ``sync-primary`` starts a server refuses a data directory without
``standby.signal``: a server it starts comes up read-only or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.actuators.pg_control import ServerControl, ServerControlFailed
from agentaskit_dr.actuators.resync_tools import LastStart, last_start, start_in_recovery


async def test_a_start_without_standby_signal_is_refused_before_pg_ctl_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "PG_VERSION").write_text("15\n")
    # No pg_ctl there: the refusal must come before any binary is looked for.
    control = ServerControl(data_directory=tmp_path, bin_dir=tmp_path / "no-bin")

    with pytest.raises(ServerControlFailed, match=r"without standby\.signal"):
        await start_in_recovery(control, LastStart((), 5433), wait=None)


def test_the_last_start_options_keep_the_port_last() -> None:
    how = LastStart(("-c", "config_file=/etc/postgresql/15/main/postgresql.conf"), 5433)

    assert how.start_options() == (
        "-c config_file=/etc/postgresql/15/main/postgresql.conf -p 5433"
    )


async def test_the_last_start_is_read_from_postmaster_opts(tmp_path: Path) -> None:
    (tmp_path / "postmaster.opts").write_text(
        '/usr/lib/postgresql/15/bin/postgres "-D" "/var/lib/postgresql/15/main" "-p" "5433" '
        '"-c" "config_file=/etc/postgresql/15/main/postgresql.conf"\n'
    )
    control = ServerControl(data_directory=tmp_path, bin_dir=tmp_path / "no-bin")

    how = await last_start(control, budget=5.0)

    assert how == LastStart(("-c", "config_file=/etc/postgresql/15/main/postgresql.conf"), 5433)
