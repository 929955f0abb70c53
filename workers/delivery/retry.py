"""When to try again: classifying answers, and how long to wait before the next attempt.

A delivery attempt that fails transiently is not retried inside the job: the job asks
RQ's scheduler for a new one (:func:`workers.delivery.job.enqueue_delivery` with a
delay), so a worker is never parked waiting for a server to come back.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from workers.delivery.errors import (
    AuthenticationFailed,
    ConflictPersists,
    DeliveryError,
    Rejected,
    ServerUnavailable,
    outcome_summary,
)

#: A Retry-After beyond this is taken as this: a server asking for days is misconfigured,
#: and the study must still be retried (or dead-lettered) in bounded time.
MAX_RETRY_AFTER = 3600.0


def is_transient_status(status: int) -> bool:
    """408 Request Timeout, 429 Too Many Requests and every 5xx are worth retrying."""
    return status in (408, 429) or status >= 500


def backoff_seconds(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1``: ``base * 2**(attempt-1)`` capped at ``cap``,
    scaled by a random factor in [0.5, 1] (so studies that failed together do not come
    back together), and never shorter than the server's Retry-After."""
    exponential = min(cap, base * 2.0 ** max(0, attempt - 1))
    draw = rng.random() if rng is not None else random.random()
    delay = exponential * (0.5 + 0.5 * draw)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; ``None`` if
    absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_for(response: httpx.Response, what: str) -> DeliveryError:
    """The error a failed answer stands for (the caller handles 409/412 with If-Match
    itself). ``what`` names the request, e.g. ``PUT ImagingStudy/x``."""
    status = response.status_code
    if is_transient_status(status):
        return ServerUnavailable(
            f"{what}: HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
        )
    summary = outcome_summary(response.content)
    if status in (401, 403):
        return AuthenticationFailed(f"{what}: HTTP {status} ({summary})")
    if status in (409, 412):
        return ConflictPersists(f"{what}: HTTP {status} ({summary})")
    return Rejected(f"{what}: HTTP {status}: {summary}", status)
