"""The switchover's server start and control-file reading, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.actuators.pg_control import ServerControl, ServerControlFailed
from agentaskit_dr.actuators.pg_start import (
    _previous_options,
    format_lsn,
    parse_lsn,
    start_server,
)


def test_lsn_text_and_bytes_round_trip() -> None:
    assert parse_lsn("0/3000028") == 0x3000028
    assert parse_lsn("1/0") == 1 << 32
    assert format_lsn(parse_lsn("2A/FF0010")) == "2A/FF0010"


def test_previous_start_options_keep_the_port_and_drop_the_data_directory(tmp_path: Path) -> None:
    (tmp_path / "postmaster.opts").write_text(
        f'/usr/lib/postgresql/15/bin/postgres "-D" "{tmp_path}" "-p" "5433" "-c" "a=b c"\n'
    )
    assert _previous_options(tmp_path) == "-p 5433 -c 'a=b c'"


def test_no_previous_start_gives_no_options(tmp_path: Path) -> None:
    assert _previous_options(tmp_path) == ""


async def test_a_data_directory_without_standby_signal_is_never_started_as_a_standby(
    tmp_path: Path,
) -> None:
    (tmp_path / "PG_VERSION").write_text("15\n")
    with pytest.raises(ServerControlFailed, match=r"without standby\.signal"):
        await start_server(ServerControl(data_directory=tmp_path), within=1.0)
