"""Push delivery: turning a new challenge into pushes, and recording what became of each.

The API only enqueues (one stream entry per challenge); it never waits on Google or Apple. On a single
Redis or Sentinel the entry is written by create_challenge.lua itself, in the call that creates the
challenge (`PushQueue.script_stream`); on Cluster, where the stream is in a slot of its own, by a separate
XADD (`PushQueue.enqueue`). A push worker (`workers/push.py`, or the server itself in embedded mode)
handles each entry:

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

The same stream carries account notices (`t` = "notice", one entry per phone: a new phone was added to
the user's account): a push `{"type": "notice", "server"}` that makes the phone read its notices. Retried
like a prompt (for a day at most); a phone without push reads them when its app opens, so nothing is
recorded beyond logs and metrics.

A worker handles the entries of one XREADGROUP batch together (`handle_batch`, the stream consumer's
batch handler): one pipeline reads every challenge with its targeted devices (READ_TARGETS, one Lua call
per challenge), the sends run concurrently, and each outcome's writes (state, retry, stale token) are
handed to the consumer, which stores them in batched pipelines and acks an entry only once all of its
writes are stored: a push the provider accepted is recorded `sent` before its entry is acked, so a crash
and a reclaim never push it again. `handle` is the same for one entry, writing before it returns.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog

from pushauth import ids, metrics
from pushauth.config import PushSettings
from pushauth.push import scripts as lua
from pushauth.push.base import Outcome, OutcomeKind, PushMessage, PushProvider
from pushauth.store import KeySpace
from pushauth.store.connection import is_cluster
from pushauth.store.scripts import ArgT
from pushauth.store.streams import Entry, Fields, StreamConsumer, StreamNames, schedule_command

log = structlog.get_logger(__name__)

STREAM = "push"
# The stream's cap (XADD MAXLEN ~): far beyond any backlog a worker could clear before the prompts expire.
STREAM_MAXLEN = 1_000_000
# A notice push is worth retrying for a day; after that the phone has surely been opened.
NOTICE_LIFE_S = 86400


def delivery_view(h: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """What the login flow sees: per targeted device, its state and, for failures, why."""
    out: dict[str, dict[str, str]] = {}
    for did in filter(None, h.get("devs", "").split(",")):
        state, _, reason = h.get(f"pd:{did}", "queued").partition(":")
        out[did] = {"state": state, "reason": reason} if reason else {"state": state}
    return out


class PushQueue:
    """The producing side, used by the API: one entry (`{"c": <challenge id>}`) per new challenge.

    `script_stream` is the stream's key for create_challenge.lua to write the entry itself, saving a round
    trip on every sign-in: on a single Redis or Sentinel (one node holds every key). On Cluster it is None:
    a script may only touch its own slot (the user's), the stream's is `{push}`, so the caller sends
    `enqueue`'s XADD after the script instead."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._names = StreamNames.for_(prefix, STREAM)
        self.script_stream: str | None = None if is_cluster(redis) else self._names.stream

    async def enqueue(self, challenge_id: str) -> None:
        await self._redis.xadd(self._names.stream, {"c": challenge_id}, maxlen=STREAM_MAXLEN,
                               approximate=True)

    def enqueue_in(self, pipe: Any, challenge_id: str) -> None:
        """The same, as part of the caller's pipeline (one round trip with its other writes)."""
        pipe.xadd(self._names.stream, {"c": challenge_id}, maxlen=STREAM_MAXLEN, approximate=True)

    async def enqueue_notice(self, uid: str, device_ids: Sequence[str]) -> None:
        """A notice push to each of these phones of one user (their notices are already written)."""
        expires = str(int(time.time()) + NOTICE_LIFE_S)
        pipe = self._redis.pipeline(transaction=False)
        for did in device_ids:
            pipe.xadd(self._names.stream, {"t": "notice", "u": uid, "d": did, "x": expires},
                      maxlen=STREAM_MAXLEN, approximate=True)
        await pipe.execute()


class _Sink(Protocol):
    """Where outcomes go: the stream consumer (batched, acks after the writes), or `handle`'s own list."""

    def write(self, entry_id: str, *command: ArgT) -> None: ...

    def done(self, entry_id: str) -> None: ...


class _Writes:
    """`handle`'s sink: the writes of one entry, stored by `handle` itself before it returns."""

    def __init__(self) -> None:
        self.commands: list[tuple[ArgT, ...]] = []
        self.done_ids: set[str] = set()

    def write(self, entry_id: str, *command: ArgT) -> None:
        self.commands.append(command)

    def done(self, entry_id: str) -> None:
        self.done_ids.add(entry_id)


class _Job:
    """One stream entry being delivered: sends still out, and whether one of them crashed."""

    __slots__ = ("attempt", "cid", "entry_id", "failed", "key", "remaining", "target", "uid")

    def __init__(self, entry_id: str, cid: str, uid: str, key: str, attempt: int, target: str) -> None:
        self.entry_id = entry_id
        self.cid = cid
        self.uid = uid
        self.key = key
        self.attempt = attempt
        self.target = target
        self.remaining = 0
        self.failed = False


class PushDelivery:
    """The consuming side: what a push worker runs for the entries of the push stream.

    Consumes the push stream (`<prefix>:{push}:stream`, its retries `:delayed`, its dead letter `:dead`)
    through a `StreamConsumer` (`consumer_for`, batch handler `handle_batch`). Reads each challenge and
    its devices (script read_targets), writes the delivery state `pd:<device id>` on the challenge hash
    (set_delivery) and marks refused push tokens stale on the device hash (mark_stale), all through
    `pushauth.push.scripts`; it sends through the configured `PushProvider`s. Run by the push worker
    (`workers/push.py`), or by the server itself in embedded mode (`pushauth.web.app`)."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: PushSettings, server: str,
                 providers: Mapping[str, PushProvider]) -> None:
        self._redis = redis
        self._ks = keyspace
        self._settings = settings
        self._server = server
        self._providers = providers
        self._names = StreamNames.for_(keyspace.prefix, STREAM)
        self.consumer: StreamConsumer | None = None  # set by `consumer_for()`

    def consumer_for(self, name: str) -> StreamConsumer:
        self.consumer = StreamConsumer(self._redis, self._names, name, batch_handler=self.handle_batch,
                                       reclaim_idle_s=self._settings.reclaim_idle_s,
                                       dead_letter_after=self._settings.dead_letter_after)
        return self.consumer

    async def handle_batch(self, entries: list[Entry]) -> None:
        """The consumer's batch handler: each entry is reported `done` to the consumer once its pushes
        have come back and their outcomes are queued as writes; an entry that cannot be handled (not a
        challenge id, a failed read) is left pending (reclaimed, dead-lettered if it keeps failing)."""
        assert self.consumer is not None
        await self._deliver(entries, self.consumer)

    async def handle(self, entry_id: str, fields: Fields) -> None:
        """One entry, on its own: returns once its outcomes are stored; raises if it could not be
        handled (an entry a consumer must not ack)."""
        sink = _Writes()
        await self._deliver([(entry_id, fields)], sink)
        if sink.commands:
            pipe = self._redis.pipeline(transaction=False)
            for command in sink.commands:
                pipe.execute_command(*command)
            await pipe.execute()
        if entry_id not in sink.done_ids:
            raise ValueError(f"push stream entry {entry_id} could not be handled")

    async def _deliver(self, entries: list[Entry], sink: _Sink) -> None:
        notices = [(entry_id, fields) for entry_id, fields in entries if fields.get("t") == "notice"]
        if notices:
            await self._deliver_notices(notices, sink)
            entries = [e for e in entries if e[1].get("t") != "notice"]
            if not entries:
                return
        now = time.time()
        jobs: list[_Job] = []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            job = _job(entry_id, fields, self._ks)
            if job is None:
                log.error("push_entry_invalid", entry=entry_id, fields=str(fields)[:200])
                continue  # poison: dead-lettered after dead_letter_after deliveries
            pipe.execute_command(*lua.read_targets_command(
                job.key, device_prefix=self._ks.device(job.uid, ""), now=now, device_id=job.target))
            jobs.append(job)
        if not jobs:
            return
        replies = await pipe.execute(raise_on_error=False)
        sends = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception):
                log.error("push_read_failed", entry=job.entry_id, error=str(reply))
                continue
            targets = lua.decode_targets(reply)
            if targets is None:
                sink.done(job.entry_id)  # decided, cancelled or expired meanwhile: nothing to push
                continue
            message = PushMessage(job.cid, self._server, targets.expires_at)
            for target in targets.devices:
                did, token = target.device_id, target.token
                if target.delivery and target.delivery.startswith("sent"):
                    continue  # acknowledged by the provider before a crash: never push twice
                provider = self._providers.get(target.provider or "")
                if target.status != "active" or not token or target.stale == "1":
                    sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did,
                                                                       state="polling"))
                elif provider is None:
                    sink.write(job.entry_id, *lua.set_delivery_command(
                        job.key, device_id=did, state="polling", reason="provider_not_configured"))
                else:
                    job.remaining += 1
                    sends.append(self._send(job, did, token, provider, message, sink))
            if not job.remaining:
                sink.done(job.entry_id)
        if sends:
            await asyncio.gather(*sends)

    async def _send(self, job: _Job, did: str, token: str, provider: PushProvider, message: PushMessage,
                    sink: _Sink) -> None:
        try:
            with metrics.PUSH_SEND_SECONDS.labels(provider.name).time():
                outcome = await provider.send(token, message)
        except Exception:  # a provider must return an Outcome; if one raises, the entry is not finished
            log.exception("push_send_crashed", entry=job.entry_id, device=did)
            job.failed = True
        else:
            metrics.PUSH_SENDS.labels(provider.name, outcome.kind.value).inc()
            if outcome.kind is OutcomeKind.INVALID_TOKEN:
                metrics.PUSH_STALE_TOKENS.labels(provider.name).inc()
            elif outcome.kind is OutcomeKind.AUTH_ERROR:
                metrics.PUSH_AUTH_ERRORS.labels(provider.name).inc()
            self._after(job, did, token, message, outcome, sink)
        job.remaining -= 1
        if not job.remaining and not job.failed:
            sink.done(job.entry_id)

    def _after(self, job: _Job, did: str, token: str, message: PushMessage, outcome: Outcome,
               sink: _Sink) -> None:
        kind = outcome.kind
        if kind is OutcomeKind.SENT:
            sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did, state="sent"))
            return
        attempt = job.attempt
        fields: dict[str, Any] = {"entry": job.entry_id, "device": did, "outcome": kind.value,
                                  "reason": outcome.reason, "attempt": attempt}
        if kind is OutcomeKind.RETRY:
            due = self._retry_at(attempt, outcome.retry_after_s)
            if attempt < self._settings.max_attempts and due < message.expires_at:
                sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did, state="retrying",
                                                                   reason=outcome.reason))
                retry = {"c": message.challenge_id, "d": did, "n": str(attempt + 1)}
                sink.write(job.entry_id, *schedule_command(self._names, retry, due))
            else:
                why = outcome.reason or "retries_exhausted"
                sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did, state="failed",
                                                                   reason=why))
        elif kind is OutcomeKind.INVALID_TOKEN:
            sink.write(job.entry_id, *lua.mark_stale_command(self._ks.device(job.uid, did), token=token,
                                                             now=int(time.time())))
            sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did, state="failed",
                                                               reason="invalid_token"))
        else:
            if kind is OutcomeKind.AUTH_ERROR:
                log.error("push_provider_auth_error", **fields)
            sink.write(job.entry_id, *lua.set_delivery_command(job.key, device_id=did, state="failed",
                                                               reason=outcome.reason or kind.value))
        log.info("push_not_sent", **fields)

    async def _deliver_notices(self, entries: list[Entry], sink: _Sink) -> None:
        """Notice pushes: read each phone's token, send, retry transient failures, mark dead tokens."""
        targets: list[tuple[str, Fields, str, str, int]] = []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            uid, did, raw_expires = fields.get("u", ""), fields.get("d", ""), fields.get("x", "")
            if not (ids.device_uid(did) == uid and uid and raw_expires.isdigit()):
                log.error("push_entry_invalid", entry=entry_id, fields=str(fields)[:200])
                continue  # poison: dead-lettered after dead_letter_after deliveries
            pipe.hmget(self._ks.device(uid, did), "st", "ptok", "ptok_stale", "pprov")
            targets.append((entry_id, fields, uid, did, int(raw_expires)))
        if not targets:
            return
        rows = await pipe.execute(raise_on_error=False)
        sends = []
        for (entry_id, fields, uid, did, expires), row in zip(targets, rows, strict=True):
            if isinstance(row, Exception):
                log.error("push_read_failed", entry=entry_id, error=str(row))
                continue
            st, token, stale, prov = row
            provider = self._providers.get(prov or "")
            if st != "active" or not token or stale == "1" or provider is None or time.time() >= expires:
                sink.done(entry_id)  # the phone reads its notices when its app opens
                continue
            message = PushMessage("", self._server, expires, kind="notice")
            sends.append(self._send_notice(entry_id, fields, uid, did, token, provider, message, sink))
        if sends:
            await asyncio.gather(*sends)

    async def _send_notice(self, entry_id: str, fields: Fields, uid: str, did: str, token: str,
                           provider: PushProvider, message: PushMessage, sink: _Sink) -> None:
        try:
            with metrics.PUSH_SEND_SECONDS.labels(provider.name).time():
                outcome = await provider.send(token, message)
        except Exception:  # a provider must return an Outcome; if one raises, the entry stays pending
            log.exception("push_send_crashed", entry=entry_id, device=did)
            return
        metrics.PUSH_SENDS.labels(provider.name, outcome.kind.value).inc()
        attempt = int(fields.get("n", "1")) if fields.get("n", "1").isdigit() else 1
        if outcome.kind is OutcomeKind.RETRY:
            due = self._retry_at(attempt, outcome.retry_after_s)
            if attempt < self._settings.max_attempts and due < message.expires_at:
                sink.write(entry_id, *schedule_command(self._names, {**fields, "n": str(attempt + 1)}, due))
        elif outcome.kind is OutcomeKind.INVALID_TOKEN:
            metrics.PUSH_STALE_TOKENS.labels(provider.name).inc()
            sink.write(entry_id, *lua.mark_stale_command(self._ks.device(uid, did), token=token,
                                                         now=int(time.time())))
        elif outcome.kind is OutcomeKind.AUTH_ERROR:
            metrics.PUSH_AUTH_ERRORS.labels(provider.name).inc()
            log.error("push_provider_auth_error", entry=entry_id, device=did, reason=outcome.reason)
        if outcome.kind is not OutcomeKind.SENT:
            log.info("push_not_sent", entry=entry_id, device=did, outcome=outcome.kind.value,
                     reason=outcome.reason, attempt=attempt, notice=True)
        sink.done(entry_id)

    def _retry_at(self, attempt: int, retry_after_s: float | None) -> float:
        # Exponential backoff with full jitter, but never sooner than the provider asked.
        cap = min(self._settings.backoff_max_s, self._settings.backoff_base_s * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)  # noqa: S311 (jitter, not security)
        return time.time() + max(delay, retry_after_s or 0.0)


def _job(entry_id: str, fields: Fields, keyspace: KeySpace) -> _Job | None:
    cid = fields.get("c", "")
    uid = ids.challenge_uid(cid)
    if uid is None:
        return None
    target = fields.get("d", "")
    if target and ids.device_uid(target) != uid:  # a retry names one of the challenge user's devices
        return None
    try:
        attempt = int(fields.get("n", "1"))
    except ValueError:
        return None
    return _Job(entry_id, cid, uid, keyspace.challenge(uid, cid), attempt, target)
