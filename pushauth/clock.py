"""Time: integer Unix seconds inside pushauth and its tokens, RFC 3339 UTC in JSON."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence


def rfc3339(ts: int) -> str:
    # time.strftime on a struct_time: several times cheaper than building a datetime, and this runs
    # several times per request.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def now() -> int:
    """Integer Unix seconds: the one clock every decision about a challenge, a signature's `iat` or a
    detection window reads (called as `clock.now()`, so a test can move time by replacing it)."""
    return int(time.time())


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from an HTTP Retry-After header: delta seconds or an HTTP date (RFC 9110 10.2.3).
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay_s(schedule: Sequence[float], attempt: int, retry_after: float | None) -> float:
    """The wait before retry `attempt` (0-based) of a delivery: the schedule's step, or the receiver's
    Retry-After when that is longer, but never past the schedule's longest step (a receiver cannot park a
    delivery beyond what the schedule would ever wait). One rule for the alert webhooks
    (pushauth/alerts/delivery.py) and the OpenID notifications (pushauth/oidc/outbox.py)."""
    return max(float(schedule[attempt]), min(retry_after or 0.0, float(max(schedule))))
