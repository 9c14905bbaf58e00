"""Settling expired prompts soon after they expire, so `ignored_prompts` and the lockout count do not wait
for the user's next sign-in.

A challenge's expiry is computed on read (no timer can be lost); what needs doing when a prompt expires
unanswered is counting it (detection rules, lockout). Every new challenge is indexed in `{expiry}:due`;
the sweeper claims the due ones (claim_due.lua: read and remove together, so several sweepers never claim
the same one) and runs settle.lua for each user. Settling is idempotent and the user's next event does it
too, so an index entry lost in a crash only delays the count; it never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog

from pushauth import clock, ids, metrics
from pushauth.alerts.store import AlertStore
from pushauth.challenges import scripts as lua
from pushauth.store import KeySpace
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger(__name__)


class ExpiryIndex:
    """The API's side: new challenges go into `{expiry}:due`, batched (one ZADD per 50 ms per process
    rather than a round trip per sign-in). The index only makes the count timely: an entry lost with a
    crashed process is settled by the user's next event instead."""

    FLUSH_S = 0.05

    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._due: dict[str, int] = {}
        self._flushing: asyncio.Task[None] | None = None

    def add(self, cid: str, exp: int) -> None:
        self._due[cid] = exp
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def flush(self) -> None:
        """Write what is buffered now (shutdown)."""
        if self._flushing is not None and not self._flushing.done():
            self._flushing.cancel()
        await self._write()

    async def _flush(self) -> None:
        await asyncio.sleep(self.FLUSH_S)
        await self._write()

    async def _write(self) -> None:
        due, self._due = self._due, {}
        if not due:
            return
        try:
            await self._redis.zadd(self._key, {k: v for k, v in due.items()})
        except STORE_DOWN_ERRORS as exc:
            log.warning("expiry_index_deferred", prompts=len(due), error=type(exc).__name__)


class ExpirySweeper:
    """The worker's side: claims the due prompts from `{expiry}:due` and settles their users."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, alerts: AlertStore, *,
                 interval_s: float = 1.0, batch: int = 500) -> None:
        self._redis = redis
        self._ks = keyspace
        self._alerts = alerts
        self._interval = interval_s
        self._batch = batch

    async def settle_due(self) -> int:
        """One pass: settle the users whose prompts are due. Returns the number of prompts claimed."""
        now = clock.now()
        due = await lua.claim_due(self._redis, self._ks.expiry_due, now=now, limit=self._batch)
        uids = {uid for uid in map(ids.challenge_uid, due) if uid is not None}
        for uid in uids:
            res = await lua.settle(self._redis, self._ks.user(uid), self._alerts.ledger_args(uid, "", now))
            await self._alerts.announce(uid, res.notes)
            metrics.IGNORED_PROMPTS.inc(int(res.detail[0]))
        return len(due)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._interval
        while not stop.is_set():
            try:
                claimed = await self.settle_due()
                backoff = self._interval
                if claimed >= self._batch:
                    continue  # more are due: no pause
            except STORE_DOWN_ERRORS as exc:
                log.warning("expiry_store_unavailable", error=type(exc).__name__)
                metrics.REDIS_ERRORS.labels("expiry").inc()
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
