"""The run journal's stored records: the JSON written to the store and checked field by
field when read back (``JournalCorrupt`` names the key and the bad fields)."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentaskit_dr.ports import LockUnavailable, StepStatus

M = TypeVar("M", bound=BaseModel)

# A colon would let one run's keys collide with another's (run "x:entries").
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
OUTCOMES = ("done", "failed")


class JournalCorrupt(LockUnavailable):
    """The store holds a journal record that is not what this code writes.

    A ``LockUnavailable``: the store answered wrongly, so nothing may be resumed or
    actuated on that basis, and every caller already stops and reports on it.
    """



def check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"journal run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def as_text(value: Any) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal {what} is not JSON-serialisable: {exc}") from exc



class StoredEntry(BaseModel):
    """A ``JournalEntry`` as stored: JSON, checked field by field when read back."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    step: str = Field(min_length=1)
    status: StepStatus
    epoch: int = Field(ge=1)
    at: float
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class StoredHeader(BaseModel):
    """A run's header as stored; ``finished`` lives in its own hash field."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    kind: str = Field(min_length=1)
    plan: tuple[str, ...]
    created_at: float
    created_epoch: int = Field(ge=1)
    reason: str
    meta: dict[str, Any]


def validated(model: type[M], raw: str, where: str) -> M:
    """``raw`` JSON as ``model``; ``JournalCorrupt`` naming ``where`` and the bad fields."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}"
            for error in exc.errors()
        )
        raise JournalCorrupt(f"{where} is invalid: {problems}") from None
