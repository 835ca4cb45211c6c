"""WAL segment names and the gap check of an archive (pure: names in, findings out).

A segment file is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the segment number split
in two. Recovery on timeline T reads each segment from the newest timeline of T's
history that had begun by then: after a promotion at LSN L, segments from the one
holding L onwards carry the new timeline's id (``.history`` files say where each
timeline branched off its parent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SEGMENT = re.compile(r"[0-9A-F]{24}")
HISTORY = re.compile(r"([0-9A-F]{8})\.history")


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_number(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per = segments_per_xlogid(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a segment file name."""
    if not SEGMENT.fullmatch(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per = segments_per_xlogid(segment_size)
    return int(name[:8], 16), int(name[8:16], 16) * per + int(name[16:], 16)


@dataclass(frozen=True, slots=True)
class Branch:
    """Timeline ``timeline`` began at ``begin_lsn`` (0 for the first one)."""

    timeline: int
    begin_lsn: int


def parse_history(timeline: int, text: str) -> list[Branch]:
    """The ancestry of ``timeline`` from its ``.history`` file, oldest first, itself last.

    Each line is ``parent-timeline <tab> switch-LSN <tab> reason``: the parent ran until
    the switch LSN, where the next timeline began.
    """
    branches: list[Branch] = []
    begin = 0
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        parent, switch = int(words[0]), words[1]
        high, _, low = switch.partition("/")
        branches.append(Branch(parent, begin))
        begin = (int(high, 16) << 32) | int(low, 16)
    branches.append(Branch(timeline, begin))
    return branches


@dataclass(frozen=True, slots=True)
class WalGap:
    """Segments missing from the archive: ``first`` .. ``last`` (names, inclusive)."""

    first: str
    last: str
    count: int

    def __str__(self) -> str:
        if self.count == 1:
            return f"WAL segment {self.first} is missing"
        return f"WAL segments {self.first} .. {self.last} are missing ({self.count})"


def latest_timeline(histories: Mapping[int, str], from_timeline: int) -> int:
    """The newest timeline that descends from (or is) ``from_timeline``."""
    best = from_timeline
    for timeline, text in histories.items():
        ancestry = {branch.timeline for branch in parse_history(timeline, text)}
        if from_timeline in ancestry and timeline > best:
            best = timeline
    return best


def needed_segments(
    names: Iterable[str],
    histories: Mapping[int, str],
    *,
    timeline: int,
    start_lsn: int,
    end_lsn: int | None,
    segment_size: int,
) -> list[tuple[str, bool]]:
    """The segments a recovery from ``start_lsn`` on ``timeline`` reads, in order, each
    with whether the archive holds it.

    Up to ``end_lsn`` (inclusive of its segment), or with None to the newest segment
    archived on the newest timeline descending from ``timeline``.
    """
    target = latest_timeline(histories, timeline)
    ancestry = (
        parse_history(target, histories[target]) if target in histories
        else [Branch(target, 0)]
    )
    present: dict[int, set[int]] = {}
    for name in names:
        if SEGMENT.fullmatch(name):
            tli, segno = parse_segment(name, segment_size)
            present.setdefault(tli, set()).add(segno)
    first = segment_number(start_lsn, segment_size)
    if end_lsn is not None:
        last = segment_number(end_lsn, segment_size)
    else:
        last = max(present.get(target, {first}) | {first})
    begins = [(segment_number(b.begin_lsn, segment_size), b.timeline) for b in ancestry]
    needed = []
    for segno in range(first, last + 1):
        tli = max((t for begin, t in begins if begin <= segno and t >= timeline),
                  default=timeline)
        needed.append((segment_name(tli, segno, segment_size), segno in present.get(tli, ())))
    return needed


def missing_segments(
    names: Iterable[str],
    histories: Mapping[int, str],
    *,
    timeline: int,
    start_lsn: int,
    end_lsn: int | None,
    segment_size: int,
) -> list[WalGap]:
    """Gaps in the WAL a recovery needs (see :func:`needed_segments`)."""
    gaps: list[WalGap] = []
    run: list[str] = []
    for name, held in needed_segments(names, histories, timeline=timeline,
                                      start_lsn=start_lsn, end_lsn=end_lsn,
                                      segment_size=segment_size):
        if held:
            if run:
                gaps.append(WalGap(run[0], run[-1], len(run)))
                run = []
            continue
        run.append(name)
    if run:
        gaps.append(WalGap(run[0], run[-1], len(run)))
    return gaps
