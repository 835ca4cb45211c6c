"""``shift-traffic --target=primary|secondary|REGION --percent=N [--yes]``: failback step 4.

One step, no soak: the service record's weights go to N % for the target region and
100-N % for the other, both records and the epoch marker in one Route 53 change batch,
read back, INSYNC, under the leader lock like ``update-dns``. A simple or failover record
is switched at 100 only; a smaller percent is refused and says so. ``primary`` and
``secondary`` name the file's regions (the failback moves traffic back to the file's
primary), not the cluster record's current primary. The gated run (10 -> 50 -> 100 with a
soak and a health gate) is ``runtime.traffic_shift.shift_traffic_gated``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentaskit_dr.config import WatchdogConfig

COMMAND = "shift-traffic"


def add_shift_traffic(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``shift-traffic`` with oncall's ``command`` factory (``--config`` and dispatch)."""
    shift = command(COMMAND, "move N%% of the service record's traffic to a region "
                    "(weighted records; failback step 4)")
    shift.add_argument("--target", required=True,
                       help="primary, secondary (the config file's) or a region name")
    shift.add_argument("--percent", required=True, type=_percent,
                       help="share of traffic for the target, 1-100 (10 is weights 10/90)")
    shift.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _percent(text: str) -> int:
    try:
        value = int(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole percentage 1-100 (got {text!r})"
                                         ) from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100 (got {text!r})")
    return value


def target_region(config: WatchdogConfig, target: str) -> str:
    """``primary``/``secondary`` as the config file names them, or a region of the config."""
    if target == "primary":
        return config.primary_region
    if target == "secondary":
        return config.secondary_region
    if target not in config.regions:
        raise ValueError(f"--target {target!r}: expected primary, secondary or one of "
                         f"{', '.join(sorted(config.regions))}")
    return target


async def shift_traffic(config: WatchdogConfig, args: argparse.Namespace) -> int:
    """The ``shift-traffic`` handler (run by oncall's dispatcher: errors become one line)."""
    from agentaskit_dr.oncall_lock import Refused, apply_step, held_lock, new_run_id
    from agentaskit_dr.runtime.traffic_shift import (
        ShiftRefused,
        other_region,
        refuse_partial_shift,
        switches,
    )

    target = target_region(config, args.target)
    other = other_region(config, target)
    try:
        route53 = config.dns.route53
        refuse_partial_shift("simple" if route53 is None else route53.style, args.percent)
        switch = switches(config)(target, args.percent)
    except ShiftRefused as exc:
        raise Refused(str(exc)) from None
    if not args.yes:
        _confirm(target, other, args.percent)
    async with held_lock(config) as held:
        return await apply_step(switch, held.lease.epoch, new_run_id("shift", held.lease.epoch))


def _confirm(target: str, other: str, percent: int) -> None:
    from agentaskit_dr.oncall_lock import Refused

    if not sys.stdin.isatty():
        raise Refused("not interactive: pass --yes to shift traffic without confirmation")
    answer = input(f"Send {percent}% of traffic to {target} and {100 - percent}% to {other}? "
                   f"Type {target!r} to confirm: ")
    if answer.strip() != target:
        raise Refused("not confirmed; nothing changed")
