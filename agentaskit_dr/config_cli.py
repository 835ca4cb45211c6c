"""How the commands read a config file: the validated file, or each bad field named on
stderr and no traceback (shared by ``cli``, ``oncall`` and the fence commands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def print_problems(path: Path, problems: Sequence[str]) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def load_or_explain(path: Path, loader: Callable[[Path], T]) -> T | None:
    """The validated file, or None after printing why it cannot be used."""
    from agentaskit_dr.config import ConfigError

    try:
        return loader(path)
    except ConfigError as exc:
        print_problems(path, exc.problems)
    except Exception as exc:  # noqa: BLE001 - the loader's own bug must not print a traceback
        # The loader promises ConfigError only; anything else is its bug, but the operator
        # still gets a one-line answer. The message is left out: it may echo a value.
        print_problems(path, [f"cannot be validated ({type(exc).__name__}); please report "
                               "this file's shape as a bug"])
    return None


def positive_seconds(text: str) -> float:
    """argparse type: a duration longer than zero ('3s', '500ms', '2m'), in seconds."""
    from agentaskit_dr.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise argparse.ArgumentTypeError(f"{exc} (got {text!r})") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero (got {text!r})")
    return seconds
