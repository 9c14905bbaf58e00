"""Notifications that wait for a prompt's decision and then go out over HTTP: CIBA pings (the client's
notification endpoint, CIBA Core 10.2) and Keycloak channel callbacks (pushauth/oidc/keycloak.py). They
survive a restart of the server that took the request.

Each is written to Redis when its request is taken (`{notify}:n:<id>`, JSON, living as long as the prompt
and its retries) and its id put in the due set (`{notify}:due`) with a lease: the server that took it follows
the prompt in a task, renewing the lease while it waits (the challenge's own decision event wakes it, as
it wakes a login flow's long poll), then POSTs (retried, below), and deletes both. A server that stops
gives its leases back at once; one that dies lets them run out. Every server sweeps the due set every few
seconds and adopts what is there with an ended lease (claim_notifications.lua: the claim and the new lease
in one step, so only one server adopts each), and follows it the same way: the decision is in the
challenge, whenever it came.

Retries follow the alert webhooks' rules (pushauth/alerts/delivery.py) on a schedule of seconds, not hours:
a failure to connect, a timeout, a 5xx, a 408 or a 429 is tried again after the next step of
`RETRY_SCHEDULE_S`, or after the receiver's Retry-After when longer, up to the longest step
(`clock.retry_delay_s`, the webhooks' own rule). Any other answer is final: a CIBA client's 4xx is its word
on this request, and Keycloak's 403 means the request is no longer pending. After the last step the
notification has failed: counted (`pushauth_oidc_notifications_total{result="failed"}`), logged as a
warning with the last reason and the receiver's origin, and dropped. Unlike an alert's dead letter there
is nothing worth replaying: the CIBA request lives only a minute past its prompt (a ping client may still
ask the token endpoint in that time), and Keycloak's own client stops waiting when the bearer expires.

Delivery is at least once: a server that stalls past its lease while another adopts its notification may
send it twice. Both receivers take that: a CIBA client fetches its tokens once whatever it is told, and
Keycloak answers a second callback 403 (no longer pending), which is final here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import msgspec
import redis.asyncio as aioredis
import structlog

from pushauth import clock, metrics
from pushauth.alerts.settings import url_origin
from pushauth.challenges.service import Challenges
from pushauth.config import Application
from pushauth.errors import PushAuthError
from pushauth.oidc.keycloak import CALLBACK_STATUS
from pushauth.store import STORE_DOWN_ERRORS, KeySpace
from pushauth.store.scripts import Script

log = structlog.get_logger(__name__)

LEASE_S: Final = 30  # how long a holder's claim lasts without renewal
CLOSE_WAIT_S: Final = 5.0  # a shutdown waits at most this long for its followers to stop
WAIT_S: Final = 10.0  # one wait on the prompt's decision (the lease is renewed between waits)
SWEEP_S: Final = 2.0
SWEEP_BATCH: Final = 100
# Waits before each retry, after a first try at once: 51 s in all, well inside the minute a CIBA request
# outlives its prompt, and inside RETRY_WINDOW_S with every step stretched by a Retry-After.
RETRY_SCHEDULE_S: Final = (1.0, 5.0, 15.0, 30.0)
POST_TIMEOUT_S: Final = 10.0
RETRY_WINDOW_S: Final = 180  # a record outlives its deadline by this much: every try, at its longest
# Answers worth another try: the receiver is briefly unable (408 timeout, 429 too many, 5xx).
_RETRIED: Final = frozenset({408, 429})
_STORE_DOWN: Final[tuple[type[Exception], ...]] = (PushAuthError, *STORE_DOWN_ERRORS)

CLAIM = Script.load("pushauth.oidc", "claim_notifications.lua")


class Notification(msgspec.Struct, kw_only=True, frozen=True):
    """What to send, to whom, once which prompt is decided. `bearer` is the receiver's credential for this
    one request (the ping's client_notification_token, the realm's token); never logged."""

    kind: Literal["ping", "keycloak"]
    application: str
    challenge_id: str
    url: str
    bearer: str
    deadline: int  # give up waiting for a decision after this (Unix seconds): the prompt has expired
    auth_req_id: str = ""  # ping: what the notification carries
    sender: str = ""  # for the logs: the CIBA client or the Keycloak realm

    def __repr__(self) -> str:
        return f"Notification(kind={self.kind!r}, sender={self.sender!r}, challenge_id={self.challenge_id!r})"

    def body(self, status: str) -> dict[str, Any]:
        if self.kind == "ping":
            return {"auth_req_id": self.auth_req_id}
        # Keycloak's AuthenticationChannelResponse; an undecided prompt at the deadline has expired
        return {"status": CALLBACK_STATUS.get(status, "CANCELLED")}


@dataclass(slots=True)
class _Answer:
    """What the POSTs came to."""

    outcome: str  # "taken", "refused", "retry"; "failed" once the retries are spent
    reason: str  # short, loggable: "http_503", "timeout", "connection"
    retry_after_s: float | None = None  # the receiver's Retry-After, when it sent one
    attempts: int = 0


_decode = msgspec.json.Decoder(Notification).decode
_encode = msgspec.json.Encoder().encode


class Outbox:
    """Owns the `{notify}` keys and, in this process, the tasks following them (see the module docstring).
    Built by the web layer's cleanup context, which runs `sweep_forever` and `close`s it on shutdown."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, challenges: Challenges,
                 applications: Mapping[str, Application]) -> None:
        self._redis = redis
        self._ks = keyspace
        self._challenges = challenges
        self._applications = applications
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        # Set by close(). Cancelling a task is not enough on its own: on Python 3.11 a cancel that lands as
        # asyncio.wait_for times out can be swallowed (gh-86296), and the follower, its Redis now closed,
        # would then keep waiting out the prompt's deadline and hold up the shutdown.
        self._closing = False

    async def add(self, notification: Notification) -> None:
        """Keep `notification` and follow it from this process."""
        nid = secrets.token_urlsafe(16)
        ttl = max(1, notification.deadline - int(time.time())) + RETRY_WINDOW_S
        pipe = self._redis.pipeline(transaction=True)  # one slot ({notify}): the record and its lease
        pipe.set(self._ks.notification(nid), _encode(notification), ex=ttl)
        pipe.zadd(self._ks.notify_due, {nid: time.time() + LEASE_S})
        await pipe.execute()
        self._follow(nid, notification)

    async def sweep(self) -> int:
        """Adopt the notifications whose holder's lease ended; how many were adopted."""
        now = time.time()
        claimed = await CLAIM(self._redis, [self._ks.notify_due], [now, now + LEASE_S, SWEEP_BATCH])
        adopted = 0
        for raw_id in claimed:
            nid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if nid in self._tasks:
                continue
            raw = await self._redis.get(self._ks.notification(nid))
            if raw is None:  # delivered (or lived out) between the claim and here
                await self._redis.zrem(self._ks.notify_due, nid)
                continue
            self._follow(nid, _decode(raw))
            adopted += 1
            log.info("notification_adopted", kind=_decode(raw).kind)
        return adopted

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except _STORE_DOWN as exc:
                log.warning("notification_sweep_failed", error=type(exc).__name__)
            await asyncio.sleep(SWEEP_S)

    async def close(self) -> None:
        """Stop following, and give the leases back so that another server adopts them at once."""
        self._closing = True
        held = list(self._tasks)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        if held:
            with contextlib.suppress(*_STORE_DOWN):  # else the leases run out by themselves
                await self._redis.zadd(self._ks.notify_due, dict.fromkeys(held, 0), xx=True)
        if self._http is not None:
            await self._http.close()

    def _follow(self, nid: str, notification: Notification) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(nid, notification))
        self._tasks[nid] = task
        task.add_done_callback(lambda _t: self._tasks.pop(nid, None))

    async def _renew(self, nid: str, seconds: float) -> None:
        # Redis down: kept trying; at worst another server adopts it too (at least once).
        with contextlib.suppress(*_STORE_DOWN):
            await self._redis.zadd(self._ks.notify_due, {nid: time.time() + seconds}, xx=True)

    async def _deliver(self, nid: str, notification: Notification) -> None:
        try:
            status = await self._decision(nid, notification)
        except Exception:  # a bug, not an outage (those are waited out): sent as undecided, not re-adopted
            log.exception("notification_follow_failed", kind=notification.kind, sender=notification.sender)
            status = "cancelled"
        body = notification.body(status)
        answer = await self._send(nid, notification, body)
        metrics.OIDC_NOTIFICATIONS.labels(notification.kind, answer.outcome).inc()
        where = {"kind": notification.kind, "sender": notification.sender, "decision": status,
                 "target": url_origin(notification.url), "reason": answer.reason, "attempts": answer.attempts}
        if answer.outcome == "taken":
            log.info("notification_taken", **where)
        else:  # refused, or every retry spent: the receiver never heard of the decision
            log.warning(f"notification_{answer.outcome}", **where)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._ks.notify_due, nid)
            pipe.delete(self._ks.notification(nid))
            await pipe.execute()
        except _STORE_DOWN:
            pass  # its record expires; a sweep may send it again (at least once)

    async def _decision(self, nid: str, notification: Notification) -> str:
        """The prompt's status once it is no longer pending, or at the deadline."""
        application = self._applications.get(notification.application)
        if application is None:  # taken before a configuration change that removed its application
            return "cancelled"
        status = "pending"
        while status == "pending" and time.time() < notification.deadline:
            if self._closing:  # stop following: the lease goes back and another server adopts it
                raise asyncio.CancelledError
            await self._renew(nid, WAIT_S + LEASE_S)
            started = time.monotonic()
            try:
                view = await self._challenges.status(application, notification.challenge_id, WAIT_S)
                status = str(view.get("status"))
            except _STORE_DOWN:  # Redis unreachable: the decision is there when it is back
                status = "pending"
            if status == "pending" and time.monotonic() - started < 1.0:
                await asyncio.sleep(1.0)  # the wait was cut short (Redis down, a shutdown): not in a spin
        return status

    async def _send(self, nid: str, notification: Notification, body: dict[str, Any]) -> _Answer:
        """Try at once, then after each step of the schedule while the answer is worth another try."""
        answer = _Answer("failed", "")
        for attempt in range(len(RETRY_SCHEDULE_S) + 1):
            delay = 0.0 if attempt == 0 else clock.retry_delay_s(RETRY_SCHEDULE_S, attempt - 1,
                                                                 answer.retry_after_s)
            if self._closing:
                raise asyncio.CancelledError
            await self._renew(nid, delay + POST_TIMEOUT_S + LEASE_S)
            await asyncio.sleep(delay)
            answer = await self._post(notification, body)
            answer.attempts = attempt + 1
            if answer.outcome != "retry":
                return answer
            log.info("notification_retry", kind=notification.kind, sender=notification.sender,
                     attempt=attempt + 1, reason=answer.reason, retry_after_s=answer.retry_after_s)
        answer.outcome = "failed"
        return answer

    async def _post(self, notification: Notification, body: dict[str, Any]) -> _Answer:
        """One POST: "taken" (2xx), "refused" (final), or "retry" (see `_RETRIED`)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S))
        headers = {"Authorization": f"Bearer {notification.bearer}"}
        try:
            # Not redirected: the bearer goes to the configured URL only.
            async with self._http.post(notification.url, json=body, headers=headers,
                                       allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return _Answer("taken", f"http_{resp.status}")
                outcome = "retry" if resp.status >= 500 or resp.status in _RETRIED else "refused"
                wait = clock.retry_after_s(resp.headers.get("Retry-After"))
                return _Answer(outcome, f"http_{resp.status}", wait)
        except TimeoutError:
            return _Answer("retry", "timeout")
        except aiohttp.ClientError as exc:
            return _Answer("retry", "connection" if isinstance(exc, aiohttp.ClientConnectionError)
                           else "bad_response")

__all__ = ["Notification", "Outbox"]
