"""The Route 53 client of ``dns_route53``: each call bounded by a timeout, retried on
transient errors (throttling, 5xx, I/O), and mapped to ``ActuationFailed`` with a message
that names the zone, the record and the likely cause."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agentaskit_dr.ports import ActuationFailed
from agentaskit_dr.retry import RetryCallState, last_error, retry_policy

log = structlog.get_logger("agentaskit_dr.actuators.dns_route53")

# Route 53 answers these with 400, yet they pass: a prior change still being processed,
# or the per-account rate limit of five requests a second.
_TRANSIENT_CODES = frozenset(
    {"Throttling", "ThrottlingException", "PriorRequestNotComplete", "RequestLimitExceeded",
     "ServiceUnavailable", "InternalError", "InternalFailure"}
)


def _boto() -> Any:
    """botocore's exceptions, imported when a call fails: an idle watchdog never loads the
    SDK (an ``except`` clause's expression is evaluated only when an exception reaches it)."""
    from botocore import exceptions  # type: ignore[import-untyped,unused-ignore]

    return exceptions


class BatchRejected(ActuationFailed):
    """Route 53 answered InvalidChangeBatch: bad records, or the marker moved since we read."""


class Route53Client:
    """Route 53 calls about one record of one hosted zone. ``timeout`` bounds each call,
    ``attempts`` and ``backoff`` its retries on transient errors. The SDK client is made
    on first use; ``close`` closes it, and the next call makes a new one."""

    def __init__(self, *, zone: str, record: str, endpoint_url: str | None, aws_region: str,
                 timeout: float, attempts: int, backoff: float) -> None:
        self._zone = zone
        self._record = record
        self._endpoint_url = endpoint_url
        self._aws_region = aws_region
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()

    async def close(self) -> None:
        """Close the SDK client (and its connections)."""
        async with self._client_lock:
            stack, self._exit_stack = self._exit_stack, contextlib.AsyncExitStack()
            self._client = None
            await stack.aclose()

    async def _route53(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                # Imported here: the SDK costs about 30 MiB, paid only when DNS is changed.
                from aiobotocore.config import AioConfig  # type: ignore[import-untyped,unused-ignore]
                from aiobotocore.session import get_session  # type: ignore[import-untyped,unused-ignore]

                # Retries are ours (tenacity, bounded): botocore's own would multiply them.
                config = AioConfig(
                    connect_timeout=self._timeout, read_timeout=self._timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                )
                try:
                    self._client = await self._exit_stack.enter_async_context(
                        get_session().create_client(
                            "route53", region_name=self._aws_region,
                            endpoint_url=self._endpoint_url, config=config,
                        )
                    )
                except (_boto().BotoCoreError, ValueError) as exc:
                    raise ActuationFailed(
                        f"cannot create a Route 53 client (endpoint_url={self._endpoint_url}, "
                        f"aws_region={self._aws_region}): {exc}"
                    ) from exc
            return self._client

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One Route 53 call, retried on transient errors; ActuationFailed when it fails."""
        method: Callable[..., Awaitable[dict[str, Any]]] = getattr(
            await self._route53(), operation)

        async def attempt() -> dict[str, Any]:
            async with asyncio.timeout(self._timeout):
                return await method(**params)

        def log_retry(state: RetryCallState) -> None:
            log.warning("route53_call_retry", operation=operation, zone=self._zone,
                        attempt=state.attempt_number, error=_describe_error(last_error(state)))

        retrying = retry_policy(_is_transient, attempts=self._attempts, backoff=self._backoff,
                                on_retry=log_retry)
        try:
            return await retrying(attempt)
        except (_boto().ClientError, _boto().BotoCoreError, TimeoutError) as exc:
            code = _error_code(exc)
            where = f"zone {self._zone} record {self._record}"
            tries = f" after {self._attempts} attempts" if _is_transient(exc) else ""
            message = f"Route 53 {operation} failed for {where}{tries}: {_describe_error(exc)}"
            if code == "NoSuchHostedZone":
                message += f" (hosted zone {self._zone} does not exist: check hosted_zone_id)"
            elif code in {"AccessDenied", "AccessDeniedException"}:
                message += (" (the credentials need route53:ListResourceRecordSets, "
                            "ChangeResourceRecordSets and GetChange on this zone)")
            if code == "InvalidChangeBatch":
                raise BatchRejected(message) from exc
            raise ActuationFailed(message) from exc



def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _boto().ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _error_code(exc) in _TRANSIENT_CODES or status == 429 or status >= 500
    boto = _boto()
    return isinstance(exc, boto.ConnectionError | boto.HTTPClientError | TimeoutError)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, _boto().ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def _describe_error(exc: BaseException | None) -> str:
    if isinstance(exc, _boto().ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error.get('Code', '?')} (HTTP {status}): {error.get('Message', '')}".strip()
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"
