"""Request bodies of the API: a JSON object of known fields, read within a size limit,
each field checked; ``BadRequest`` names the field (HTTP 400)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_BODY_BYTES = 64 * 1024
# A reason is for the operator's log line, not a document.
MAX_REASON_CHARS = 1000

Body = dict[str, Any]


class BadRequest(Exception):
    """A request body the API cannot accept; the message names the field."""


async def read_body(request: web.Request) -> bytes:
    too_large = f"request body too large: the limit is {MAX_BODY_BYTES} bytes"
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(too_large)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(too_large) from None


def body_object(raw: bytes, fields: frozenset[str]) -> Body:
    """The body as a JSON object holding only ``fields``; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("body: expected a JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body: expected a JSON object, got {kind(body)}")
    unknown = sorted(set(body) - fields)
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise BadRequest(f"{unknown[0]}: unknown field (allowed: {allowed})")
    return body


def epoch_field(body: Body) -> int:
    epoch = body.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise BadRequest(f"epoch: expected a positive integer, got {kind(epoch)}")
    return epoch


def dry_run_field(body: Body) -> bool:
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest(f"dry_run: expected true or false, got {kind(dry_run)}")
    return dry_run


def reason_field(body: Body) -> str | None:
    return text_field(body, "reason")


def kind(value: object) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def by_field(body: Body) -> dict[str, Any]:
    """Who asked (``by``), passed on only when the client named someone."""
    by = text_field(body, "by")
    return {} if by is None else {"by": by}


def text_field(body: Body, name: str) -> str | None:
    """An optional free-text field (a reason, who asked), capped in length."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name}: expected a string or null, got {kind(value)}")
    if value is not None and len(value) > MAX_REASON_CHARS:
        raise BadRequest(f"{name}: longer than {MAX_REASON_CHARS} characters")
    return value
