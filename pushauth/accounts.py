"""What the security team sees of a user and does to one: the user view, lock, unlock (and lift a
suspension), revoke a device. Every action names who took it (the admin token's hash prefix)."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from pushauth import clock, ids
from pushauth.alerts.store import AlertStore
from pushauth.clock import rfc3339
from pushauth.devices import Devices
from pushauth.errors import NotFound, Unprocessable
from pushauth.store import KeySpace, reads
from pushauth.store import scripts as lua

RECENT_CHALLENGES = 20
_decode = msgspec.json.Decoder().decode


def _time(raw: str | None) -> str | None:
    return rfc3339(int(raw)) if raw and raw.isdigit() and int(raw) > 0 else None


class Accounts:
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, devices: Devices,
                 alerts: AlertStore) -> None:
        self._r = redis
        self._ks = keyspace
        self._devices = devices
        self._alerts = alerts

    async def _uid(self, user: str) -> str:
        uid = await self._devices.uid_for(user)
        if uid is None:
            raise NotFound("no such user (no phone was ever enrolled)")
        return uid

    async def view(self, user: str) -> dict[str, Any]:
        uid = await self._uid(user)
        u = await reads.hgetall(self._r, self._ks.user(uid))
        dids = sorted(await reads.smembers(self._r, self._ks.devices(uid)))
        cids = cast(list[str], await self._r.zrevrange(self._ks.recent(uid), 0, RECENT_CHALLENGES - 1))
        pipe = self._r.pipeline(transaction=False)
        for did in dids:
            pipe.hgetall(self._ks.device(uid, did))
        for cid in cids:
            pipe.hgetall(self._ks.challenge(uid, cid))
        rows = cast(list[dict[str, str]], await pipe.execute())
        now = clock.now()
        devices = []
        for did, d in zip(dids, rows[:len(dids)], strict=True):
            provider = d.get("pprov") or "none"
            push_state = ("none" if provider == "none" or not d.get("ptok")
                          else "stale" if d.get("ptok_stale") == "1" else "ok")
            devices.append({"id": did, "name": d.get("name", ""), "platform": d.get("platform", ""),
                            "status": d.get("st", ""), "created_at": _time(d.get("created")),
                            "push": {"provider": provider, "state": push_state},
                            "enrolled_from_ip": d.get("enroll_ip") or None})
        recent = []
        for cid, c in zip(cids, rows[len(dids):], strict=True):
            if not c:
                continue  # expired out of Redis
            status = c.get("st", "")
            if status == "pending" and int(c.get("exp", "0")) <= now:
                status = "expired"
            item: dict[str, Any] = {"id": cid, "app": c.get("app", ""), "status": status,
                                    "created_at": _time(c.get("iat")), "decided_at": _time(c.get("dat"))}
            if c.get("rsn") and c["rsn"] != "-":
                item["reason"] = c["rsn"]
            if c.get("dev"):
                item["device"] = c["dev"]
            if c.get("ctx"):
                item["context"] = _decode(c["ctx"])
            if c.get("aip") and c["aip"] != "-":
                item["phone_ip"] = c["aip"]
            if c.get("revoked"):
                item["revoked"] = c["revoked"]
            if c.get("late"):
                item["late_answer"] = c["late"].split(":", 1)[0]
            recent.append(item)
        open_alerts = await self._alerts.alerts(status="open", uid=uid, limit=50)
        locked = u.get("locked") == "1"
        suspended = u.get("suspended") == "1"
        return {
            "user": user, "devices": devices, "locked": locked, "suspended": suspended,
            "locked_at": _time(u.get("locked_at")) if locked else None,
            "locked_reason": u.get("locked_why") if locked else None,
            "locked_until": _time(u.get("locked_until")) if locked else None,
            "suspended_at": _time(u.get("susp_at")) if suspended else None,
            "suspended_reason": u.get("susp_why") if suspended else None,
            "suspended_until": _time(u.get("susp_until")) if suspended else None,
            "consecutive_failures": int(u.get("fails", "0")),
            "recent_challenges": recent,
            "open_alerts": [a["id"] for a in open_alerts],
        }

    async def unlock(self, user: str, *, by: str, what: str = "all") -> dict[str, bool]:
        if what not in ("all", "lock", "suspension"):
            raise Unprocessable("what must be all, lock or suspension", code="invalid")
        uid = await self._uid(user)
        res = await lua.UNLOCK_USER(self._r, [self._ks.user(uid)], [clock.now(), by, what])
        return {"was_locked": bool(res[0]), "was_suspended": bool(res[1])}

    async def lock(self, user: str, *, by: str) -> None:
        uid = await self._uid(user)
        res = await lua.LOCK_USER(self._r, [self._ks.user(uid)],
                                  [*self._alerts.ledger_args(uid, user, clock.now()), by])
        await self._alerts.announce(uid, res[1])

    async def revoke_device(self, user: str, device_id: str, *, by: str) -> None:
        uid = await self._uid(user)
        if ids.device_uid(device_id) != uid:
            raise NotFound("no such device for this user")
        await self._devices.revoke(uid, device_id, by=by)
