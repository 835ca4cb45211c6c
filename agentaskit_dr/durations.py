"""Durations and sizes as operators write them: ``"5m"``, ``"1h30m"``, ``"16MiB"``.

Pure functions with no pydantic in sight, so the CLI and the docs can use them too:
argparse types import this module, not the config package (it loads pydantic).
Arithmetic goes through :class:`~fractions.Fraction` so that ``"4s5ms"`` gives exactly
the float nearest 4.005, the same as ``4005 / 1000``: formatting and parsing round-trip.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

#: Seconds per duration unit. ``ms`` must be tried before ``m`` (see the regex below).
DURATION_UNITS: dict[str, int | Fraction] = {
    "ms": Fraction(1, 1000),
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
}

#: Bytes per size unit: SI (``kB`` = 1000) and IEC (``KiB`` = 1024), matched case-insensitively.
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
}

DURATION_HINT = "must be a duration like '2m' or '120s'"
SIZE_HINT = "must be a size like '16MiB', '512kB' or a number of bytes"

_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN_NUMBER = re.compile(_NUMBER)
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: ``"250ms"``, ``"120s"``, ``"5m"``, ``"1h30m"``, ``"2d"``, or a number.

    Plain numbers (and numeric strings) are seconds. Units may be combined in any order,
    with optional spaces (``"1h 30m"``). Raises :class:`ValueError` for negatives,
    empty strings, NaN/infinity and garbage, :class:`TypeError` for booleans and
    anything that is not a string or a number.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        # YAML turns `yes` into True, and True is an int: never let it mean 1 second.
        raise TypeError(DURATION_HINT)
    if not isinstance(value, str):
        return _non_negative_seconds(value)
    text = value.strip()
    if text.startswith("-"):
        raise ValueError("must not be negative")
    if _PLAIN_NUMBER.fullmatch(text):
        return float(Fraction(text))
    if not _DURATION.fullmatch(text):
        raise ValueError(DURATION_HINT)
    total = sum(
        (Fraction(number) * DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)),
        start=Fraction(0),
    )
    return float(total)


def _non_negative_seconds(value: int | float) -> float:
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(DURATION_HINT)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest unit string for ``seconds``, to the millisecond: 5400 -> ``"1h30m"``.

    ``parse_duration(format_duration(x)) == x`` for any whole number of milliseconds.
    """
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    remaining = round(Fraction(seconds) * 1000)
    parts: list[str] = []
    for unit in ("d", "h", "m", "s", "ms"):
        per_unit = int(DURATION_UNITS[unit] * 1000)
        count, remaining = divmod(remaining, per_unit)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_size(value: str | int | float) -> int:
    """Bytes in ``value``: ``"16MiB"``, ``"512kB"``, ``"1.5GB"``, or a plain number of bytes.

    ``kB``/``MB``/``GB``/``TB`` are powers of 1000 and ``KiB``/``MiB``/``GiB``/``TiB`` powers
    of 1024 (units are case-insensitive). The result must be a whole, non-negative
    number of bytes. Raises :class:`ValueError` otherwise (:class:`TypeError` for booleans
    and non-numbers).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(SIZE_HINT)
    if not isinstance(value, str):
        if not math.isfinite(value):
            raise ValueError(SIZE_HINT)
        amount = Fraction(value)
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError("must not be negative")
        match = _SIZE.fullmatch(text)
        if match is None:
            raise ValueError(SIZE_HINT)
        number, unit = match.groups()
        multiplier = SIZE_UNITS.get(unit.lower() or "b")
        if multiplier is None:
            raise ValueError(f"{SIZE_HINT}; unknown unit {unit!r}")
        amount = Fraction(number) * multiplier
    if amount < 0:
        raise ValueError("must not be negative")
    if amount.denominator != 1:
        raise ValueError("must be a whole number of bytes")
    return int(amount)
