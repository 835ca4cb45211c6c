"""The one place that configures logging: JSON events on stdout, secrets scrubbed.

Every line the daemon writes is JSON, including what libraries say through the standard
``logging`` module (aiohttp's server errors, asyncio's "Future exception was never
retrieved", ``warnings``): ``configure`` sends them through the same renderer, and
``route_asyncio_errors`` / ``route_uncaught`` make the event loop's and the process's
last-resort error reports structured events too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

from agentaskit_dr.redaction import mask_url_passwords

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.IGNORECASE)



def _scrub_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: blank values of secret-looking keys, scrub URL passwords in strings."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None and not isinstance(value, bool):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = mask_url_passwords(value)
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stdout by default) with an ISO timestamp and the level,
    for structlog events and standard ``logging`` records alike."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    out = stream or sys.stdout
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    render: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info, _scrub_secrets, structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            *render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)


def route_asyncio_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Report what the loop cannot hand to anyone (an exception nobody retrieved, a
    failing callback) as one ``asyncio_error`` event instead of stdlib text.

    A connection error nobody retrieved is a warning, not an error: asyncpg leaves one
    behind when a connection attempt is cancelled in the middle of its TLS negotiation
    (its ``TLSUpgradeProto`` fails a future nobody awaits any more with "unexpected
    connection_lost() call"), which a stop that cancels a probe mid-connect does.
    """

    def report(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        source = context.get("future") or context.get("task") or context.get("handle")
        leftover = isinstance(exception, ConnectionError) and "future" in context
        emit = structlog.get_logger("asyncio").warning if leftover else (
            structlog.get_logger("asyncio").error)
        emit("asyncio_error", message=context.get("message"),
             source=repr(source)[:500] if source is not None else None,
             exc_info=exception if isinstance(exception, BaseException) else None)

    loop.set_exception_handler(report)


def route_uncaught() -> None:
    """An exception that escapes the daemon or one of its threads is a ``crashed`` event,
    not a bare traceback on stderr."""
    previous = sys.excepthook

    def report(kind: type[BaseException], value: BaseException,
               traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, traceback)
            return
        structlog.get_logger(__name__).critical("crashed", exc_info=(kind, value, traceback))

    def report_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        structlog.get_logger(__name__).critical(
            "thread_crashed", thread=args.thread.name if args.thread else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = report
    threading.excepthook = report_thread
