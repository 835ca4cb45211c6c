"""JSON answers of the API: every response but ``/metrics`` is a JSON object."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web


def json_answer(payload: dict[str, Any], status: int = 200) -> web.Response:
    """``payload`` as a JSON response; NaN and infinities become null."""
    try:
        # Almost every payload is finite: encoded at once, with no copy made first.
        text = json.dumps(payload, allow_nan=False, sort_keys=True)
    except ValueError:
        text = json.dumps(_finite(payload), allow_nan=False, sort_keys=True)
    return web.Response(text=text, status=status, content_type="application/json")


def error_answer(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """``{"error": message}`` with ``status`` and any extra ``headers``."""
    response = json_answer({"error": message}, status=status)
    if headers:
        response.headers.update(headers)
    return response


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
