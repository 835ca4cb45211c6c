"""A client for a watchdog's HTTP API, and the status table the CLI prints.

Every failure is an ``ApiError`` whose message names the URL and says what happened
(refused, timed out, unauthorized, the server's own error text), never the token.
"""

from __future__ import annotations

import json
import math
import ssl
from typing import Any

import aiohttp


class ApiError(Exception):
    """A call to the API failed; the message is one line for the operator.

    ``status`` is the HTTP status when the server answered, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Calls one watchdog's API at ``base_url`` (e.g. ``http://127.0.0.1:8787``).

    Each call opens and closes its own HTTP session: calls are rare (a CLI command, a
    peer poll every few seconds), and nothing is left to close.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if token is not None and (not token or not token.isprintable() or not token.isascii()
                                  or any(char.isspace() for char in token)):
            # The message must not echo the token.
            raise ValueError("token: must be non-empty printable ASCII without spaces")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        # None: https:// is verified against the system's CAs.
        self._ssl: ssl.SSLContext | bool = ssl_context or True

    async def get(self, path: str) -> dict[str, Any]:
        """GET ``path``; the decoded JSON object of a 2xx answer."""
        return await self._request("GET", path, None)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``; the decoded JSON object of a 2xx answer."""
        return await self._request("POST", path, body)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, url, json=body, headers=headers,
                                ssl=self._ssl) as response,
            ):
                status = response.status
                content_type = response.content_type
                raw = await response.read()
        except TimeoutError:
            raise ApiError(f"{method} {url}: no answer within {self._timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiError(
                f"{method} {url}: the server's certificate does not verify "
                f"({exc.certificate_error}); pass --ca-file with the CA that signed it"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise ApiError(f"{method} {url}: TLS handshake failed ({exc.os_error}); is it "
                           "https:// and does the server take this client?") from None
        except aiohttp.ClientConnectorError as exc:
            why = ("connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
                   else str(exc.os_error) or type(exc.os_error).__name__)
            raise ApiError(
                f"{method} {url}: cannot connect ({why}); is the watchdog running "
                "and is the URL right?"
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise ApiError(f"{method} {url}: request failed: {exc}") from None
        return _decode(method, url, status, content_type, raw)


def _decode(method: str, url: str, status: int, content_type: str, raw: bytes) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or an ``ApiError`` carrying the server's message."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        payload = None
    server_says = payload.get("error") if isinstance(payload, dict) else None
    if status == 401:
        raise ApiError(
            f"{method} {url}: 401 unauthorized: the token was refused; check --token-file "
            "against the watchdog's api.token_file", status
        )
    if status >= 400:
        detail = server_says if isinstance(server_says, str) else f"({content_type} body)"
        raise ApiError(f"{method} {url}: {status} {detail}", status)
    if not isinstance(payload, dict):
        got = "a non-JSON" if payload is None and raw.strip() else "an unexpected"
        raise ApiError(
            f"{method} {url}: {status} with {got} body ({content_type}), expected a JSON object",
            status,
        )
    return payload


# ---------------------------------------------------------------- status table

# Shown first, in this order, when present; any other keys follow alphabetically.
_LEADING_KEYS = (
    "region", "primary_region", "role", "phase", "paused", "verdict", "verdicts",
    "primary_refusal", "failover_held_by",
    "lock_holder", "epoch", "lag_bytes", "lag_seconds", "last_failover",
)


def render_status(status: dict[str, Any]) -> str:
    """``status`` as an aligned two-column table; nested mappings and lists are indented.

    Works on any JSON object: missing keys are simply not shown, unknown ones are.
    """
    rows: list[tuple[str, str]] = []
    _rows(status, 0, rows)
    if not rows:
        return "(empty status)"
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def _rows(mapping: dict[str, Any], depth: int, rows: list[tuple[str, str]]) -> None:
    indent = "  " * depth
    keys = [key for key in _LEADING_KEYS if key in mapping] if depth == 0 else []
    keys += sorted((key for key in mapping if key not in keys), key=str)
    for key in keys:
        value = mapping[key]
        label = indent + str(key)
        if isinstance(value, dict) and value:
            rows.append((label, ""))
            _rows(value, depth + 1, rows)
        elif isinstance(value, list) and value and not all(_is_scalar(item) for item in value):
            rows.append((label, ""))
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    rows.append((f"{indent}  [{index}]", ""))
                    _rows(item, depth + 2, rows)
                else:
                    rows.append((f"{indent}  [{index}]", _scalar(item)))
        else:
            rows.append((label, _scalar(value)))


def _is_scalar(value: object) -> bool:
    return not isinstance(value, dict | list)


def _scalar(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_scalar(item) for item in value) or "-"
    if isinstance(value, dict):
        return "-"
    return str(value)
