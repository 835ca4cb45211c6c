"""The one place that configures logging: JSON events on stdout, secrets scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")


def scrub(text: str) -> str:
    """Replace any password embedded in a URL (``scheme://user:pw@host``) with ``***``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def _scrub_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: blank values of secret-looking keys, scrub URL passwords in strings."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None and not isinstance(value, bool):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = scrub(value)
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stdout by default) with an ISO timestamp and the level."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
