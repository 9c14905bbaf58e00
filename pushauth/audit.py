"""The audit trail: every policy decision and every security-team action, as who, what, when, why.

One Redis stream (`{audit}:stream`, capped), newest read first by the admin API (`GET /v1/audit`), and the
same record as a structured log line (`audit`) for whoever ships logs to a SIEM. Records never hold a
secret: codes and tokens are named by what they are for, never by their value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog

from pushauth import clock
from pushauth.clock import rfc3339
from pushauth.store import KeySpace
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger("pushauth.audit")

MAXLEN = 1_000_000
# How far back a filtered read looks.
SCAN_LIMIT = 20_000
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Audit:
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace) -> None:
        self._redis = redis
        self._key = keyspace.audit

    async def record(self, what: str, *, user: str, who: str, why: str = "", **details: Any) -> None:
        """Write one record. A Redis outage does not fail the request it describes (the decision itself
        was taken, or refused, already): the record then exists only as the log line."""
        at = clock.now()
        log.info("audit", what=what, user=user, who=who, why=why, **details)
        entry: dict[Any, Any] = {"at": at, "what": what, "user": user, "who": who, "why": why}
        if details:
            entry["details"] = _encode(details)
        try:
            await self._redis.xadd(self._key, entry, maxlen=MAXLEN, approximate=True)
        except STORE_DOWN_ERRORS as exc:
            log.warning("audit_store_unavailable", what=what, error=type(exc).__name__)

    async def page(self, *, user: str | None, limit: int, who: str | None = None, what: str | None = None,
                   before: str | None = None) -> AuditPage:
        """Newest first, up to `limit` records matching every filter given, from before the entry id
        `before` (the last id of the previous page) when given, and where the read stopped: a filtered read
        looks back SCAN_LIMIT records at most, and a page that is short because the scan reached it says so
        (`partial`), with the id to read on from, so a reader is never told "nothing matches" about records
        that were not looked at."""
        out: list[dict[str, Any]] = []
        last = f"({before}" if before else "+"
        scanned = 0
        older: str | None = None
        while len(out) < limit and scanned < SCAN_LIMIT:
            rows = cast(list[tuple[str, dict[str, str]]],
                        await self._redis.xrevrange(self._key, max=last, count=500))
            if not rows:
                older = None
                break
            scanned += len(rows)
            for entry_id, f in rows:
                older = entry_id
                if ((user is None or f.get("user") == user) and (who is None or f.get("who") == who)
                        and (what is None or f.get("what") == what)):
                    item: dict[str, Any] = {"id": entry_id, "at": rfc3339(int(f.get("at", "0"))),
                                            "what": f.get("what", ""), "user": f.get("user", ""),
                                            "who": f.get("who", ""), "why": f.get("why", "")}
                    if f.get("details"):
                        item["details"] = _decode(f["details"])
                    out.append(item)
                    if len(out) >= limit:
                        break
            last = f"({rows[-1][0]}"
        return AuditPage(out, older, partial=len(out) < limit and older is not None, scanned=scanned)


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of the trail: its entries, newest first; `older`, the id to read on from (`before`), or None
    when the read reached the start of the trail; `partial` when the read stopped at SCAN_LIMIT records
    before it filled the page (older records were not looked at); `scanned`, how many records it read."""

    entries: list[dict[str, Any]]
    older: str | None
    partial: bool
    scanned: int
