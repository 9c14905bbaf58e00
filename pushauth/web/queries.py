"""The alert and audit filters, read from a query string the same way for the admin API and the console
(whose filters live in the page's URL, so a reload or a shared link shows the same view). A filter that
is not valid is a 422 `invalid_query`, never silently ignored: an analyst must not think a view is filtered
when it is not."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from pushauth import clock
from pushauth.alerts.store import SEVERITY_RANK, AlertQuery
from pushauth.clock import rfc3339
from pushauth.errors import Unprocessable

STATUSES: Final = ("open", "acked")
# The console's time ranges: how far back, in seconds.
RANGES: Final[dict[str, int]] = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
_RFC3339: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_WORD: Final = re.compile(r"[a-z0-9_.-]{1,64}")
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _word(request: web.Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and not _WORD.fullmatch(value):
        raise Unprocessable(f"{name} must be lower-case a-z 0-9 _ . - (max 64)", code="invalid_query")
    return value


def _time(request: web.Request, name: str) -> str | None:
    value = request.query.get(name) or None
    if value is not None and not _RFC3339.fullmatch(value):
        raise Unprocessable(f"{name} must be an RFC 3339 UTC time like 2026-01-31T09:00:00Z",
                            code="invalid_query")
    return value


def alert_query(request: web.Request, *, uid: str | None, default_status: str | None) -> AlertQuery:
    """status, severity (comma-separated), kind, app, since / until (RFC 3339) or range (1h 24h 7d 30d)."""
    status = request.query.get("status", default_status or "") or None
    if status not in (None, *STATUSES):
        raise Unprocessable("status must be open or acked", code="invalid_query")
    severity = None
    if request.query.get("severity"):
        severity = frozenset(request.query["severity"].split(","))
        if not severity <= SEVERITY_RANK.keys():
            raise Unprocessable(f"severity must be among {', '.join(SEVERITY_RANK)}", code="invalid_query")
    since = _time(request, "since")
    span = request.query.get("range") or None
    if span is not None:
        if span not in RANGES:
            raise Unprocessable(f"range must be one of {', '.join(RANGES)}", code="invalid_query")
        # the clock the alert times were written by (pushauth.clock), not the wall clock beside it
        since = max(since or "", rfc3339(clock.now() - RANGES[span]))
    return AlertQuery(status=status, uid=uid, severity=severity, kind=_word(request, "kind"),
                      app=_word(request, "app"), since=since, until=_time(request, "until"))


def audit_cursor(request: web.Request) -> str | None:
    before = request.query.get("before") or None
    if before is not None and not _STREAM_ID.fullmatch(before):
        raise Unprocessable("before must be an audit entry id", code="invalid_query")
    return before
