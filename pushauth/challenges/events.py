"""Waking login flows that wait on a challenge, across server instances.

Each server process keeps ONE pub/sub subscription to `{p}:events`. The scripts that decide or cancel a
challenge PUBLISH `"<cid> <status> <decided_at> <device> <reason>"` in the same atomic step as the
transition, so whichever instance took the answer, every instance hears it at once and resolves its
local waiters for that challenge. The message carries the decision, so a woken waiter needs no further
Redis read.

If the subscription drops (Redis restart, failover), every local waiter is woken with `None` and re-reads
the challenge itself; the listener reconnects with backoff (at most 1 s) and wakes every waiter again once
subscribed, since a decision published in between reached nobody. A waiter never depends on the message
alone: it always has a deadline and reads the state when woken without a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    challenge_id: str
    status: str
    decided_at: int
    device_id: str | None
    reason: str | None
    # Redis's clock when the decision was published (answers only), for the time-to-notify metric.
    published_at: float | None = None

    @classmethod
    def parse(cls, raw: bytes | str) -> Decision | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(" ")
        if len(parts) not in (5, 6) or not parts[2].isdigit():
            return None
        cid, status, at, dev, reason = parts[:5]
        published = None
        if len(parts) == 6:
            try:
                published = float(parts[5])
            except ValueError:
                return None
        return cls(cid, status, int(at), None if dev == "-" else dev, None if reason == "-" else reason,
                   published)


class ChallengeEvents:
    def __init__(self, redis: aioredis.Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._waiters: dict[str, set[asyncio.Future[Decision | None]]] = {}
        self.connected = asyncio.Event()
        self.closing = False

    @contextlib.contextmanager
    def watch(self, challenge_id: str) -> Iterator[asyncio.Future[Decision | None]]:
        """Register interest *before* reading the challenge, so no decision can slip between the read and
        the wait."""
        fut: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(challenge_id, set()).add(fut)
        try:
            yield fut
        finally:
            waiters = self._waiters.get(challenge_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[challenge_id]

    def close(self) -> None:
        """Shutting down: wake every waiter now; they answer with the state they read (a login flow
        whose answer is still pending asks again, and another instance takes it)."""
        self.closing = True
        self._wake_all()

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def _dispatch(self, decision: Decision) -> None:
        for fut in self._waiters.get(decision.challenge_id, ()):
            if not fut.done():
                fut.set_result(decision)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def run(self) -> None:
        """The listener task, owned by the app's cleanup context. Runs until cancelled, or until `close()`
        once the read it waits on (at most 5 s) returns. A cancellation was once lost inside redis-py's
        pub/sub read (most likely landing as its own timeout fired; a 180 s hang at shutdown, once in
        ~900 tests), so the owner cancels again until the task is done, and the loops stop when closing."""
        backoff = 0.1
        while not self.closing:
            try:
                # A Redis Cluster client must know the slot map before it can place a subscription.
                initialize = getattr(self._redis, "initialize", None)
                if initialize is not None:
                    await initialize()
            except STORE_DOWN_ERRORS as exc:
                log.warning("events_disconnected", error=type(exc).__name__, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.connected.set()
                # Decisions published while we were not subscribed are lost to us: wake every waiter so
                # each reads its challenge again now that we listen.
                self._wake_all()
                backoff = 0.1
                while not self.closing:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    decision = Decision.parse(msg["data"])
                    if decision is not None:
                        self._dispatch(decision)
            except STORE_DOWN_ERRORS as exc:
                self.connected.clear()
                self._wake_all()
                log.warning("events_disconnected", error=type(exc).__name__, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                # Short cap: while unsubscribed, waiters can only learn of decisions by reading.
                backoff = min(backoff * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
