"""Phones: enrollment codes, registration with proof of possession, request authentication, revocation.

Enrollment is two steps. The security team or the login flow asks for a one-time code for a user
(`create_enrollment`); the code travels to the phone in a QR code. The phone makes a P-256 key pair and
registers (`register`) with a request signed by the new key, carrying the public key in the JWS `jwk`
header: the signature proves the phone holds the private key, and `bh` binds the code to that key. Only
the SHA-256 of a code is stored, and it is consumed (GETDEL) before anything else is checked, so a code
works once even if the request carrying it fails.

A further phone for a user who already has an active one is the way a phished password becomes a lasting
second factor, so, as Microsoft and Duo do, it needs someone to vouch for it:

    first phone of the user                        active at once
    enrollment issued by the security team         active at once (admin token, or `pushauth enroll`)
    enrollment made after a valid access code      active at once (the code proved the user to the
                                                   service desk; `enrollment.access_code_grant_s`)
    enrollment an application asked for            pending: the user's active phones get an "add a new
                                                   phone?" prompt, with a number the new phone shows;
                                                   approving it activates the phone, denying refuses it

Every further phone raises a high alert and a `device_added` notice (pushed) to the other phones. A phone
activated within `enrollment.revoke_cooldown_s` cannot revoke an older one unless the security team allows
it; one phone revoking another raises a high alert either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import msgspec
import redis.asyncio as aioredis
from joserfc.jwk import ECKey

from pushauth import clock, ids
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges import context as login_context
from pushauth.clock import rfc3339
from pushauth.config import Settings
from pushauth.crypto import device_auth, jws, secrets
from pushauth.crypto.device_auth import BadDeviceRequest
from pushauth.crypto.keys import KeyRing
from pushauth.crypto.secrets import new_secret
from pushauth.devices import scripts as lua
from pushauth.devices.scripts import (
    EnrollMode,
    Gated,
    Registration,
    Revocation,
    RevocationByDevice,
    TokenUpdate,
)
from pushauth.errors import Forbidden, NotFound, RateLimited, Unauthorized, Unprocessable
from pushauth.push.dispatch import PushQueue
from pushauth.store import KeySpace, reads
from pushauth.store.durability import ReplicaAcks

ENROLL_URI_SCHEME = "pushauth://enroll"
# Bounded in-process caches of immutable facts (device public keys, user uids); oldest dropped first.
_CACHE_MAX = 50_000


# How an enrollment's phone becomes active (`Enrollment.activation`, the login flow's answer).
IMMEDIATE = "immediate"
EXISTING_PHONE = "existing_phone"
# Who vouched for a further phone (the device's `vouch`, the alert's `vouched_by`).
VOUCH_ADMIN = "admin"
VOUCH_ACCESS_CODE = "access_code"
PENDING_APPROVAL = "pending_approval"


@dataclass(frozen=True, slots=True, repr=False)
class Enrollment:
    id: str
    user: str
    code: str
    uri: str
    expires_at: int
    # "immediate", or "existing_phone": the phone will wait for approval on one of the user's phones.
    activation: str = IMMEDIATE

    def __repr__(self) -> str:  # the code is a secret
        return f"Enrollment(id={self.id!r}, user={self.user!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Registered:
    device_id: str
    user: str
    status: str = "active"  # or "pending_approval"
    # While pending: the number the new phone shows (the user types it on an existing phone), and until when.
    number: str | None = None
    approval_expires_at: int | None = None

    def __repr__(self) -> str:
        return f"Registered(device_id={self.device_id!r}, user={self.user!r}, status={self.status!r})"


@dataclass(frozen=True, slots=True)
class AuthedDevice:
    """A device request whose signature verified. Not yet gated: `jti` is recorded and the device's status
    checked by the script that serves the request."""

    device_id: str
    uid: str
    jti: str


class Devices:
    """Owns the user's phones: enrollment codes, registration (and the approval of a further phone), request
    authentication and the replay gate, the phone's own account actions, revocation.

    Keys: `<p>:u:<sha256(user)>` (user name -> uid, written once), `<p>:enr:<sha256(code)>` (enrollment
    codes) and `<p>:jti:enr:<jkt>:<jti>` (their replay cache); in the user's slot (`<p>:{<uid>}:`)
    `dev:<did>` (the device hash), `devs` and `ndevs` (active phones, phones waiting for approval),
    `jti:<did>:<jti>` (the request replay cache), `notices:<did>`, some fields of the user hash (`name`,
    `enrolled`, `paused_*`; it spends `acode_grant`), and, for a further phone, its approval challenge
    `ch:<cid>` in `pending`. Scripts: device_gate, register_device, revoke_device, revoke_by_device,
    enroll_mode, update_push_token, pause_prompts (`pushauth.devices.scripts`).

    Called by the phone's routes (`web/device.py`), the login flow's enrollment route
    (`web/login_flow.py`), `Accounts` (the security team revoking a phone, the admin API and console),
    `Challenges` (the gate before every fetch and answer, uids), and the CLI (`pushauth enroll`: codes only,
    built without an AlertStore).
    """

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings,
                 keyring: Callable[[], KeyRing], alerts: AlertStore | None = None,
                 audit: Audit | None = None, push: PushQueue | None = None) -> None:
        self._redis = redis
        self._acks = ReplicaAcks.from_settings(settings.store)
        self._ks = keyspace
        self._settings = settings
        self._keyring = keyring
        # Both needed to register devices (the server); the CLI only creates enrollment codes.
        self._alerts = alerts
        self._audit = audit
        self._push = push
        # Device public keys never change, so a verified key can be cached; status is always read live.
        self._keys: dict[str, ECKey] = {}
        self._uids: dict[str, str] = {}

    @property
    def jti_ttl(self) -> int:
        # A jti must be remembered as long as a request carrying it could still pass the iat check.
        return 2 * self._settings.device_auth.max_skew_s + 5

    # -- users -------------------------------------------------------------------------------------------

    async def uid_for(self, user: str, *, create: bool = False) -> str | None:
        """The user's uid. The mapping is written once (SET NX) and never changed or deleted, so a uid
        once read can be cached in-process without any risk of serving a stale one."""
        uid = self._uids.get(user)
        if uid is not None:
            return uid
        key = self._ks.user_index(user)
        if create:
            await self._redis.set(key, ids.new_uid(), nx=True)
        uid = await reads.get(self._redis, key)
        if uid is not None:
            if len(self._uids) >= _CACHE_MAX:
                self._uids.pop(next(iter(self._uids)))
            self._uids[user] = uid
        return uid

    # -- enrollment --------------------------------------------------------------------------------------

    async def account_flags(self, user: str) -> tuple[str | None, dict[str, str]]:
        """The user's uid (None: never enrolled, no flags) and the hash holding its policy flags."""
        uid = await self.uid_for(user)
        if uid is None:
            return None, {}
        return uid, await reads.hgetall(self._redis, self._ks.user(uid))

    async def _refuse_shared(self, user: str, by: str) -> None:
        _, flags = await self.account_flags(user)
        if self._settings.policy.account_kind(user, flags) == "shared":
            if self._audit is not None:
                await self._audit.record("enrollment_refused", user=user, who=by, why="shared_account")
            raise Forbidden("this is a shared mailbox: shared mailboxes must not set up MFA",
                            code="shared_account")

    async def create_enrollment(self, user: str, *, requested_by: str) -> Enrollment:
        """A one-time code for a phone of `user`. `requested_by` is "admin:...", "console:..." or "cli"
        (the security team: the phone is vouched for) or "app:<id>" (an application: a further phone waits
        for approval, unless a temporary access code proved the user just before)."""
        await self._refuse_shared(user, requested_by)
        vouch = VOUCH_ADMIN if not requested_by.startswith("app:") else ""
        activation = IMMEDIATE
        if not vouch:
            uid = await self.uid_for(user)
            mode = EnrollMode.FIRST if uid is None else await lua.enroll_mode(
                self._redis, user_key=self._ks.user(uid), devices_key=self._ks.devices(uid), now=clock.now())
            if mode == EnrollMode.ACCESS_CODE:
                vouch = VOUCH_ACCESS_CODE
            elif mode == EnrollMode.APPROVAL:
                activation = EXISTING_PHONE
        code = new_secret(32)
        eid = ids.new_enrollment_id()
        ttl = self._settings.enrollment.code_ttl_s
        expires_at = clock.now() + ttl
        # One MULTI: a code must never exist without its expiry.
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._ks.enrollment(code), mapping={"id": eid, "user": user, "exp": expires_at,
                                                      "by": requested_by, "vouch": vouch})
        pipe.expire(self._ks.enrollment(code), ttl)
        await pipe.execute()
        query = urlencode({"v": "1", "server": self._settings.server.base_url, "code": code,
                           "jkt": self._keyring().current.kid})
        if vouch == VOUCH_ADMIN and self._audit is not None:
            # vouched for by a person or token of the security team (the console, the admin API): on the
            # record under that name, whichever front issued it
            await self._audit.record("enrollment_issued", user=user, who=requested_by, enrollment=eid)
        return Enrollment(eid, user, code, f"{ENROLL_URI_SCHEME}?{query}", expires_at, activation)

    async def consume_enrollment(self, code: str) -> dict[str, str] | None:
        """Spend an enrollment code, whatever happens next: the contract says a code is consumed even if
        the request carrying it fails, because a code seen in any request may have been exposed."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._ks.enrollment(code))
        pipe.delete(self._ks.enrollment(code))
        enrollment, _ = await pipe.execute()
        return cast(dict[str, str], enrollment) or None

    async def register(self, enrollment: dict[str, str] | None, *, token: str, method: str, path_qs: str,
                       body: bytes, name: str, platform: str, push_provider: str, push_token: str | None,
                       remote_ip: str | None) -> Registered:
        """Register a device for the user of an enrollment already consumed by `consume_enrollment`."""
        now = clock.now()
        if not enrollment or int(enrollment["exp"]) <= now:
            raise Unauthorized("enrollment code is unknown, used or expired", code="invalid_code")
        header = jws.read_header(token, typ=device_auth.REQUEST_TYP, allow_jwk=True)
        if "jwk" not in header:
            raise BadDeviceRequest("enrollment must carry the new public key as a jwk header")
        key = jws.import_public_jwk(header["jwk"])
        req = device_auth.verify_request(token, key, method=method, path_qs=path_qs, body=body, now=now,
                                         max_skew_s=self._settings.device_auth.max_skew_s)
        jkt = jws.thumbprint(key)
        if not await self._redis.set(self._ks.enrollment_jti(jkt, req.jti), "1", nx=True, ex=self.jti_ttl):
            raise BadDeviceRequest("request replayed (jti seen before)", code="replayed")
        user = enrollment["user"]
        # Marked shared after the code was made: still refused (the code is spent either way).
        await self._refuse_shared(user, "device")
        uid = await self.uid_for(user, create=True)
        assert uid is not None
        if self._alerts is None:
            raise RuntimeError("Devices was built without an AlertStore and cannot register devices")
        did = ids.new_device_id(uid)
        public = key.as_dict(private=False)
        fields: dict[str, Any] = {
            "user": user, "jwk": msgspec.json.encode(
                {k: public[k] for k in ("kty", "crv", "x", "y")}).decode(),
            "jkt": jkt, "name": name, "platform": platform, "pprov": push_provider,
            "ptok": push_token or "", "created": now, "eid": enrollment["id"],
            "enroll_ip": remote_ip or "", "by": enrollment.get("by", ""),
        }
        # Should a phone already on the account have to approve this one: its prompt.
        cfg = self._settings
        app = enrollment.get("by", "")[4:] if enrollment.get("by", "").startswith("app:") else ""
        acid = ids.new_challenge_id(uid)
        aexp = now + cfg.enrollment.approval_ttl_s
        number = secrets.number(cfg.challenges.number_digits)
        context = {"ip": remote_ip} if remote_ip else {}
        phone_json = msgspec.json.encode(login_context.for_phone(context)).decode() if context else ""
        res = await lua.register_device(
            self._redis, self._ks.user(uid), self._alerts.ledger_args(uid, user, now), device_id=did,
            vouch=enrollment.get("vouch", ""), approval_cid=acid, approval_exp=aexp,
            approval_expire_at=aexp + cfg.challenges.retention_s, number=number, nonce=secrets.nonce(16),
            app_id=app, context_json=msgspec.json.encode(context).decode() if context else "",
            phone_context_json=phone_json,
            fields=[x for kv in fields.items() for x in kv], acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        what = res.result
        if what in (Registration.LOCKED, Registration.SUSPENDED):
            raise Forbidden(f"this account is {what}: no phone can be added. "
                            f"{cfg.policy.user_message}", code=what.value)
        if what == Registration.RATE_LIMITED:
            raise RateLimited("too many sign-in prompts for this user; try again later",
                              retry_after_s=int(res.detail[0]))
        self._keys[did] = key
        others = [d for d in str(res.detail[0]).split(",") if d]
        if what == Registration.PENDING:
            # the approval prompt is pushed and settled when it expires, like any prompt: one round trip
            pipe = self._redis.pipeline(transaction=False)
            if self._push is not None:
                self._push.enqueue_in(pipe, acid)
            pipe.zadd(self._ks.expiry_due, {acid: aexp})
            await pipe.execute()
            await self._audit_record("device_pending", user, f"enrollment:{enrollment['id']}",
                                     "a further phone waits for approval on the user's phones",
                                     device_id=did, approval_challenge_id=acid, other_devices=len(others))
            return Registered(did, user, PENDING_APPROVAL, number, aexp)
        if others and self._push is not None:
            await self._push.enqueue_notice(uid, others)
        await self._audit_record("device_enrolled", user, f"enrollment:{enrollment['id']}",
                                 "remembered browsers revoked", device_id=did, other_devices=len(others),
                                 vouched_by=enrollment.get("vouch") or None)
        return Registered(did, user)

    async def _audit_record(self, what: str, user: str, who: str, why: str, **details: Any) -> None:
        if self._audit is not None:
            await self._audit.record(what, user=user, who=who, why=why, **details)

    # -- authenticated device requests --------------------------------------------------------------------

    async def _public_key(self, did: str, uid: str) -> ECKey:
        key = self._keys.get(did)
        if key is None:
            raw = await reads.hget(self._redis, self._ks.device(uid, did), "jwk")
            if raw is None:
                raise BadDeviceRequest("unknown device", code="unknown_device")
            key = jws.import_public_jwk(msgspec.json.decode(raw))
            if len(self._keys) >= _CACHE_MAX:
                self._keys.pop(next(iter(self._keys)))
            self._keys[did] = key
        return key

    async def authenticate(self, authorization: str | None, *, method: str, path_qs: str,
                           body: bytes) -> AuthedDevice:
        token = device_auth.token_from_header(authorization)
        header = jws.read_header(token, typ=device_auth.REQUEST_TYP)
        did = header["kid"]
        uid = ids.device_uid(did)
        if uid is None:
            raise BadDeviceRequest("unknown device", code="unknown_device")
        key = await self._public_key(did, uid)
        req = device_auth.verify_request(token, key, method=method, path_qs=path_qs, body=body,
                                         now=clock.now(),
                                         max_skew_s=self._settings.device_auth.max_skew_s)
        return AuthedDevice(did, uid, req.jti)

    async def gate(self, dev: AuthedDevice, target: str, mode: str) -> list[Any]:
        """Record the jti and check the device is active (for mode "self", or waiting for approval), then
        read `target` (see `lua/device_gate.lua` for the modes)."""
        res = await lua.device_gate(
            self._redis, jti_key=self._ks.jti(dev.uid, dev.device_id, dev.jti),
            device_key=self._ks.device(dev.uid, dev.device_id), target=target, jti_ttl=self.jti_ttl,
            mode=mode, now=clock.now(), device_id=dev.device_id,
            challenge_prefix=self._ks.challenge_prefix(dev.uid))
        raise_gate_failure(res.result)
        return res.data

    async def update_push_token(self, dev: AuthedDevice, provider: str, token: str) -> None:
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "self")
        res = await lua.update_push_token(self._redis, self._ks.device(dev.uid, dev.device_id),
                                          provider=provider, token=token, now=clock.now(), acks=self._acks)
        if res != TokenUpdate.OK:
            raise BadDeviceRequest("device revoked", code="device_revoked")

    async def revoke(self, uid: str, did: str, *, by: str) -> None:
        """Revoke an active phone, or one waiting for approval (its prompt is withdrawn)."""
        res = await lua.revoke_device(
            self._redis, devices_key=self._ks.devices(uid), device_key=self._ks.device(uid, did),
            pending_key=self._ks.pending(uid), new_devices_key=self._ks.new_devices(uid), device_id=did,
            now=clock.now(), by=by, challenge_prefix=self._ks.challenge_prefix(uid), acks=self._acks)
        if res != Revocation.OK:
            raise NotFound("no such active device")

    async def unenroll(self, dev: AuthedDevice) -> None:
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "self")
        await self.revoke(dev.uid, dev.device_id, by="device")

    async def activation(self, dev: AuthedDevice) -> dict[str, Any]:
        """Whether this phone is active yet: a further phone waits for one of the user's phones to approve
        it, showing `number` for the user to type there."""
        flat = await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "activation")
        d = dict(zip(flat[::2], flat[1::2], strict=True))
        if d.get("st") == "active":
            return {"status": "active"}
        if d.get("st") == "refused":
            # denied on one of the user's phones ("not me", "mistake", or a wrong number)
            return {"status": "refused", "reason": d.get("refused_why", "")}
        appr = d.get("appr")
        c = await reads.hgetall(self._redis, self._ks.challenge(dev.uid, appr)) if appr else {}
        if not c or c.get("st") != "pending" or int(c.get("exp", "0")) <= clock.now():
            # expired unanswered (or withdrawn): this phone will never be activated; enroll again
            return {"status": "expired"}
        return {"status": PENDING_APPROVAL, "number": c["num"], "expires_at": rfc3339(int(c["exp"]))}

    # -- the phone's own account actions -------------------------------------------------------------------

    async def pause(self, dev: AuthedDevice, duration_s: int) -> int:
        """Pause the user's prompts (holiday) for `duration_s`; prompts meanwhile are refused (`suspended`)
        and counted. Returns the time they resume."""
        max_s = self._settings.policy.max_pause_s
        if duration_s > max_s:
            raise Unprocessable(f"duration_s must be at most {max_s}", code="invalid")
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "challenge")
        until = clock.now() + duration_s
        await lua.pause_prompts(self._redis, self._ks.user(dev.uid), until=until, device_id=dev.device_id,
                                now=clock.now(), acks=self._acks)
        await self._audit_device(dev, "prompts_paused", until=rfc3339(until))
        return until

    async def resume(self, dev: AuthedDevice) -> None:
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "challenge")
        await lua.pause_prompts(self._redis, self._ks.user(dev.uid), until=0, device_id=dev.device_id,
                                now=clock.now(), acks=self._acks)
        await self._audit_device(dev, "prompts_resumed")

    async def revoke_other(self, dev: AuthedDevice, other: str) -> None:
        """A lost or replaced phone, revoked from another phone of the same user: refused to a phone added
        within the cool-down (`enrollment.revoke_cooldown_s`) if the other is older; alerted either way."""
        if ids.device_uid(other) != dev.uid or other == dev.device_id:
            raise NotFound("no such other device of this user")
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "challenge")
        if self._alerts is None:
            raise RuntimeError("Devices was built without an AlertStore")
        res = await lua.revoke_by_device(
            self._redis, self._ks.user(dev.uid), self._alerts.ledger_args(dev.uid, "", clock.now()),
            by=dev.device_id, target=other, cooldown_s=self._settings.enrollment.revoke_cooldown_s,
            acks=self._acks)
        await self._alerts.announce(dev.uid, res.notes)
        if res.result == RevocationByDevice.REVOKED:
            raise_gate_failure(Gated.REVOKED)
        if res.result == RevocationByDevice.NOT_FOUND:
            raise NotFound("no such other device of this user")
        if res.result == RevocationByDevice.COOLDOWN:
            await self._audit_device(dev, "device_revoke_refused", device_id=other, why="cool-down")
            raise Forbidden(f"a phone added less than {self._settings.enrollment.revoke_cooldown_s // 3600} "
                            f"hours ago cannot remove an older phone (until {rfc3339(int(res.detail[0]))}); "
                            f"{self._settings.policy.user_message}", code="cooldown")
        await self._audit_device(dev, "device_revoked", device_id=other, why="lost or replaced phone")

    async def allow_revoke(self, uid: str, did: str) -> None:
        """The security team lets a phone inside its cool-down revoke older phones."""
        key = self._ks.device(uid, did)
        if await reads.hget(self._redis, key, "st") != "active":
            raise NotFound("no such active device")
        await self._redis.hset(key, "may_revoke", "1")

    async def notices(self, dev: AuthedDevice) -> list[dict[str, Any]]:
        """What happened to the account that this phone should tell its user (a new phone was added)."""
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "challenge")
        key = self._ks.notices(dev.uid, dev.device_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw, _ = await pipe.execute()
        out = []
        for item in cast(list[str], raw):
            notice = msgspec.json.decode(item)
            notice["at"] = rfc3339(int(notice.get("at", 0)))
            out.append(notice)
        return out

    async def own_devices(self, dev: AuthedDevice) -> list[dict[str, Any]]:
        await self.gate(dev, self._ks.device(dev.uid, dev.device_id), "challenge")
        return [{**d, "this_device": d["id"] == dev.device_id} for d in await self.list_devices(dev.uid)]

    async def _audit_device(self, dev: AuthedDevice, what: str, *, why: str = "", **details: Any) -> None:
        if self._audit is not None:
            user = await reads.hget(self._redis, self._ks.user(dev.uid), "name") or ""
            await self._audit.record(what, user=user, who=f"device:{dev.device_id}", why=why or "the user",
                                     **details)

    async def list_devices(self, uid: str) -> list[dict[str, Any]]:
        dids = sorted(await reads.smembers(self._redis, self._ks.devices(uid)))
        pipe = self._redis.pipeline(transaction=False)
        for did in dids:
            pipe.hgetall(self._ks.device(uid, did))
        out = []
        for did, h in zip(dids, await pipe.execute(), strict=True):
            d = h
            out.append({"id": did, "name": d.get("name"), "platform": d.get("platform"),
                        "push": {"provider": d.get("pprov"), "stale": d.get("ptok_stale") == "1"},
                        "created_at": rfc3339(int(d.get("created", 0)))})
        return out


def raise_gate_failure(result: Gated) -> None:
    """The error for a device request the gate refused (device_gate.lua's result; other scripts that find
    the answering phone revoked answer as the gate would)."""
    if result == Gated.OK:
        return
    if result == Gated.REPLAY:
        raise BadDeviceRequest("request replayed (jti seen before)", code="replayed")
    if result == Gated.REVOKED:
        raise BadDeviceRequest("device revoked", code="device_revoked")
    if result == Gated.PENDING:
        raise Forbidden("this phone waits for approval on one of your other phones "
                        "(GET /v1/device/activation)", code="device_pending")
    raise BadDeviceRequest("device request refused")
