"""The ``failback:`` section: how traffic moves back to the recovered region.

Kept in its own module: the failback runbook's other knobs join it here.
"""

from __future__ import annotations

import itertools

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import ConfigModel, PositiveDuration

DEFAULT_SHIFT_STEPS = (10, 50, 100)


class FailbackConfig(ConfigModel):
    """The failback's traffic shift (plan step 4, ``shift-traffic``)."""

    shift_steps: tuple[int, ...] = DEFAULT_SHIFT_STEPS
    """Percent of traffic the recovered region gets at each step, increasing, ending at 100
    (weighted records; a simple record is switched at 100 only)."""
    soak: PositiveDuration = 300.0
    """How long each step's weights hold, with the health gate checked, before the next."""
    gate_healthy_fraction: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    """Share of the target region's health URLs that must answer 2xx at every gate check
    during a soak; null means ``probe.healthy_fraction``."""

    @field_validator("shift_steps", mode="before")
    @classmethod
    def _percent_steps(cls, steps: object) -> object:
        if not isinstance(steps, list | tuple) or not steps:
            raise PydanticCustomError("shift_steps", "must be a list of percentages like "
                                      "[10, 50, 100]")
        if any(not isinstance(step, int) or isinstance(step, bool) or not 1 <= step <= 100
               for step in steps):
            raise PydanticCustomError("shift_steps", "each step must be a whole percentage "
                                      "from 1 to 100")
        if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            raise PydanticCustomError("shift_steps", "steps must increase")
        if steps[-1] != 100:
            raise PydanticCustomError("shift_steps", "the last step must be 100 (all traffic "
                                      "back in the recovered region)")
        return tuple(steps)
