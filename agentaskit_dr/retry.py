"""The one retry policy of the package (tenacity): exponential backoff, a bounded number
of attempts (or none), and the last error re-raised as itself, never a ``RetryError``.

Used by the Kubernetes and Route 53 clients, the notifiers and the leadership keeper, so
that a change of policy (a jitter, a cap) is made in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

__all__ = ["RetryCallState", "last_error", "retry_policy"]


def retry_policy(
    retry_on: type[BaseException] | Callable[[BaseException], bool],
    *,
    attempts: int | None,
    backoff: float | Callable[[RetryCallState], float],
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """Retries what ``retry_on`` names (an exception class, or a predicate on the error).

    ``attempts``: how many tries in all; None retries for ever. ``backoff``: the first
    wait in seconds, doubled after each try up to 8 times that; or a function of the
    retry state giving each wait. ``on_retry`` is called before each sleep (to log it).
    """
    wait = backoff if callable(backoff) else wait_exponential(multiplier=backoff,
                                                               max=backoff * 8)
    retry = (retry_if_exception_type(retry_on) if isinstance(retry_on, type)
             else retry_if_exception(retry_on))
    return AsyncRetrying(
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        wait=wait,
        retry=retry,
        before_sleep=on_retry,
        reraise=True,
    )


def last_error(state: RetryCallState) -> BaseException | None:
    """The error of the attempt that just failed (for a retry's log line)."""
    return state.outcome.exception() if state.outcome else None
