"""The WAL gap check and the retention plan, on names and times alone."""

from __future__ import annotations

from agentaskit_dr.backup.manifest import (
    BackupRecord,
    StoredObject,
    format_lsn,
    new_backup_id,
    parse_lsn,
)
from agentaskit_dr.backup.retention import WalFile, plan_prune
from agentaskit_dr.backup.walchain import missing_segments, segment_name

SEG = 16 << 20
DAY = 86400.0


def names(timeline: int, first: int, last: int) -> list[str]:
    return [segment_name(timeline, n, SEG) for n in range(first, last + 1)]


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("0/3000028") == 0x3000028
    assert format_lsn(parse_lsn("1A/FF000000")) == "1A/FF000000"
    assert segment_name(1, 0x1FF, SEG) == "0000000100000001000000FF"


def test_a_complete_chain_has_no_gap() -> None:
    assert missing_segments(names(1, 3, 9), {}, timeline=1, start_lsn=3 * SEG + 40,
                            end_lsn=None, segment_size=SEG) == []


def test_a_missing_range_is_named_first_to_last() -> None:
    archive = [n for n in names(1, 3, 12) if n not in names(1, 6, 8)]
    gaps = missing_segments(archive, {}, timeline=1, start_lsn=3 * SEG, end_lsn=None,
                            segment_size=SEG)
    assert [str(g) for g in gaps] == [
        "WAL segments 000000010000000000000006 .. 000000010000000000000008 are missing (3)"]


def test_the_chain_follows_a_promotion_onto_the_new_timeline() -> None:
    # Timeline 2 began at 0/7000100: segment 7 onwards carry timeline 2's id.
    history = {2: "1\t0/7000100\tno recovery target specified\n"}
    archive = names(1, 3, 6) + names(2, 7, 10) + ["000000010000000000000007.partial"]
    assert missing_segments(archive, history, timeline=1, start_lsn=3 * SEG, end_lsn=None,
                            segment_size=SEG) == []
    without = [n for n in archive if n != segment_name(2, 7, SEG)]
    gaps = missing_segments(without, history, timeline=1, start_lsn=3 * SEG, end_lsn=None,
                            segment_size=SEG)
    assert [g.first for g in gaps] == ["000000020000000000000007"]


def record(backup_id: str, kind: str, stopped_at: float, start_seg: int,
           chain: tuple[str, ...] = ()) -> BackupRecord:
    return BackupRecord(
        backup_id=backup_id, kind=kind, parent=chain[-1] if chain else None,  # type: ignore[arg-type]
        chain=(*chain, backup_id), pg_version=180000, system_identifier="1", timeline=1,
        start_lsn=format_lsn(start_seg * SEG), stop_lsn=format_lsn(start_seg * SEG + 100),
        started_at=stopped_at - 10, stopped_at=stopped_at, database_bytes=1, key_id="k1",
        compression="zstd", objects=(StoredObject("base.tar.zst", 1, "0" * 64),))


def test_retention_keeps_the_newest_full_however_old_and_what_builds_on_it() -> None:
    now = 100 * DAY
    old_full = record("20260101T000000Z-F", "full", now - 40 * DAY, 2)
    newest_full = record("20260201T000000Z-F", "full", now - 35 * DAY, 10)
    incremental = record("20260202T000000Z-I", "incremental", now - 2 * DAY, 12,
                         chain=(newest_full.backup_id,))
    stale_incremental = record("20260203T000000Z-I", "incremental", now - 8 * DAY, 11,
                               chain=(newest_full.backup_id,))
    plan = plan_prune([old_full, newest_full, stale_incremental, incremental],
                      [("20260204T000000Z-F", now - 2 * DAY), ("20260205T000000Z-F", now - 60)],
                      [WalFile(n, now - 3 * DAY) for n in names(1, 1, 13)]
                      + [WalFile(segment_name(1, 14, SEG), now - 60)],
                      now=now, full_retention=30 * DAY, incremental_retention=7 * DAY,
                      wal_retention=DAY)
    assert plan.delete_backups == [old_full.backup_id, stale_incremental.backup_id]
    assert plan.kept[newest_full.backup_id] == "the newest full backup"
    assert plan.delete_leftovers == ["20260204T000000Z-F"]
    # WAL from the start of the backup a recovery to "a day ago" starts from (the
    # incremental, segment 12) stays, and so does each kept backup's own range.
    assert plan.delete_wal == names(1, 1, 9) + names(1, 11, 11)


def test_two_backups_in_one_second_get_different_ids_in_time_order() -> None:
    first = new_backup_id(1_795_953_600.2, "full")
    second = new_backup_id(1_795_953_600.7, "full", {first})
    third = new_backup_id(1_795_953_600.9, "incremental", {first, second})

    assert first == "20261129T120000Z-F"
    assert first < second < third
    assert third.endswith("-I")
