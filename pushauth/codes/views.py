"""Reading a user's one-time-code methods as the security team sees them: never the seed. Light on
imports, so the user view (`pushauth.accounts.service`) can list a user's methods beside their phones."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from pushauth.clock import rfc3339
from pushauth.store import KeySpace, reads


async def records(redis: aioredis.Redis, keyspace: KeySpace, uid: str) -> list[tuple[str, dict[str, str]]]:
    """(method id, its hash) for each of the user's methods still stored (a pending one may have expired)."""
    mids = sorted(await reads.smembers(redis, keyspace.otp_methods(uid)))
    if not mids:
        return []
    pipe = redis.pipeline(transaction=False)
    for mid in mids:
        pipe.hgetall(keyspace.otp_method(uid, mid))
    rows = cast(list[dict[str, str]], await pipe.execute())
    return [(mid, row) for mid, row in zip(mids, rows, strict=True) if row]


async def method_views(redis: aioredis.Redis, keyspace: KeySpace, uid: str) -> list[dict[str, Any]]:
    rows = await records(redis, keyspace, uid)
    # A pushauth phone's own seed works only while that phone is active (use_code.lua checks it at each
    # use); the view says so too, rather than showing the method of a revoked phone as active.
    phones = [m["did"] for _, m in rows if m.get("did")]
    device_states: dict[str, str | None] = {}
    if phones:
        pipe = redis.pipeline(transaction=False)
        for did in phones:
            pipe.hget(keyspace.device(uid, did), "st")
        device_states = dict(zip(phones, cast(list[str | None], await pipe.execute()), strict=True))
    out = []
    for mid, m in rows:
        shown = view(mid, m)
        if m.get("did") and shown["status"] == "active" and device_states.get(m["did"]) != "active":
            shown["status"] = "device_revoked"
        out.append(shown)
    return out


def _time(raw: str | None) -> str | None:
    return rfc3339(int(raw)) if raw and raw.isdigit() and int(raw) > 0 else None


def view(method_id: str, m: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": method_id, "type": m.get("typ") or "totp", "kind": m.get("kind", ""),
                           "status": m.get("st", ""), "name": m.get("name", ""),
                           "algorithm": m.get("alg", "SHA1"), "digits": int(m.get("dig", "6")),
                           "period": int(m.get("per", "30")), "created_at": _time(m.get("created")),
                           "activated_at": _time(m.get("act")), "last_used_at": _time(m.get("used"))}
    if m.get("serial"):
        out["serial"] = m["serial"]
    if m.get("did"):
        out["device"] = m["did"]
    if m.get("st") == "pending":
        out["expires_at"] = _time(m.get("exp"))
    return out
