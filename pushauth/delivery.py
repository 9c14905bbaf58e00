"""Push delivery: turning a new challenge into pushes, and recording what became of each.

The API only enqueues (`PushQueue.enqueue`, one stream entry per challenge); it never waits on Google
or Apple. A push worker (`workers/push.py`, or the server itself in embedded mode) runs `PushDelivery.handle`
for each entry:

    for each device the challenge targets:
        already sent                      -> skip (a reclaimed entry never pushes twice)
        revoked / no provider / stale     -> state "polling": the phone finds it by polling
                                             (GET /v1/device/challenges)
        send -> SENT                      -> state "sent"
             -> RETRY                     -> state "retrying", re-queued with backoff + jitter, honouring
                                             Retry-After, never past the challenge's expiry or max_attempts
             -> INVALID_TOKEN             -> the device's token is marked stale (the phone polls until it
                                             sends a new one); state "failed" reason "invalid_token"
             -> AUTH_ERROR / FAILED       -> state "failed" with the reason; no retry

Delivery state lives in the challenge hash (`pd:<device id>` = "<state>" or "<state>:<reason>"), so the
login flow sees it in GET /v1/challenges/{id} as `"delivery"` and it expires with the challenge.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog

from pushauth import ids
from pushauth.config import PushSettings
from pushauth.push.base import Outcome, OutcomeKind, PushMessage, PushProvider
from pushauth.store import KeySpace, reads
from pushauth.store.scripts import Script
from pushauth.store.streams import Fields, StreamConsumer, StreamNames

log = structlog.get_logger(__name__)

STREAM = "push"

# Record a device's delivery state on its challenge, but never create a stray hash for a challenge that
# has already expired out of Redis.
# KEYS: challenge   ARGV: field, value
SET_DELIVERY = Script("set_delivery", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")

# Mark a device's push token stale, unless the phone has registered a new token since we sent.
# KEYS: device   ARGV: the token the provider refused, now
MARK_STALE = Script("mark_stale", """
if redis.call('HGET', KEYS[1], 'ptok') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ptok_stale', '1', 'ptok_stale_at', ARGV[2])
return 1
""")


def delivery_view(h: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """What the login flow sees: per targeted device, its state and, for failures, why."""
    out: dict[str, dict[str, str]] = {}
    for did in filter(None, h.get("devs", "").split(",")):
        state, _, reason = h.get(f"pd:{did}", "queued").partition(":")
        out[did] = {"state": state, "reason": reason} if reason else {"state": state}
    return out


class PushQueue:
    """The producing side, used by the API: one entry per new challenge."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._r = redis
        self._names = StreamNames.for_(prefix, STREAM)

    async def enqueue(self, challenge_id: str) -> None:
        await self._r.xadd(self._names.stream, {"c": challenge_id}, maxlen=1_000_000, approximate=True)

    def enqueue_in(self, pipe: Any, challenge_id: str) -> None:
        """The same, as part of the caller's pipeline (one round trip with its other writes)."""
        pipe.xadd(self._names.stream, {"c": challenge_id}, maxlen=1_000_000, approximate=True)


class PushDelivery:
    """The consuming side: the handler a push worker runs for each stream entry."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: PushSettings, server: str,
                 providers: Mapping[str, PushProvider]) -> None:
        self._r = redis
        self._ks = keyspace
        self._s = settings
        self._server = server
        self._providers = providers
        self.consumer: StreamConsumer | None = None  # set by `consumer()`; used to schedule retries

    def consumer_for(self, name: str) -> StreamConsumer:
        self.consumer = StreamConsumer(self._r, StreamNames.for_(self._ks.p, STREAM), name, self.handle,
                                       reclaim_idle_s=self._s.reclaim_idle_s,
                                       dead_letter_after=self._s.dead_letter_after)
        return self.consumer

    async def handle(self, entry_id: str, fields: Fields) -> None:
        cid = fields["c"]
        uid = ids.challenge_uid(cid)
        if uid is None:
            raise ValueError(f"not a challenge id: {cid[:64]!r}")  # poison: dead-lettered after retries
        key = self._ks.challenge(uid, cid)
        h = await reads.hgetall(self._r, key)
        now = time.time()
        if not h or h.get("st") != "pending" or int(h["exp"]) <= now:
            return  # decided, cancelled or expired meanwhile: nothing to push
        attempt = int(fields.get("n", "1"))
        targets = [fields["d"]] if "d" in fields else list(filter(None, h.get("devs", "").split(",")))
        message = PushMessage(cid, self._server, int(h["exp"]))
        for did in targets:
            await self._deliver(uid, key, h, did, message, attempt)

    async def _deliver(self, uid: str, key: str, h: Mapping[str, str], did: str, message: PushMessage,
                       attempt: int) -> None:
        if h.get(f"pd:{did}", "").startswith("sent"):
            return  # acknowledged by the provider before a crash: never push twice
        dev = await reads.hgetall(self._r, self._ks.device(uid, did))
        provider = self._providers.get(dev.get("pprov", ""))
        if dev.get("st") != "active" or not dev.get("ptok") or dev.get("ptok_stale") == "1":
            await self._record(key, did, "polling")
            return
        if provider is None:
            await self._record(key, did, "polling", "provider_not_configured")
            return
        outcome = await provider.send(dev["ptok"], message)
        await self._after(uid, key, did, dev["ptok"], message, attempt, outcome)

    async def _after(self, uid: str, key: str, did: str, token: str, message: PushMessage, attempt: int,
                     outcome: Outcome) -> None:
        kind = outcome.kind
        fields: dict[str, Any] = {"device": did, "outcome": kind.value, "reason": outcome.reason,
                                  "attempt": attempt}
        if kind is OutcomeKind.SENT:
            await self._record(key, did, "sent")
        elif kind is OutcomeKind.RETRY:
            due = self._retry_at(attempt, outcome.retry_after_s)
            if attempt < self._s.max_attempts and due < message.expires_at and self.consumer is not None:
                retry = {"c": message.challenge_id, "d": did, "n": str(attempt + 1)}
                await self.consumer.schedule(retry, due)
                await self._record(key, did, "retrying", outcome.reason)
            else:
                await self._record(key, did, "failed", outcome.reason or "retries_exhausted")
        elif kind is OutcomeKind.INVALID_TOKEN:
            await MARK_STALE(self._r, [self._ks.device(uid, did)], [token, int(time.time())])
            await self._record(key, did, "failed", "invalid_token")
        else:
            if kind is OutcomeKind.AUTH_ERROR:
                log.error("push_provider_auth_error", **fields)
            await self._record(key, did, "failed", outcome.reason or kind.value)
        if kind is not OutcomeKind.SENT:
            log.info("push_not_sent", **fields)

    def _retry_at(self, attempt: int, retry_after_s: float | None) -> float:
        # Exponential backoff with full jitter, but never sooner than the provider asked.
        cap = min(self._s.backoff_max_s, self._s.backoff_base_s * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)  # noqa: S311 (jitter, not security)
        return time.time() + max(delay, retry_after_s or 0.0)

    async def _record(self, key: str, did: str, state: str, reason: str = "") -> None:
        await SET_DELIVERY(self._r, [key], [f"pd:{did}", f"{state}:{reason}" if reason else state])
