"""Time: integer Unix seconds inside pushauth and its tokens, RFC 3339 UTC in JSON."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
