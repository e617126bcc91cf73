"""HTTP plumbing shared by the downloaders: status classification, retries and rate limits.

Retries are tenacity's; waits follow the server's Retry-After when it sends one (429/503/504) and
exponential backoff with jitter otherwise. 400 and 404 are final: they are answers, not faults.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import threading

import httpx
from pyrate_limiter import Duration, Limiter, Rate
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

USER_AGENT = "deepmolm-pipeline/0.1 (python-httpx)"
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransientHTTPError(Exception):
    """A response worth retrying; carries the server's Retry-After in seconds when it gave one."""

    def __init__(self, url: str, status: int | None, message: str, retry_after: float | None = None):
        self.url, self.status, self.retry_after = url, status, retry_after
        super().__init__(message)


class MalformedResponse(TransientHTTPError):
    """A 200 whose body cannot be read (bad JSON, cut-off SDF): retried, since it is usually transient."""

    def __init__(self, url: str, message: str):
        super().__init__(url, 200, message)


class PermanentHTTPError(Exception):
    """4xx other than the transient ones: retrying cannot help."""

    def __init__(self, url: str, status: int, message: str):
        self.url, self.status = url, status
        super().__init__(message)


RETRYABLE = (TransientHTTPError, httpx.TimeoutException, httpx.TransportError)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def check_response(response: httpx.Response) -> httpx.Response:
    status = response.status_code
    url = str(response.request.url)
    if status < 400:
        return response
    response.read()  # a streamed error body is small; read it for the message
    excerpt = response.text[:200].replace("\n", " ") if response.content else ""
    message = f"HTTP {status} from {url}: {excerpt}".rstrip(": ")
    if status in TRANSIENT_STATUS:
        raise TransientHTTPError(url, status, message, parse_retry_after(response.headers.get("Retry-After")))
    raise PermanentHTTPError(url, status, message)


class _WaitRetryAfterOrBackoff:
    def __init__(self, initial: float, maximum: float, retry_after_max: float):
        self.backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
        self.retry_after_max = retry_after_max

    def __call__(self, state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        return self.backoff(state)


def retrying(*, max_attempts: int, backoff_initial_s: float, backoff_max_s: float, retry_after_max_s: float) -> Retrying:
    return Retrying(
        stop=stop_after_attempt(max_attempts),
        wait=_WaitRetryAfterOrBackoff(backoff_initial_s, backoff_max_s, retry_after_max_s),
        retry=retry_if_exception_type(RETRYABLE),
        reraise=True,
    )


def http_client(timeout_s: float) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


_limiters: dict[tuple[str, float], Limiter] = {}
_limiters_lock = threading.Lock()


def shared_limiter(host: str, requests_per_second: float) -> Limiter:
    """One limiter per host and rate in this process, shared by every client and thread."""
    key = (host, requests_per_second)
    with _limiters_lock:
        if key not in _limiters:
            # An integer count per window: 5/s stays 5 per 1000 ms; 0.5/s becomes 1 per 2000 ms.
            if requests_per_second >= 1:
                rate = Rate(int(requests_per_second), Duration.SECOND)
            else:
                rate = Rate(1, int(1000 / requests_per_second))
            _limiters[key] = Limiter(rate)
        return _limiters[key]
