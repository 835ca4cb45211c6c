"""Reading the failover's loss: the fork from a timeline history file, the end of the old
primary's WAL from what pg_waldump says when it stops."""

from __future__ import annotations

from pathlib import Path

from agentaskit_dr.actuators.pg_control import ServerControl
from agentaskit_dr.actuators.resync_loss import _end_of_wal, fork_point, wal_timelines

HISTORY = "1\t0/30180B0\tno recovery target specified\n\n2\t0/5000060\tno recovery target\n"
CONTROL = ServerControl(data_directory=Path("/nonexistent"))


def test_the_fork_is_where_the_old_timeline_ends_in_the_new_ones_history() -> None:
    assert fork_point(HISTORY, 1) == 0x30180B0
    assert fork_point(HISTORY, 2) == 0x5000060
    assert fork_point(HISTORY, 3) is None  # not an ancestor


def test_the_end_of_wal_is_where_pg_waldump_expected_the_next_record() -> None:
    said = ("pg_waldump: error: error in WAL record at 0/3018290: invalid record length at "
            "0/30182B8: wanted 24, got 0")
    assert _end_of_wal(said, 0x30180B0, CONTROL) == 0x30182B8
    said18 = ("pg_waldump: error: error in WAL record at 0/3018290: invalid record length "
              "at 0/30182B8: expected at least 24, got 0")
    assert _end_of_wal(said18, 0x30180B0, CONTROL) == 0x30182B8
    assert _end_of_wal("pg_waldump: error: error in WAL record at 1/10: record with "
                       "incorrect prev-link 0/0 at 1/38", 0, CONTROL) == (1 << 32) + 0x38


def test_nothing_after_the_fork_means_zero_and_a_missing_file_means_unknown() -> None:
    assert _end_of_wal("pg_waldump: error: could not find a valid record after 0/3000148",
                       0x3000148, CONTROL) == 0x3000148
    assert _end_of_wal('pg_waldump: error: could not find file "000000010000000000000009": '
                       "No such file or directory", 0x9000000, CONTROL) is None


def test_a_page_named_by_segment_and_offset_is_turned_into_an_lsn(tmp_path: Path) -> None:
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / "000000010000000000000003").write_bytes(b"\0" * 4096)
    control = ServerControl(data_directory=tmp_path)
    said = ("pg_waldump: error: error in WAL record at 0/3000F00: invalid magic number 0000 "
            "in log segment 000000010000000000000003, offset 2048")
    assert _end_of_wal(said, 0, control) == 3 * 4096 + 2048
    (tmp_path / "pg_wal" / "000000020000000000000004").touch()
    (tmp_path / "pg_wal" / "00000002.history").touch()
    assert wal_timelines(control) == [2, 1]
