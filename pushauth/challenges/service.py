"""The challenge lifecycle: create -> (device fetch) -> respond | cancel | expire, and the waiting login flow.

    pending --approve (right number)--> approved   (login flow gets a signed assertion)
    pending --deny / wrong number-----> denied     (reason: not_me | mistake | wrong_number)
    pending --login flow cancels------> cancelled  (counted as ignored if it reached a phone)
    pending --exp passes--------------> expired    (computed on read: no timer can be lost)

    expired | cancelled --"not me"----> unchanged, but the report is recorded, alerted and contained
                                        exactly as on a pending prompt

A challenge with purpose "add_device" asks the user's existing phones to approve a new one
(`pushauth.devices.service`): it has no login flow (no application sees it or can cancel it), and its
approval activates the new phone.

Every transition is one Lua script (`lua/`, run through `pushauth.challenges.scripts`), which re-checks
everything that could invalidate it and publishes the decision in the same step. Of any number of
concurrent answers exactly one decides.

What the phone sees is a challenge JWS signed on demand with the current server key (`aud` = device),
which carries a 128-bit nonce the answer must echo, and never the number: the number is shown only on the
login page, so a phone approving without seeing that page (push bombing, MFA fatigue) cannot know it. Nor
does it carry any free text from the login flow: its `ctx` is `login_context.for_phone`'s reduction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from pushauth import clock, ids, metrics
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges import context as login_context
from pushauth.challenges import scripts as lua
from pushauth.challenges.events import ChallengeEvents, Decision
from pushauth.challenges.expiry import ExpiryIndex
from pushauth.challenges.scripts import Creation, Responded
from pushauth.clock import rfc3339
from pushauth.config import Application, Settings
from pushauth.crypto import jws, secrets
from pushauth.crypto.keys import KeyRing
from pushauth.crypto.secrets import sha256_hex
from pushauth.detection.ledger import LedgerReply
from pushauth.detection.rules import network_of
from pushauth.devices.scripts import Gated
from pushauth.devices.service import AuthedDevice, Devices, raise_gate_failure
from pushauth.errors import Conflict, Forbidden, NotFound, PromptsPaused, RateLimited, Unprocessable
from pushauth.push.dispatch import PushQueue, delivery_view
from pushauth.store import KeySpace, reads
from pushauth.store.durability import ReplicaAcks

CHALLENGE_TYP = "pushauth-challenge+jwt"
ASSERTION_TYP = "pushauth-assertion+jwt"
REMEMBER_TYP = "pushauth-remember+jwt"
# An assertion is for the login flow to consume at once; five minutes covers slow redirects.
ASSERTION_LIFE_S = 300
NONCE_BYTES = 16  # 128 bits, the contract's minimum
DENY_REASONS = ("not_me", "mistake")
ADD_DEVICE = "add_device"
# Denials after which the user is told what to do next (`policy.user_message`).
USER_MESSAGE_REASONS = frozenset({"not_me", "suspended", "locked"})

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Allowed:
    """No prompt needed: reason "exempt" (account: "exempt" or "shared"), "remembered", or "grace"
    (enroll_by: the enforcement date)."""

    reason: str
    account: str | None = None
    enroll_by: int | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    """A phone's answer, taken. `user_message` is set when the user must be told what to do next (after
    "not me"); `notify` lists the phones to push a `device_added` notice to (an approved new phone)."""

    status: str
    user_message: str | None = None
    notify: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Created:
    id: str
    expires_at: int
    number: str | None

    def __repr__(self) -> str:  # the number is shown to the login page only
        return f"Created(id={self.id!r})"


class Challenges:
    """Owns the sign-in prompts: creating them for a login flow, the phone fetching and answering them, the
    login flow waiting for, collecting (the signed assertion, a remember token) or cancelling them.

    Keys (all in the user's slot, `<p>:{<uid>}:`): `ch:<cid>` (the challenge hash), `pending` (zset of open
    prompts by expiry), `recent` (zset of recent prompts, for containment), `remembered` (remembered
    browsers), and through the ledger the user hash, `hist`, `seen`, `incident` and `alert:<aid>`; plus the
    expiry index `{expiry}:due` (`ExpiryIndex`). Scripts: create_challenge, respond, cancel
    (`pushauth.challenges.scripts`), and the device gate through `Devices.gate`. Decisions are published on
    the events channel (`ChallengeEvents` wakes `status` waiters); new prompts go to the push queue, written
    by create_challenge.lua itself except on Cluster (`PushQueue.script_stream`).

    Called by the login flow's routes (`web/login_flow.py`: create, status, cancel; the demo page) and the
    phone's routes (`web/device.py`: device_pending, device_get, respond); built by the app factory.
    Prompts nobody answered are settled by `ExpirySweeper` (the expiry worker), not here.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings,
                 keyring: Callable[[], KeyRing], devices: Devices, events: ChallengeEvents,
                 alerts: AlertStore, audit: Audit, push: PushQueue | None = None) -> None:
        self._redis = redis
        self._acks = ReplicaAcks.from_settings(settings.store)
        self._ks = keyspace
        self._settings = settings
        self._keyring = keyring
        self._devices = devices
        self._events = events
        self._alerts = alerts
        self._audit = audit
        self._push = push
        self._app_names: Mapping[str, str] = {a.id: a.name for a in settings.applications}
        self._expiry_index = ExpiryIndex(redis, keyspace.expiry_due)

    # -- login flow ---------------------------------------------------------------------------------------

    async def create(self, app: Application, user: str, context: dict[str, str] | None,
                     ttl_s: int | None, *, remember_token: str | None = None,
                     browser_id: str | None = None, number_matching: bool = True,
                     binding_message: str | None = None, by: str | None = None) -> Created | Allowed:
        """A prompt for `user`, or the policy's reason why none is needed (pushauth/accounts/policy.py); every
        outcome but a plain prompt is audited. `number_matching=False`: no number even where the settings
        ask for one, for a login flow that cannot show it (a RADIUS client that shows no challenge): the
        phone then asks approve or deny, with the context. `binding_message`: a CIBA client's text for the
        phone (`ctx.binding_message`), already checked with `login_context.binding_message`. `by`: who asks,
        for the audit trail, when not the application itself (a RADIUS client: `radius:<name>`)."""
        cfg = self._settings.challenges
        ttl = cfg.default_ttl_s if ttl_s is None else ttl_s
        if not 10 <= ttl <= cfg.max_ttl_s:
            raise Unprocessable(f"ttl_s must be between 10 and {cfg.max_ttl_s}", code="invalid_ttl")
        who = by or f"app:{app.id}"
        ip = (context or {}).get("ip", "")
        # Shared mailbox or exempt account by the configured patterns (the flags the admin API sets on an
        # account are read by the script). An account never seen (no uid) cannot be locked: no prompt, and
        # it is on the record. Any other goes through the script, where a lock or suspension wins.
        kind = self._settings.policy.account_kind(user, {})
        uid = await self._devices.uid_for(user)
        if uid is None and kind is not None:
            await self._audit.record("allowed", user=user, who=who, why=kind, reason="exempt", ip=ip)
            metrics.CHALLENGES.labels(app.id, "allowed_exempt").inc()
            return Allowed("exempt", account=kind)
        if uid is None:
            return await self._not_enrolled(app, user, who, ip)
        rtid, rbid = self._remembered(app, user, remember_token, browser_id)
        cid = ids.new_challenge_id(uid)
        now = clock.now()
        exp = now + ttl
        number = secrets.number(cfg.number_digits) if cfg.number_matching and number_matching else ""
        fields: list[str | int] = [
            "app", app.id, "user", user, "st", "pending", "iat", now, "exp", exp,
            "nonce", secrets.nonce(NONCE_BYTES), "num", number,
        ]
        ctx_json = _encode(context).decode() if context else ""
        # what the phone will be shown of it, reduced once here rather than at every fetch
        phone_ctx = login_context.for_phone(context or {})
        if binding_message:
            phone_ctx["binding_message"] = binding_message
        if ctx_json:
            fields += ["ctx", ctx_json]
        if ctx_json or phone_ctx:
            fields += ["pctx", _encode(phone_ctx).decode()]
        if browser_id and self._settings.policy.remember_days > 0:
            fields += ["rmb", sha256_hex(browser_id)]  # an approval then remembers this browser
        network = network_of(context["ip"]) if context and context.get("ip") else ""
        location = (context or {}).get("location", "")[:128]
        # The push entry goes in with the challenge (one round trip), except on Cluster (`script_stream`).
        push_stream = self._push.script_stream if self._push is not None else None
        res = await lua.create_challenge(
            self._redis, self._ks.user(uid), self._alerts.ledger_args(uid, user, now), exp=exp,
            expire_at=exp + cfg.retention_s, cid=cid, network=network, location=location,
            context_json=ctx_json, app_id=app.id, token_id=rtid, browser_hash=rbid, account_kind=kind or "",
            fields=fields, push_stream=push_stream, acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        what = res.result
        if what in (Creation.EXEMPT, Creation.REMEMBERED, Creation.OK):
            metrics.CHALLENGES.labels(app.id, "created" if what == Creation.OK else f"allowed_{what}").inc()
        if what == Creation.EXEMPT:
            account = str(res.detail[0])
            await self._audit.record("allowed", user=user, who=who, why=account, reason="exempt", ip=ip)
            return Allowed("exempt", account=account)
        if what == Creation.REMEMBERED:
            await self._audit.record("allowed", user=user, who=who, why="remembered browser",
                                     reason="remembered", token_id=rtid, ip=ip)
            return Allowed("remembered")
        if what == Creation.NOT_ENROLLED:  # a uid, but no active phone (every one revoked)
            return await self._not_enrolled(app, user, who, ip)
        if what != Creation.OK:
            await self._audit.record("refused", user=user, who=who, why=what.value, ip=ip)
            metrics.CHALLENGES.labels(app.id, f"refused_{what}").inc()
        if what == Creation.PAUSED:
            raise PromptsPaused(rfc3339(int(res.detail[0])))
        if what == Creation.LOCKED:
            raise Forbidden(f"this account is locked. {self._user_message}", code="locked")
        if what == Creation.SUSPENDED:
            raise Forbidden(f"sign-in prompts for this account are suspended. {self._user_message}",
                            code="suspended")
        if what == Creation.RATE_LIMITED:
            raise RateLimited("too many sign-in prompts for this user; try again later",
                              retry_after_s=int(res.detail[0]))
        if self._push is not None and push_stream is None:
            # Cluster: the stream's slot is not the user's, so the entry is a round trip of its own.
            await self._push.enqueue(cid)
        self._expiry_index.add(cid, exp)
        return Created(cid, exp, number or None)

    @property
    def _user_message(self) -> str:
        return self._settings.policy.user_message

    async def close(self) -> None:
        """Shutdown: write the buffered expiry index."""
        await self._expiry_index.flush()

    async def _not_enrolled(self, app: Application, user: str, who: str, ip: str) -> Allowed:
        """No phone: allowed until the enforcement date that applies (`grace`), refused after it."""
        enforced = self._settings.policy.enforced_from(app.id, user)
        if clock.now() < enforced:
            await self._audit.record("allowed", user=user, who=who, why="before enforcement date",
                                     reason="grace", enroll_by=rfc3339(enforced), ip=ip)
            metrics.CHALLENGES.labels(app.id, "allowed_grace").inc()
            return Allowed("grace", enroll_by=enforced)
        await self._audit.record("refused", user=user, who=who, why="not_enrolled", ip=ip)
        metrics.CHALLENGES.labels(app.id, "refused_not_enrolled").inc()
        raise Forbidden("no phone is enrolled for this user", code="not_enrolled")

    def _remembered(self, app: Application, user: str, token: str | None,
                    browser_id: str | None) -> tuple[str, str]:
        """(token id, browser hash) of a valid remember token for this user, application and browser, or
        ("", ""): a token that does not verify only means the user is prompted. Whether it was revoked is
        for the script to say, atomically with the lock and suspension checks."""
        if not token or not browser_id or self._settings.policy.remember_days == 0:
            return "", ""
        try:
            header = jws.read_header(token, typ=REMEMBER_TYP)
            claims = jws.verify(token, self._keyring().verifying_key(header["kid"]))
        except jws.InvalidJWS:
            return "", ""
        bid = sha256_hex(browser_id)
        tid, exp = claims.get("jti"), claims.get("exp")
        if (claims.get("iss") != self._settings.server.base_url or claims.get("aud") != app.id
                or claims.get("sub") != user or not isinstance(tid, str) or type(exp) is not int
                or exp <= clock.now() or not secrets.equal(str(claims.get("bid", "")), bid)):
            return "", ""
        return tid, bid

    def remember_token_owner(self, app: Application, token: str) -> tuple[str, str] | None:
        """(user, token id) of a remember token this server signed for `app`, whatever its browser."""
        try:
            header = jws.read_header(token, typ=REMEMBER_TYP)
            claims = jws.verify(token, self._keyring().verifying_key(header["kid"]))
        except jws.InvalidJWS:
            return None
        sub, tid = claims.get("sub"), claims.get("jti")
        if claims.get("aud") != app.id or not isinstance(sub, str) or not isinstance(tid, str):
            return None
        return sub, tid

    async def status(self, app: Application, cid: str, wait_s: float) -> dict[str, Any]:
        key = self._challenge_key(cid)
        if wait_s <= 0:
            return self._view(app, cid, await reads.hgetall(self._redis, key), clock.now())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            decision: Decision | None = None
            # Watch before reading: a decision published between our read and our wait is not lost.
            with self._events.watch(cid) as fut:
                h = await reads.hgetall(self._redis, key)
                now = clock.now()
                view = self._view(app, cid, h, int(now))
                remaining = min(deadline - loop.time(), int(h.get("exp", 0)) - now)
                if view["status"] != "pending" or remaining <= 0 or self._events.closing:
                    return view
                with contextlib.suppress(TimeoutError):
                    decision = await asyncio.wait_for(fut, remaining)
            if decision is not None:
                if decision.published_at is not None:
                    metrics.TIME_TO_NOTIFY.observe(max(0.0, time.time() - decision.published_at))
                h.update(st=decision.status, dat=str(decision.decided_at), dev=decision.device_id or "",
                         rsn=decision.reason or "")
                return self._view(app, cid, h, clock.now())
            # Woken without a decision: the listener lost its subscription and may have missed one. Read
            # again (fails closed with 503 if Redis is still down) and keep waiting until the deadline.

    async def cancel(self, app: Application, cid: str) -> None:
        uid = ids.challenge_uid(cid)
        if uid is None:
            raise NotFound("no such challenge")
        ledger = self._alerts.ledger_args(uid, "", clock.now())
        res = await lua.cancel(self._redis, self._ks.user(uid), ledger, cid=cid, app_id=app.id,
                               acks=self._acks)
        await self._alerts.announce(uid, res.notes)
        _raise_transition_failure(res)
        metrics.CHALLENGES.labels(app.id, "cancelled").inc()

    # -- device -------------------------------------------------------------------------------------------

    async def device_pending(self, dev: AuthedDevice) -> list[str]:
        cids = await self._devices.gate(dev, self._ks.pending(dev.uid), "pending")  # marks them seen
        if not cids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for cid in cids:
            pipe.hgetall(self._ks.challenge(dev.uid, cid))
        now = clock.now()
        out = []
        for cid, h in zip(cids, cast(list[dict[str, str]], await pipe.execute()), strict=True):
            if h and h["st"] == "pending" and int(h["exp"]) > now and _targets(h, dev.device_id):
                out.append(self._sign_challenge(cid, h, dev.device_id))
        return out

    async def device_get(self, dev: AuthedDevice, cid: str) -> str:
        if ids.challenge_uid(cid) != dev.uid:
            raise NotFound("no such challenge")
        flat = await self._devices.gate(dev, self._ks.challenge(dev.uid, cid), "fetch")  # marks it seen
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        if not h or not _targets(h, dev.device_id):
            raise NotFound("no such challenge")
        if h["st"] != "pending":
            raise Conflict(f"this sign-in request is already {h['st']}", code="not_pending")
        if int(h["exp"]) <= clock.now():
            raise Conflict("this sign-in request has expired", code="expired")
        return self._sign_challenge(cid, h, dev.device_id)

    async def respond(self, dev: AuthedDevice, cid: str, *, nonce: str, decision: str, reason: str | None,
                      number: str | None, remote_ip: str | None) -> Answered:
        """One round trip (respond.lua): the device gate (replay cache, device still active) first, like
        every device request, so a replayed or revoked request is refused as such before anything about its
        content is looked at; then the challenge, its nonce and number, and the transition."""
        if ids.challenge_uid(cid) != dev.uid:
            raise NotFound("no such challenge")
        res = await lua.respond(
            self._redis, self._ks.user(dev.uid), self._alerts.ledger_args(dev.uid, "", clock.now()),
            jti_key=self._ks.jti(dev.uid, dev.device_id, dev.jti), jti_ttl=self._devices.jti_ttl, cid=cid,
            device_id=dev.device_id, decision=decision, reason=reason, nonce=nonce, number=number,
            answer_ip=remote_ip or "-", acks=self._acks)
        await self._alerts.announce(dev.uid, res.notes)
        what = res.result
        if what in (Responded.REPLAY, Responded.REVOKED, Responded.PENDING):
            raise_gate_failure(Gated(what.value))
        if what == Responded.BAD_NONCE:
            raise Unprocessable("nonce does not match this challenge", code="bad_nonce")
        if what == Responded.REASON_NOT_FOR_APPROVE:
            raise Unprocessable("reason is only for deny", code="invalid")
        if what == Responded.NUMBER_REQUIRED:
            raise Unprocessable("this sign-in uses number matching: send the number", code="number_required")
        if (what in (Responded.EXPIRED, Responded.CONFLICT) and res.detail
                and res.detail[-1] == "recorded"):
            # Too late to decide anything, but the "not me" was taken, alerted and contained.
            expired = what == Responded.EXPIRED
            raise Conflict(f"this sign-in request {'expired' if expired else 'was cancelled'}; your report "
                           f"that you did not request it was recorded and the security team alerted. "
                           f"{self._user_message}", code="expired" if expired else "already_decided")
        _raise_transition_failure(res, self._user_message)
        notify_csv, status, why, app_id, iat = (str(v) for v in res.detail[:5])
        metrics.CHALLENGES.labels(app_id, status if status == "approved" else f"denied_{why}").inc()
        metrics.TIME_TO_ANSWER.observe(max(0, clock.now() - int(iat)))
        notify = tuple(filter(None, notify_csv.split(",")))
        if notify and self._push is not None:  # a new phone was approved: tell the user's other phones
            await self._push.enqueue_notice(dev.uid, notify)
        return Answered(status, self._user_message if why == "not_me" else None, notify)

    # -- views and tokens -----------------------------------------------------------------------------------

    def _challenge_key(self, cid: str) -> str:
        uid = ids.challenge_uid(cid)
        if uid is None:
            raise NotFound("no such challenge")
        return self._ks.challenge(uid, cid)

    def _view(self, app: Application, cid: str, h: dict[str, str], now: int) -> dict[str, Any]:
        # Another application's challenge is indistinguishable from one that does not exist; so is a prompt
        # to add a phone, which no login flow waits for.
        if not h or h.get("app") != app.id or h.get("purp"):
            raise NotFound("no such challenge")
        status, exp = h["st"], int(h["exp"])
        if status == "pending" and now >= exp:
            status = "expired"
        if status == "approved" and h.get("revoked"):
            # Approved, then revoked by containment (the user said "not me" to another prompt, or the
            # account was locked) before the login flow collected it: no assertion.
            h = {**h, "rsn": h["revoked"]}
            status = "denied"
        out: dict[str, Any] = {"id": cid, "user": h["user"], "status": status,
                               "created_at": rfc3339(int(h["iat"])), "expires_at": rfc3339(exp)}
        if h.get("dat"):
            out["decided_at"] = rfc3339(int(h["dat"]))
        if status == "approved":
            out["device"] = h["dev"]
            out["assertion"] = self._assertion(app, cid, h["user"], h["dev"], int(h["dat"]), now)
            if h.get("rmb") and self._settings.policy.remember_days > 0:
                out["remember_token"] = self._remember_token(app, cid, h["user"], h["rmb"],
                                                             int(h["dat"]))
        elif status == "denied":
            if h.get("dev"):  # a denial by containment (suspended, locked) has no device
                out["device"] = h["dev"]
            out["reason"] = h["rsn"]
            if h["rsn"] in USER_MESSAGE_REASONS:
                out["user_message"] = self._user_message
        if self._push is not None:
            out["delivery"] = delivery_view(h)
        return out

    def _assertion(self, app: Application, cid: str, user: str, device: str, decided_at: int,
                   now: int) -> str:
        ring = self._keyring()
        claims = {"iss": self._settings.server.base_url, "aud": app.id, "sub": user, "jti": cid, "iat": now,
                  "exp": now + ASSERTION_LIFE_S, "auth_time": decided_at, "result": "approved",
                  "device": device}
        return jws.sign(claims, ring.current.key, typ=ASSERTION_TYP, kid=ring.current.kid)

    def _remember_token(self, app: Application, cid: str, user: str, browser_hash: str,
                        decided_at: int) -> str:
        """Signed, so the server needs to store no secret: the id (`r<cid>`) is what the user's remembered
        list holds and what revocation removes."""
        ring = self._keyring()
        claims = {"iss": self._settings.server.base_url, "aud": app.id, "sub": user, "jti": f"r{cid}",
                  "bid": browser_hash, "iat": decided_at,
                  "exp": decided_at + self._settings.policy.remember_days * 86400}
        return jws.sign(claims, ring.current.key, typ=REMEMBER_TYP, kid=ring.current.kid)

    def _sign_challenge(self, cid: str, h: Mapping[str, str], did: str) -> str:
        ring = self._keyring()
        app_name = self._app_names.get(h["app"], h["app"])
        claims: dict[str, Any] = {
            "iss": self._settings.server.base_url, "aud": did, "sub": h["user"], "jti": cid,
            "nonce": h["nonce"],
            "iat": int(h["iat"]), "exp": int(h["exp"]), "app": app_name, "number_matching": bool(h["num"]),
        }
        if h["num"]:
            # How many digits to ask for (never the digits): "4" for "04" would deny as a wrong number.
            claims["number_length"] = len(h["num"])
        if h.get("purp") == ADD_DEVICE:
            # A phone that does not know `purpose` still shows something true in `app`.
            claims["purpose"] = ADD_DEVICE
            claims["app"] = f"{app_name}: add a new phone to your account"
            claims["new_device"] = {"platform": h.get("ndp", "other")}
        phone_ctx: dict[str, str] | None = None
        if "pctx" in h:
            phone_ctx = msgspec.json.decode(h["pctx"]) if h["pctx"] else None
        elif h.get("ctx"):  # written by a server from before the phone's context was reduced
            phone_ctx = login_context.for_phone(msgspec.json.decode(h["ctx"]))
        if phone_ctx:
            claims["ctx"] = phone_ctx
        return jws.sign(claims, ring.current.key, typ=CHALLENGE_TYP, kid=ring.current.kid)


def _targets(h: Mapping[str, str], did: str) -> bool:
    return did in h.get("devs", "").split(",")


def _raise_transition_failure(res: LedgerReply[Any], user_message: str = "") -> None:
    """The error for a respond.lua or cancel.lua reply that is not "ok" (their result words share meanings).
    `user_message` follows a refusal the user must act on."""
    what = res.result
    if what == "ok":
        return
    if what == "not_found":
        raise NotFound("no such challenge")
    if what == "expired":
        raise Conflict("this sign-in request has expired", code="expired")
    if what == "locked":
        raise Forbidden(f"this account is locked. {user_message}".strip(), code="locked")
    if what == "suspended":
        raise Forbidden(f"sign-in prompts for this account are suspended. {user_message}".strip(),
                        code="suspended")
    if what == "conflict":
        raise Conflict(f"this sign-in request is already {res.detail[-1]}", code="already_decided")
    raise RuntimeError(f"unexpected script result {res!r}")
