"""Credential redaction, in one place: what may be shown of a URL, DSN or error message.

- :func:`redact_url` / :func:`redact`: a URL's (or DSN's) password masked, for config
  values and their dumps;
- :func:`mask_url_passwords`: every ``scheme://user:password@`` in free text (log lines);
- :func:`mask_secrets`: known secret values (a password, a token) masked in a message;
- :func:`without_userinfo`: a URL with no ``user:password@`` at all, fit to show.

Each masks with :data:`REDACTED`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "***"

#: ``key=value`` secrets: DSN query parameters and libpq keyword strings alike.
_SECRET_PARAMETER = re.compile(r"((?:ssl)?password\s*=\s*)[^&\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with any password in a URL's userinfo or a ``password=`` parameter masked.

    Works on strings that are not valid URLs too (it is used on error input), and
    errs towards masking more: the userinfo ends at the last ``@`` before the query.
    """
    text = _SECRET_PARAMETER.sub(rf"\1{REDACTED}", text)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return text
    authority_end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    userinfo, at, remainder = rest[:authority_end].rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:{REDACTED}@{remainder}{rest[authority_end:]}"


def redact(value: Any) -> Any:
    """A copy of a JSON-like ``value`` (a ``model_dump``) with every URL password masked."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")


def mask_url_passwords(text: str) -> str:
    """Replace any password embedded in a URL (``scheme://user:pw@host``) with ``***``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def mask_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***`` (empty ones skipped)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def url_password(url: str) -> str | None:
    """The password written in ``url``'s userinfo, if any."""
    from yarl import URL  # imported here: logs.py imports this module at start-up

    return URL(url).password


def without_userinfo(url: str) -> str:
    """The URL without any ``user:password@`` part, fit to show and log."""
    from yarl import URL

    return str(URL(url).with_user(None))
