"""A plain Redis-stream consumer: consumer groups, crash recovery, poison entries, delayed retries.

    XREADGROUP     several consumers (workers) share one stream; each entry goes to one of them
    XACK           only after the handler finished; a crash leaves the entry pending
    XAUTOCLAIM     entries another consumer left pending for `reclaim_idle_s` are taken over
    dead letter    an entry delivered `dead_letter_after` times without an ack (its handler crashed the
                   worker or raised each time) is copied to `<stream>:dead` and acked, so one bad entry
                   cannot wedge the stream; the security team can inspect and replay it
    delayed        `schedule()` parks an entry in a sorted set until it is due, then moves it back into
                   the stream (one Lua script: move-then-delete is atomic, so nothing is lost or doubled)

The stream, its delayed set and its dead-letter stream share one hash tag, so the move script works on
Redis Cluster. The handler decides what an entry means; this module only guarantees at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog

from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.scripts import Script

log = structlog.get_logger(__name__)

Fields = dict[str, str]
Handler = Callable[[str, Fields], Awaitable[None]]

# KEYS: delayed zset, stream   ARGV: now, max entries, stream maxlen
MOVE_DUE = Script("move_due", """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fields = cjson.decode(member)
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(flat))
  redis.call('ZREM', KEYS[1], member)
end
return #due
""")


@dataclass(frozen=True, slots=True)
class StreamNames:
    stream: str
    delayed: str
    dead: str
    group: str

    @classmethod
    def for_(cls, prefix: str, name: str) -> StreamNames:
        tag = f"{prefix}:{{{name}}}"
        return cls(f"{tag}:stream", f"{tag}:delayed", f"{tag}:dead", name)


class StreamConsumer:
    def __init__(self, redis: aioredis.Redis, names: StreamNames, consumer: str, handler: Handler, *,
                 batch: int = 128, reclaim_idle_s: float = 15.0, dead_letter_after: int = 5,
                 maxlen: int = 1_000_000, block_ms: int = 1000) -> None:
        self._r = redis
        self.names = names
        self.consumer = consumer
        self._handler = handler
        self._batch = batch
        self._reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self._dead_after = dead_letter_after
        self._maxlen = maxlen
        self._block_ms = block_ms
        self._inflight: set[asyncio.Task[None]] = set()

    # -- producing -------------------------------------------------------------------------------------

    async def add(self, fields: Fields) -> str:
        entry: dict[Any, Any] = fields
        return str(await self._r.xadd(self.names.stream, entry, maxlen=self._maxlen, approximate=True))

    async def schedule(self, fields: Fields, due: float) -> None:
        """Put `fields` back into the stream at time `due` (Unix seconds)."""
        member = _json(fields)
        await self._r.zadd(self.names.delayed, {member: due})

    # -- consuming -------------------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self._r.xgroup_create(self.names.stream, self.names.group, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then wait for in-flight handlers. Redis outages are waited out."""
        loops = [asyncio.create_task(self._guard(self._read_loop, stop)),
                 asyncio.create_task(self._guard(self._reclaim_loop, stop)),
                 asyncio.create_task(self._guard(self._delayed_loop, stop))]
        await stop.wait()
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.drain()

    async def drain(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _guard(self, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                await loop(stop)
                return
            except STORE_DOWN_ERRORS as exc:
                log.warning("stream_store_unavailable", stream=self.names.stream, error=type(exc).__name__)
            except rex.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHALL, a restart without AOF)
                    with contextlib.suppress(*STORE_DOWN_ERRORS):
                        await self.ensure_group()
                else:
                    log.exception("stream_loop_error", stream=self.names.stream)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _read_loop(self, stop: asyncio.Event) -> None:
        await self.ensure_group()
        while not stop.is_set():
            reply = await self._r.xreadgroup(self.names.group, self.consumer, {self.names.stream: ">"},
                                             count=self._batch, block=self._block_ms)
            for _stream, entries in cast(list[tuple[str, list[tuple[str, Fields]]]], reply or []):
                for entry_id, fields in entries:
                    self._start(entry_id, fields)
            # Back-pressure: do not read far ahead of what the handlers can finish.
            while len(self._inflight) >= 4 * self._batch:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        interval = max(0.5, self._reclaim_idle_ms / 2000)
        while not stop.is_set():
            await asyncio.sleep(interval)
            start = "0-0"
            while True:
                reply = await self._r.xautoclaim(self.names.stream, self.names.group, self.consumer,
                                                 self._reclaim_idle_ms, start_id=start, count=self._batch)
                start, entries = reply[0], reply[1]
                if entries:
                    await self._take_over(entries)
                if start in ("0-0", b"0-0"):
                    break

    async def _take_over(self, entries: list[tuple[str, Fields]]) -> None:
        ids = [entry_id for entry_id, _ in entries]
        pending = await self._r.xpending_range(self.names.stream, self.names.group, min=min(ids),
                                               max=max(ids), count=len(ids) * 2)
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream (trimmed) while pending
                await self._r.xack(self.names.stream, self.names.group, entry_id)
            elif deliveries.get(entry_id, 0) > self._dead_after:
                await self._dead_letter(entry_id, fields, "delivered too often without an ack")
            else:
                log.info("stream_entry_reclaimed", stream=self.names.stream, entry=entry_id,
                         deliveries=deliveries.get(entry_id))
                self._start(entry_id, fields)

    async def _dead_letter(self, entry_id: str, fields: Fields, why: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        dead: dict[Any, Any] = {**fields, "_id": entry_id, "_why": why, "_at": str(int(time.time()))}
        pipe.xadd(self.names.dead, dead, maxlen=100_000, approximate=True)
        pipe.xack(self.names.stream, self.names.group, entry_id)
        await pipe.execute()
        log.error("stream_dead_letter", stream=self.names.stream, entry=entry_id, why=why)

    async def _delayed_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            moved = await MOVE_DUE(self._r, [self.names.delayed, self.names.stream],
                                   [time.time(), 500, self._maxlen])
            if not moved:
                await asyncio.sleep(0.1)

    def _start(self, entry_id: str, fields: Fields) -> None:
        task = asyncio.create_task(self._handle(entry_id, fields))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _handle(self, entry_id: str, fields: Fields) -> None:
        structlog.contextvars.bind_contextvars(stream_entry=entry_id)
        try:
            await self._handler(entry_id, fields)
        except STORE_DOWN_ERRORS as exc:
            # Not acked: it stays pending and is reclaimed once Redis is back.
            log.warning("stream_handler_store_unavailable", entry=entry_id, error=type(exc).__name__)
            return
        except Exception:
            # Not acked either: retried after reclaim_idle_s, dead-lettered after dead_letter_after tries.
            log.exception("stream_handler_failed", stream=self.names.stream, entry=entry_id)
            return
        # If this ack is lost (Redis gone), the entry is reclaimed and handled again: handlers are
        # idempotent for that reason (push delivery skips devices already marked sent).
        with contextlib.suppress(*STORE_DOWN_ERRORS):
            await self._r.xack(self.names.stream, self.names.group, entry_id)


def _json(fields: Fields) -> str:
    import msgspec

    return msgspec.json.encode(dict(sorted(fields.items()))).decode()
