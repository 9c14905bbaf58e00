"""What the security team (and, for a few signals, the login flow) sees of a user and does to one: the
user view, lock, unlock (and lift a suspension), revoke a device, account policy flags (exempt, shared),
remembered browsers, temporary access codes. Every action is audited with who took it (the admin token's
hash prefix, or the application)."""

from __future__ import annotations

import secrets
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from pushauth import clock, ids
from pushauth.accounts import scripts as lua
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.clock import rfc3339
from pushauth.codes.views import method_views
from pushauth.config import Settings
from pushauth.crypto.secrets import sha256_hex
from pushauth.devices.service import Devices
from pushauth.errors import Conflict, NotFound, RateLimited, Unprocessable
from pushauth.store import KeySpace, reads
from pushauth.store.durability import ReplicaAcks

RECENT_CHALLENGES = 20
_decode = msgspec.json.Decoder().decode


def _time(raw: str | None) -> str | None:
    return rfc3339(int(raw)) if raw and raw.isdigit() and int(raw) > 0 else None


class Accounts:
    """The security team's (and, for access codes, the login flow's) service for one user's account.

    Owns, in the user's slot: the account state on the user hash (`{uid}:user`: lock, suspension, the
    exempt / shared flags, the counts an unlock restarts), the temporary access code (`{uid}:acode`) and
    the remembered browsers (`{uid}:remembered`); it reads the user's devices, recent challenges and alerts
    for the user view. Every change goes through one of its scripts (`pushauth.accounts.scripts`: lock_user,
    unlock_user, set_policy, issue_access_code, verify_access_code, and user_blocks for the view), which
    include the detection ledger; the alerts they raise are announced through `AlertStore.announce`, and
    every action is written to the audit trail. Device revocation is delegated to `Devices`.

    Called by the admin API (`pushauth.web.admin`), the console (`pushauth.web.console`) and the login
    flow (`pushauth.web.login_flow`: checking access codes, forgetting remembered browsers)."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings, devices: Devices,
                 alerts: AlertStore, audit: Audit) -> None:
        self._redis = redis
        self._acks = ReplicaAcks.from_settings(settings.store)
        self._ks = keyspace
        self._settings = settings
        self._devices = devices
        self._alerts = alerts
        self._audit = audit

    async def _uid(self, user: str) -> str:
        uid = await self._devices.uid_for(user)
        if uid is None:
            raise NotFound("no such user (no phone was ever enrolled)")
        return uid

    async def search(self, term: str, *, limit: int, scan_max: int = 100_000) -> tuple[list[str], bool]:
        """User names that start with `term` (first) or contain it (then), alphabetical within each, for the
        console's search, and whether every user was looked at. Names are stored only in each user's own
        hash (the index is by hash), so this scans users' hashes: up to `scan_max` of them, which keeps one
        search to a second or so; False then, so the console can say the answer may be incomplete."""
        term = term.casefold()
        names: list[str] = []
        keys: list[str] = []
        pattern = f"{self._ks.prefix}:{{*}}:user"

        async def read() -> None:  # a round trip per 500 users, not per user
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "name")
            names.extend(n for n in cast(list[str | None], await pipe.execute()) if n)
            keys.clear()

        scanned, complete = 0, True
        async for key in self._redis.scan_iter(match=pattern, count=1000, _type="hash"):
            if scanned >= scan_max:
                complete = False  # a user beyond the bound: not looked at
                break
            keys.append(key)
            scanned += 1
            if len(keys) >= 500:
                await read()
        await read()
        hits = sorted({n for n in names if term in n})
        return sorted(hits, key=lambda n: not n.startswith(term))[:limit], complete

    async def view(self, user: str) -> dict[str, Any]:
        uid = await self._uid(user)
        u = await reads.hgetall(self._redis, self._ks.user(uid))
        dids = sorted(await reads.smembers(self._redis, self._ks.devices(uid)))
        cids = cast(list[str], await self._redis.zrevrange(self._ks.recent(uid), 0, RECENT_CHALLENGES - 1))
        pipe = self._redis.pipeline(transaction=False)
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
        remembered = await self._remembered(uid)
        paused_until = int(u.get("paused_until", "0") or 0)
        locked = u.get("locked") == "1"
        suspended = u.get("suspended") == "1"
        pending_devices = await self._pending_devices(uid)
        return {
            "user": user, "devices": devices,
            "otp_methods": await method_views(self._redis, self._ks, uid),  # offline codes (TOTP)
            "locked": locked, "suspended": suspended,
            "locked_at": _time(u.get("locked_at")) if locked else None,
            "locked_reason": u.get("locked_why") if locked else None,
            "locked_until": _time(u.get("locked_until")) if locked else None,
            "suspended_at": _time(u.get("susp_at")) if suspended else None,
            "suspended_reason": u.get("susp_why") if suspended else None,
            "suspended_until": _time(u.get("susp_until")) if suspended else None,
            "consecutive_failures": int(u.get("fails", "0")),
            "policy": self._settings.policy.account_kind(user, u),
            "paused_until": rfc3339(paused_until) if paused_until > now else None,
            "prompts_refused_while_paused": int(u.get("paused_refused", "0")),
            "remembered_browsers": remembered,
            "recent_challenges": recent,
            "open_alerts": [a["id"] for a in open_alerts],
            "pending_devices": pending_devices,
            "blocks": await self._blocks(uid, u, now),
        }

    async def _pending_devices(self, uid: str) -> list[dict[str, Any]]:
        """Further phones waiting for approval on one of the user's phones (their records expire)."""
        dids = sorted(await reads.smembers(self._redis, self._ks.new_devices(uid)))
        pipe = self._redis.pipeline(transaction=False)
        for did in dids:
            pipe.hgetall(self._ks.device(uid, did))
        out = []
        for did, d in zip(dids, cast(list[dict[str, str]], await pipe.execute()), strict=True):
            if d.get("st") == "pending":
                out.append({"id": did, "name": d.get("name", ""), "platform": d.get("platform", ""),
                            "created_at": _time(d.get("created")),
                            "enrolled_from_ip": d.get("enroll_ip") or None,
                            "approval_challenge_id": d.get("appr")})
        return out

    async def _blocks(self, uid: str, u: dict[str, str], now: int) -> list[dict[str, Any]]:
        """Everything that refuses the user now, each with its end (null: until the security team acts):
        the lock, the suspension, the phone's own pause, the push-bombing window, the wrong-access-code and
        wrong-one-time-code windows. What `unlock` ends (all but the pause) is what a service desk needs to
        see."""
        blocks: list[dict[str, Any]] = []
        if u.get("locked") == "1":
            blocks.append({"kind": "locked", "since": _time(u.get("locked_at")),
                           "until": _time(u.get("locked_until")), "reason": u.get("locked_why") or None})
        if u.get("suspended") == "1":
            blocks.append({"kind": "suspended", "since": _time(u.get("susp_at")),
                           "until": _time(u.get("susp_until")), "reason": u.get("susp_why") or None})
        paused = int(u.get("paused_until", "0") or 0)
        if paused > now:
            blocks.append({"kind": "paused", "since": _time(u.get("paused_at")), "until": rfc3339(paused),
                           "reason": "paused by the user's phone"})
        # the windows are counted by the ledger's own rule (window_block), as the refusals are
        policy = self._settings.policy
        windows = await lua.user_blocks(self._redis, self._ks.user(uid),
                                        self._alerts.ledger_args(uid, "", now),
                                        code_window_s=policy.access_code_window_s,
                                        code_attempts=policy.access_code_attempts,
                                        otp_window_s=self._settings.codes.window_s,
                                        otp_attempts=self._settings.codes.attempts)
        for kind, since, until, reason in (
                ("push_bombing", windows.bombing_since, windows.bombing_until, "too many sign-in prompts"),
                ("access_code_attempts", windows.codes_since, windows.codes_until,
                 "too many wrong access codes"),
                ("otp_attempts", windows.otp_since, windows.otp_until, "too many wrong one-time codes")):
            if until:
                blocks.append({"kind": kind, "since": rfc3339(since), "until": rfc3339(until),
                               "reason": reason})
        return blocks

    async def unlock(self, user: str, *, by: str, what: str = "all") -> dict[str, bool]:
        """Lift the lock, the suspension or both, and end the blocks that would refuse the user at once
        afterwards (the push-bombing window, the wrong-access-code window): the audit trail says which."""
        if what not in ("all", "lock", "suspension"):
            raise Unprocessable("what must be all, lock or suspension", code="invalid")
        uid = await self._uid(user)
        policy = self._settings.policy
        ended = await lua.unlock_user(self._redis, self._ks.user(uid),
                                      self._alerts.ledger_args(uid, user, clock.now()), by=by, what=what,
                                      code_window_s=policy.access_code_window_s,
                                      code_attempts=policy.access_code_attempts, acks=self._acks)
        cleared = {"was_locked": ended.was_locked, "was_suspended": ended.was_suspended,
                   "push_bombing_block_ended": ended.push_bombing_block_ended,
                   "access_code_block_ended": ended.access_code_block_ended}
        await self._audit.record("unlocked", user=user, who=by, why=what, **cleared,
                                 counters_reset="push-bombing window, wrong access codes")
        return cleared

    async def lock(self, user: str, *, by: str) -> None:
        """Lock now: pending prompts are denied, and nothing signs the user in (no policy, no exemption)
        until the security team unlocks them. A user who never enrolled (a shared mailbox, say) can be
        locked too."""
        uid = await self._devices.uid_for(user, create=True)
        assert uid is not None
        locked = await lua.lock_user(self._redis, self._ks.user(uid),
                                     self._alerts.ledger_args(uid, user, clock.now()), by=by, acks=self._acks)
        await self._alerts.announce(uid, locked.notes)
        await self._audit.record("locked", user=user, who=by, why="security team")

    async def revoke_device(self, user: str, device_id: str, *, by: str) -> None:
        uid = await self._uid(user)
        if ids.device_uid(device_id) != uid:
            raise NotFound("no such device for this user")
        await self._devices.revoke(uid, device_id, by=by)
        await self._audit.record("device_revoked", user=user, who=by, why="lost or replaced phone",
                                 device_id=device_id)

    async def allow_revoke(self, user: str, device_id: str, *, by: str) -> None:
        """Let a phone still inside its cool-down revoke the user's older phones (a replaced phone whose
        owner the service desk has checked)."""
        uid = await self._uid(user)
        if ids.device_uid(device_id) != uid:
            raise NotFound("no such device for this user")
        await self._devices.allow_revoke(uid, device_id)
        await self._audit.record("device_may_revoke", user=user, who=by, why="security team",
                                 device_id=device_id)

    # -- account policy ----------------------------------------------------------------------------------

    async def set_policy(self, user: str, *, exempt: bool | None, shared: bool | None, by: str,
                         force: bool = False) -> str | None:
        """Mark or clear exempt / shared. Refused (409 `containment_active`) while the account is locked,
        suspended, push-bombed or has an open critical alert, unless `force` (which raises a high alert)."""
        uid = await self._devices.uid_for(user, create=True)
        assert uid is not None

        def flag(value: bool | None) -> str:
            return "" if value is None else "1" if value else "0"

        res = await lua.set_policy(self._redis, self._ks.user(uid),
                                   self._alerts.ledger_args(uid, user, clock.now()), exempt=flag(exempt),
                                   shared=flag(shared), force="1" if force else "", by=by, acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        active = [a for a in str(res.detail[0]).split(",") if a]
        if res.result is lua.PolicySet.REFUSED:
            await self._audit.record("policy_refused", user=user, who=by, why="containment active",
                                     exempt=exempt, shared=shared, active=active)
            raise Conflict(f"the account is contained ({', '.join(active)}): marking it exempt or shared now "
                           "would lift that. Deal with the incident first, or send force: true (raises a "
                           "high alert)", code="containment_active")
        await self._audit.record("policy_set", user=user, who=by, why="security team", exempt=exempt,
                                 shared=shared, forced_over=active or None)
        return self._settings.policy.account_kind(user, await reads.hgetall(self._redis, self._ks.user(uid)))

    # -- remembered browsers -----------------------------------------------------------------------------

    async def _remembered(self, uid: str) -> list[dict[str, Any]]:
        now = clock.now()
        raw = await reads.hgetall(self._redis, self._ks.remembered(uid))
        out = []
        for tid, value in sorted(raw.items()):
            r = _decode(value)
            if int(r.get("exp", 0)) > now:
                out.append({"id": tid, "app": r.get("app"), "created_at": rfc3339(int(r["created"])),
                            "expires_at": rfc3339(int(r["exp"]))})
        return out

    async def revoke_remembered(self, user: str, token_id: str | None, *, by: str, why: str) -> int:
        """One remembered browser (`token_id`), or all of the user's. Returns how many were revoked."""
        uid = await self._devices.uid_for(user)
        if uid is None:
            return 0
        key = self._ks.remembered(uid)
        n = int(await self._redis.hdel(key, token_id)) if token_id else int(await self._redis.hlen(key))
        if token_id is None:
            await self._redis.delete(key)
        await self._audit.record("remembered_revoked", user=user, who=by, why=why, token_id=token_id or "all",
                                 revoked=n)
        return n

    # -- temporary access codes --------------------------------------------------------------------------

    async def issue_access_code(self, user: str, *, by: str) -> tuple[str, int]:
        # Staff who never had a phone are who access codes are for: no enrollment needed first.
        uid = await self._devices.uid_for(user, create=True)
        assert uid is not None
        code = access_code()
        expires = clock.now() + self._settings.policy.access_code_ttl_s
        issued = await lua.issue_access_code(self._redis, self._ks.user(uid),
                                             self._alerts.ledger_args(uid, user, clock.now()),
                                             code_hash=sha256_hex(_normal(code)), expires_at=expires, by=by,
                                             acks=self._acks)
        await self._alerts.announce(uid, issued.notes)
        await self._audit.record("access_code_issued", user=user, who=by, why="no phone at hand",
                                 expires_at=rfc3339(expires), counters_reset="wrong access codes")
        return code, expires

    async def verify_access_code(self, user: str, code: str, *, by: str) -> tuple[bool, str]:
        """(valid, why): why is "" when valid, else "invalid" (wrong, used or expired), "locked",
        "suspended" or "unknown_user"."""
        uid = await self._devices.uid_for(user)
        if uid is None:
            await self._audit.record("access_code_refused", user=user, who=by, why="unknown user")
            return False, "unknown_user"
        policy = self._settings.policy
        res = await lua.verify_access_code(self._redis, self._ks.user(uid),
                                           self._alerts.ledger_args(uid, user, clock.now()),
                                           code_hash=sha256_hex(_normal(code)),
                                           attempts=policy.access_code_attempts,
                                           window_s=policy.access_code_window_s,
                                           grant_s=self._settings.enrollment.access_code_grant_s,
                                           acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        what = res.result.value
        await self._audit.record("access_code_used" if what == "valid" else "access_code_refused",
                                 user=user, who=by, why=what)
        if res.result is lua.Verified.RATE_LIMITED:
            raise RateLimited("too many wrong access codes for this user; try again later",
                              retry_after_s=int(res.detail[0]))
        return (True, "") if res.result is lua.Verified.VALID else (False, what)


# Easy to read out over a phone: no 0/O, 1/I/L; 12 characters of 31 is ~59 bits, for a code that lives an
# hour, works once, and is locked out after a handful of wrong tries.
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def access_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def _normal(code: str) -> str:
    """What a person types: any case, with or without the dashes and spaces."""
    return code.replace("-", "").replace(" ", "").upper()
