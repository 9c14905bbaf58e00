"""Time: integer Unix seconds inside pushauth and its tokens, RFC 3339 UTC in JSON."""

from __future__ import annotations

import time


def rfc3339(ts: int) -> str:
    # time.strftime on a struct_time: several times cheaper than building a datetime, and this runs
    # several times per request.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def now() -> int:
    """Integer Unix seconds: the one clock every decision about a challenge, a signature's `iat` or a
    detection window reads (called as `clock.now()`, so a test can move time by replacing it)."""
    return int(time.time())
