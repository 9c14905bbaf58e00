"""Offline one-time codes (TOTP): enrollment, activation, import, verification, revocation, re-sealing.

    pending --activate (one valid code)--> active --revoke--> (gone)
       \\--expired / too many wrong codes--> (gone)

Owns, in the user's slot: the method hashes (`{uid}:otp:<tid>`, seed sealed by `pushauth.codes.seal`), the
set of them (`{uid}:otps`), and on the user hash the replay mark (`otp_step`) and the wrong-code window's
reset mark (`otp_reset`). Decisions that change state are taken in Lua (`pushauth.codes.scripts`), which
include the detection ledger: a wrong code counts toward the lockout, the limit raises `otp_guessing`, and
lock and suspension refuse codes as they refuse prompts. Which step a code matches is computed here, in
constant time, since a seed is never handed to Redis in the clear.

Called by the login flow's and the security team's routes (`pushauth.web.codes`), the RADIUS front, the
OpenID sign-in page, device registration (a pushauth phone's own seed) and the CLI (`keys rotate-kek`).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
import segno
import structlog

from pushauth import clock
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges.service import ASSERTION_LIFE_S, ASSERTION_TYP
from pushauth.clock import rfc3339
from pushauth.codes import scripts as lua
from pushauth.codes import totp
from pushauth.codes.pskc import Token
from pushauth.codes.seal import KekHolder, KekRing, SealError
from pushauth.codes.views import method_views, records
from pushauth.config import Application, Settings
from pushauth.crypto import jws
from pushauth.crypto.keys import KeyRing
from pushauth.devices.service import Devices
from pushauth.errors import (
    Conflict,
    Forbidden,
    KeyStoreError,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unprocessable,
)
from pushauth.store import KeySpace, reads
from pushauth.store.durability import ReplicaAcks

log = structlog.get_logger(__name__)

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
OTP_AMR = ["otp"]


def new_method_id(uid: str) -> str:
    return f"t{uid}{base64.b32encode(secrets.token_bytes(10)).decode('ascii').lower()}"


def method_uid(method_id: str) -> str | None:
    """The uid inside a method id, or None when the id is not one of ours (the caller answers 404)."""
    if len(method_id) == 33 and method_id[0] == "t" and all(c in _B32 for c in method_id[1:]):
        return method_id[1:17]
    return None


@dataclass(frozen=True, slots=True, repr=False)
class Enrolled:
    """A pending method as shown once to the security team: `uri` and `secret` hold the seed."""

    method_id: str
    uri: str
    secret: str
    qr_svg: str
    expires_at: int

    def __repr__(self) -> str:
        return f"Enrolled(method_id={self.method_id!r})"


@dataclass(frozen=True, slots=True)
class Checked:
    """A code's verdict. `reason` is "" when valid, else invalid | locked | suspended | not_enrolled."""

    valid: bool
    reason: str
    method_id: str | None = None
    auth_time: int = 0


class Codes:
    """The offline-code service for every front. Never returns a seed except to the enrolling security
    team (once), never logs one."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings,
                 keyring: Callable[[], KeyRing], kek: KekHolder, devices: Devices, alerts: AlertStore,
                 audit: Audit) -> None:
        self._redis = redis
        self._ks = keyspace
        self._settings = settings
        self._cfg = settings.codes
        self._keyring = keyring
        self._kek = kek
        self._devices = devices
        self._alerts = alerts
        self._audit = audit
        self._acks = ReplicaAcks.from_settings(settings.store)

    # -- sealing -------------------------------------------------------------------------------------------

    def _ring(self) -> KekRing:
        try:
            return self._kek.ring()
        except KeyStoreError as exc:
            log.error("codes_kek_unavailable", error=str(exc))
            raise ServiceUnavailable("one-time codes are not available: the server has no usable "
                                     "key-encryption key (keys/kek.json)", code="codes_unavailable") from None

    def _seed(self, uid: str, method_id: str, sealed: str) -> totp.Seed | None:
        try:
            return totp.Seed(self._ring().open(sealed, uid=uid, method_id=method_id))
        except SealError as exc:
            # A seed that does not open is not the user's fault, and must not sign anyone in.
            log.error("codes_seed_unopenable", method_id=method_id, error=str(exc))
            return None

    # -- enrollment ----------------------------------------------------------------------------------------

    def _enabled(self) -> None:
        if not self._cfg.enabled:
            raise Forbidden("one-time codes are turned off ([codes] enabled = false)", code="codes_disabled")

    async def _uid_for_enrollment(self, user: str, by: str) -> str:
        self._enabled()
        uid, flags = await self._devices.account_flags(user)
        if self._settings.policy.account_kind(user, flags) == "shared":
            await self._audit.record("otp_enrollment_refused", user=user, who=by, why="shared_account")
            raise Forbidden("this is a shared mailbox: shared mailboxes must not set up MFA",
                            code="shared_account")
        uid = uid or await self._devices.uid_for(user, create=True)
        assert uid is not None
        return uid

    async def _store(self, uid: str, method_id: str, seed: totp.Seed, params: totp.Params, *, kind: str,
                     by: str, name: str, expires_at: int, serial: str = "", status: str = "pending",
                     device_id: str = "", counter: int = 0) -> None:
        now = clock.now()
        fields: dict[Any, str | int] = {
            "st": status, "kind": kind, "alg": params.algorithm, "dig": params.digits, "per": params.period,
            "seed": self._ring().seal(seed.raw(), uid=uid, method_id=method_id), "name": name, "by": by,
            "created": now, "exp": expires_at, "tries": 0}
        if serial:
            fields["serial"] = serial
        if params.kind == "hotp":
            fields["typ"], fields["ctr"] = "hotp", counter
        if device_id:
            fields["did"] = device_id
        if status == "active":
            fields["act"] = now
        key = self._ks.otp_method(uid, method_id)
        pipe = self._redis.pipeline(transaction=True)  # one slot: the method and its set change together
        pipe.hset(key, mapping=fields)
        if expires_at:
            pipe.expireat(key, expires_at)
        pipe.sadd(self._ks.otp_methods(uid), method_id)
        await pipe.execute()

    async def enroll_app(self, user: str, *, by: str, name: str = "") -> Enrolled:
        """A pending authenticator-app method; its URI and QR code are shown this once."""
        uid = await self._uid_for_enrollment(user, by)
        params = totp.Params(algorithm=self._cfg.algorithm, digits=self._cfg.digits)
        seed = totp.Seed.new(params.algorithm)
        method_id = new_method_id(uid)
        expires = clock.now() + self._cfg.pending_ttl_s
        await self._store(uid, method_id, seed, params, kind="app", by=by, name=name or "authenticator app",
                          expires_at=expires)
        uri = totp.otpauth_uri(seed, params, issuer=self._cfg.issuer, account=user)
        await self._audit.record("otp_enrolled", user=user, who=by, why="authenticator app",
                                 method_id=method_id, status="pending", expires_at=rfc3339(expires))
        return Enrolled(method_id, uri, seed.base32(), segno.make(uri, error="m").svg_data_uri(scale=4),
                        expires)

    async def import_tokens(self, tokens: Iterable[Token], assignments: dict[str, str], *, by: str,
                            source: str) -> list[dict[str, str]]:
        """Hardware tokens, each assigned to a user (by the request's `assignments`, serial -> canonical
        user, or the CSV's user column), pending until activated with one of its codes. All or nothing:
        every token is checked before any is stored."""
        self._enabled()
        planned = []
        for token in tokens:
            user = assignments.get(token.serial) or token.user
            if not user:
                raise Unprocessable(f"token {token.serial} is assigned to no user (assignments)",
                                    code="invalid_import")
            planned.append((token, user))
        serials = [t.serial for t, _ in planned]
        if len(serials) != len(set(serials)):
            raise Unprocessable("a serial number appears twice in the file", code="invalid_import")
        # every user checked (a shared mailbox is refused) before the first token is stored
        owners = {user: await self._uid_for_enrollment(user, by) for user in {u for _, u in planned}}
        out = []
        for token, user in planned:
            uid = owners[user]
            method_id = new_method_id(uid)
            await self._store(uid, method_id, token.seed, token.params, kind="hardware", by=by,
                              name=f"token {token.serial}", expires_at=0, serial=token.serial,
                              counter=token.counter)
            await self._audit.record("otp_imported", user=user, who=by, why=source, method_id=method_id,
                                     serial=token.serial, status="pending")
            out.append({"serial": token.serial, "user": user, "id": method_id, "status": "pending"})
        return out

    async def phone_seed(self, uid: str, user: str, device_id: str, *,
                         approval_expires_at: int | None = None) -> tuple[str, totp.Params] | None:
        """A pushauth phone's own seed. For an active phone, active at once (the registration proved the
        phone holds its key, and the seed travels in the same answer): its base32 and parameters. For a phone
        waiting for approval (`approval_expires_at`), stored pending, to be handed over once by
        `deliver_phone_seed` when it is approved (gone `pending_ttl_s` after the approval's deadline
        otherwise): None. None too when turned off. Raises ServiceUnavailable, having stored nothing,
        without a key-encryption key."""
        if not (self._cfg.enabled and self._cfg.phone_seeds):
            return None
        params = totp.Params()
        seed = totp.Seed.new(params.algorithm)
        method_id = new_method_id(uid)
        status = "active" if approval_expires_at is None else "pending"
        # kept a while past the approval's deadline: an approved phone may poll its activation late
        expires = 0 if approval_expires_at is None else approval_expires_at + self._cfg.pending_ttl_s
        await self._store(uid, method_id, seed, params, kind="phone", by="device", name="pushauth phone",
                          expires_at=expires, status=status, device_id=device_id)
        await self._audit.record("otp_enrolled", user=user, who="device", why="pushauth phone",
                                 method_id=method_id, device_id=device_id, status=status)
        return (seed.base32(), params) if status == "active" else None

    async def deliver_phone_seed(self, uid: str, device_id: str) -> tuple[str, totp.Params] | None:
        """The seed a phone asked for while it waited for approval, now that it is active: once (the call
        that activates the method gets it; every later one None), or None when it asked for none."""
        waiting = [(mid, m) for mid, m in await self._records(uid)
                   if m.get("did") == device_id and m.get("st") == "pending"]
        if not waiting:
            return None
        method_id, m = waiting[0]
        try:
            seed = self._seed(uid, method_id, m["seed"])
        except ServiceUnavailable:  # no key-encryption key just now: left pending, logged by _ring
            return None
        if seed is None or not await lua.deliver_seed(self._redis, self._ks.otp_method(uid, method_id),
                                                      device_id=device_id, now=clock.now(), acks=self._acks):
            return None
        user = await reads.hget(self._redis, self._ks.user(uid), "name") or ""
        await self._audit.record("otp_activated", user=user, who="device", why="pushauth phone approved",
                                 method_id=method_id, device_id=device_id)
        return seed.base32(), _params(m)

    async def activate(self, user: str, method_id: str, code: str, *, by: str) -> None:
        uid = await self._method_owner(user, method_id)
        m = await reads.hgetall(self._redis, self._ks.otp_method(uid, method_id))
        if not m:
            raise NotFound("no such one-time-code method for this user")
        if m.get("st") != "pending":
            raise Conflict("this method is active already", code="already_active")
        typed = totp.normal_code(code)
        seed = self._seed(uid, method_id, m["seed"])
        step_at, counter = self._match(seed, typed, m, clock.now())
        res = await lua.activate_code(self._redis, self._ks.user(uid),
                                      self._alerts.ledger_args(uid, user, clock.now()), method_id=method_id,
                                      step_at=step_at, counter=counter,
                                      max_tries=self._cfg.activation_attempts, by=by, acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        what = res.result
        event = "otp_activated" if what is lua.Activated.ACTIVE else "otp_activation_refused"
        await self._audit.record(event, user=user, who=by, why=what.value, method_id=method_id)
        if what is lua.Activated.INVALID:
            raise Unprocessable(f"that is not the method's current code ({res.detail[0]} tries left)",
                                code="invalid_code")
        if what is lua.Activated.DISCARDED:
            raise Conflict("too many wrong codes: the pending method was discarded; enroll again",
                           code="discarded")
        if what is lua.Activated.EXPIRED:
            raise Conflict("the pending method expired; enroll again", code="expired")
        if what is lua.Activated.NOT_PENDING:
            raise NotFound("no such pending method for this user")

    async def revoke(self, user: str, method_id: str, *, by: str) -> None:
        uid = await self._method_owner(user, method_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._ks.otp_method(uid, method_id))
        pipe.srem(self._ks.otp_methods(uid), method_id)
        deleted, _ = await pipe.execute()
        if not deleted:
            raise NotFound("no such one-time-code method for this user")
        await self._audit.record("otp_revoked", user=user, who=by, why="security team", method_id=method_id)

    async def _method_owner(self, user: str, method_id: str) -> str:
        uid = await self._devices.uid_for(user)
        if uid is None or method_uid(method_id) != uid:
            raise NotFound("no such one-time-code method for this user")
        return uid

    # -- reading -------------------------------------------------------------------------------------------

    async def _records(self, uid: str) -> list[tuple[str, dict[str, str]]]:
        return await records(self._redis, self._ks, uid)

    async def methods(self, user: str) -> list[dict[str, Any]]:
        """What the user view shows of each method: never the seed."""
        uid = await self._devices.uid_for(user)
        return [] if uid is None else await method_views(self._redis, self._ks, uid)

    async def usable(self, user: str) -> bool:
        """Whether `user` has a method whose codes would be accepted now (active; a pushauth phone's own
        seed only while that phone is active): the fronts then ask a user with no phone for a code rather
        than refusing the sign-in. Only a question: lock, suspension and the wrong-code limit are decided
        when the code is checked (`verify`)."""
        if not self._cfg.enabled:
            return False
        return any(m["status"] == "active" for m in await self.methods(user))

    # -- verification --------------------------------------------------------------------------------------

    async def verify(self, user: str, code: str, *, via: str, by: str) -> Checked:
        """Check a code typed for `user`. Raises RateLimited (429) at the wrong-code limit; otherwise the
        verdict. Nothing is counted for a user with no active method: there is nothing to guess, and a
        stranger must not be able to lock anyone out with codes."""
        if not self._cfg.enabled:
            return Checked(False, "not_enrolled")
        uid = await self._devices.uid_for(user)
        methods = [] if uid is None else await self._records(uid)
        active = [(mid, m) for mid, m in methods if m.get("st") == "active"]
        if uid is None or not active:
            await self._audit.record("otp_refused", user=user, who=by, why="not_enrolled", via=via)
            return Checked(False, "not_enrolled")
        typed = totp.normal_code(code)
        now = clock.now()
        matched, step_at, counter = "", -1, -1
        for mid, m in active:  # every method tried, whatever an earlier one gave
            found = self._match(self._seed(uid, mid, m["seed"]), typed, m, now)
            if found != (-1, -1):
                matched, (step_at, counter) = mid, found
        res = await lua.use_code(self._redis, self._ks.user(uid), self._alerts.ledger_args(uid, user, now),
                                 method_id=matched, step_at=step_at, counter=counter,
                                 attempts=self._cfg.attempts,
                                 window_s=self._cfg.window_s, via=via, acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        what = res.result
        await self._audit.record("otp_used" if what is lua.Used.VALID else "otp_refused", user=user, who=by,
                                 why=what.value, via=via, method_id=matched or None)
        if what is lua.Used.RATE_LIMITED:
            raise RateLimited("too many wrong one-time codes for this user; try again later",
                              retry_after_s=int(res.detail[0]))
        if what is lua.Used.VALID:
            return Checked(True, "", matched, now)
        # a replayed code is told apart in the audit trail only: to the caller it is just wrong
        return Checked(False, "invalid" if what is lua.Used.REPLAYED else what.value)

    def _match(self, seed: totp.Seed | None, typed: str | None, m: dict[str, str],
               now: int) -> tuple[int, int]:
        """(start of the matched time step, -1) for a TOTP method, (-1, matched counter) for an HOTP token
        (from its next expected counter over `hotp_look_ahead`), (-1, -1) when the code matches nothing."""
        if not (typed and seed):
            return -1, -1
        params = _params(m)
        if params.kind == "hotp":
            counter = totp.matching_counter(seed, typed, int(m.get("ctr", "0")), params,
                                            self._cfg.hotp_look_ahead)
            return (-1, -1) if counter is None else (-1, counter)
        step = totp.matching_step(seed, typed, now, params, self._cfg.window)
        return (-1, -1) if step is None else (step * params.period, -1)

    def assertion(self, app: Application, user: str, checked: Checked) -> tuple[str, str]:
        """(id, assertion): the same signed statement an approval gives the login flow (PROTOCOL.md 11.5),
        its `jti` a fresh id (there is no challenge), `amr` ["otp"] and the method instead of a device."""
        assert checked.valid
        assert checked.method_id
        ring = self._keyring()
        now = clock.now()
        jti = "o" + base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower()
        claims = {"iss": self._settings.server.base_url, "aud": app.id, "sub": user, "jti": jti, "iat": now,
                  "exp": now + ASSERTION_LIFE_S, "auth_time": checked.auth_time, "result": "approved",
                  "amr": OTP_AMR, "method": checked.method_id}
        return jti, jws.sign(claims, ring.current.key, typ=ASSERTION_TYP, kid=ring.current.kid)

    # -- key rotation --------------------------------------------------------------------------------------

    async def reseal_all(self, ring: KekRing) -> int:
        """Re-encrypt every seed not sealed under `ring.current` (a KEK rotation). Each is replaced only if
        it has not changed meanwhile (a compare-and-set script), so a method revoked during the rotation
        stays gone. SCAN visits every primary on Redis Cluster."""
        done = 0
        async for raw in self._redis.scan_iter(match=f"{self._ks.prefix}:{{*}}:otp:t*", count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            uid, mid = key.split("{", 1)[1].split("}", 1)[0], key.rsplit(":", 1)[1]
            sealed = await self._redis.hget(key, "seed")
            if not sealed:
                continue
            sealed = sealed.decode() if isinstance(sealed, bytes) else str(sealed)
            if ring.kid_of(sealed) == ring.current:
                continue
            secret = ring.open(sealed, uid=uid, method_id=mid)
            if await lua.reseal_seed(self._redis, key, old=sealed,
                                         new=ring.seal(secret, uid=uid, method_id=mid)):
                done += 1
        return done


def _params(m: dict[str, str]) -> totp.Params:
    return totp.Params(algorithm=cast(totp.Algorithm, m.get("alg", "SHA1")), digits=int(m.get("dig", "6")),
                       period=int(m.get("per", "30")), kind="hotp" if m.get("typ") == "hotp" else "totp")
