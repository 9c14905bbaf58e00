"""A plain Redis-stream consumer: consumer groups, crash recovery, poison entries, delayed retries.

    XREADGROUP     several consumers (workers) share one stream; each entry goes to one of them
    XACK           only after the handler finished and what it recorded is stored; a crash leaves the
                   entry pending
    XAUTOCLAIM     entries another consumer left pending for `reclaim_idle_s` are taken over
    dead letter    an entry delivered `dead_letter_after` times without an ack (its handler crashed the
                   worker or failed each time) is copied to `<stream>:dead` and acked, so one bad entry
                   cannot wedge the stream; the security team can inspect and replay it
    delayed        `schedule()` parks an entry in a sorted set until it is due, then moves it back into
                   the stream (one Lua script: move-then-delete is atomic, so nothing is lost or doubled)

Two ways to handle entries:

    handler        `async def handler(entry_id, fields)`, one task per entry; the entry is acked when it
                   returns, left pending when it raises
    batch_handler  `async def batch_handler(entries)`, one task per XREADGROUP batch (or reclaimed batch).
                   It reports each entry through the consumer: `write(entry_id, *command)` queues a Redis
                   command that must be stored before the entry is acked, `done(entry_id)` says the entry
                   is finished. An entry not `done` when the batch handler returns (or raises) is left
                   pending, like a failed per-entry handler.

Writes and acks are batched ("group commit"): they are sent in one pipeline every `flush_interval_s` (or
at once when `flush_max` are queued), one pipeline at a time. An entry's ack is queued only after the
pipeline carrying its writes has come back with every one of them stored, so it goes out in a later
pipeline: a crash (or a Redis outage) between the two leaves the entry pending with its writes done, and
its handler, which must be idempotent, sees them when the entry is reclaimed. A pipeline that fails
because Redis is unreachable is retried with backoff (its commands are idempotent); one that keeps
failing while the consumer stops is given up after `stop_flush_s`, and its entries stay pending.

The stream, its delayed set and its dead-letter stream share one hash tag, so the move script works on
Redis Cluster. The handler decides what an entry means; this module only guarantees at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog

from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.store.scripts import ArgT, Script

log = structlog.get_logger(__name__)

Fields = dict[str, str]
Entry = tuple[str, Fields]
Handler = Callable[[str, Fields], Awaitable[None]]
BatchHandler = Callable[[list[Entry]], Awaitable[None]]
Command = tuple[ArgT, ...]

MOVE_DUE = Script.load("pushauth.store", "move_due.lua")


async def move_due(redis: aioredis.Redis, *, delayed_key: str, stream_key: str, now: float, max_entries: int,
                   maxlen: int) -> int:
    """Move up to `max_entries` entries of the delayed set that are due by `now` into the stream, each in
    one step (move_due.lua). Returns how many were moved."""
    return int(await MOVE_DUE(redis, [delayed_key, stream_key], [now, max_entries, maxlen]))


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


def schedule_command(names: StreamNames, fields: Fields, due: float) -> Command:
    """The command `schedule()` sends, for a handler to queue with `write()` (stored before the ack)."""
    return ("ZADD", names.delayed, due, _json(fields))


class _Track:
    """An entry this consumer is handling: writes queued and not yet stored, finished or not."""

    __slots__ = ("done", "failed", "writes")

    def __init__(self) -> None:
        self.writes = 0
        self.done = False
        self.failed = False


class StreamConsumer:
    """One consumer of one stream in its consumer group (see the module docstring): reads, reclaims,
    dead-letters, moves due delayed entries back, and stores handlers' writes and acks in batches.

    Owns the stream's keys (`StreamNames`: `<prefix>:{<name>}:stream`, `:delayed`, `:dead`, and the
    consumer group named `<name>`); the only script it runs is move_due (`move_due` above). It knows
    nothing of what an entry means: the handler given to it does. Built by the services that consume a
    stream (`AlertDelivery.consumer_for`, `PushDelivery.consumer_for`) and run by the workers
    (`workers/alerts.py`, `workers/push.py`) or, in embedded mode, by the server (`pushauth.web.app`)."""

    def __init__(self, redis: aioredis.Redis, names: StreamNames, consumer: str,
                 handler: Handler | None = None, *, batch_handler: BatchHandler | None = None,
                 batch: int = 128, reclaim_idle_s: float = 15.0, dead_letter_after: int = 5,
                 maxlen: int = 1_000_000, block_ms: int = 1000, max_inflight: int | None = None,
                 flush_interval_s: float = 0.005, flush_max: int = 512, stop_flush_s: float = 5.0) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self._redis = redis
        self.names = names
        self.consumer = consumer
        self._handler = handler
        self._batch_handler = batch_handler
        self._batch = batch
        self._reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self._dead_after = dead_letter_after
        self._maxlen = maxlen
        self._block_ms = block_ms
        # Back-pressure: entries read but not finished. The read loop waits (on `_room`, set by whoever
        # finishes an entry) instead of reading far ahead of what the handlers can finish.
        self._max_inflight = max_inflight or 4 * batch
        self._room = asyncio.Event()
        self._tracks: dict[str, _Track] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Group commit of writes and acks.
        self._flush_interval = flush_interval_s
        self._flush_max = flush_max
        self._stop_flush_s = stop_flush_s
        self._writes: list[tuple[str, Command]] = []
        self._acks: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._stopping_at: float | None = None

    # -- producing -------------------------------------------------------------------------------------

    async def add(self, fields: Fields) -> str:
        entry: dict[Any, Any] = fields
        return str(await self._redis.xadd(self.names.stream, entry, maxlen=self._maxlen, approximate=True))

    async def schedule(self, fields: Fields, due: float) -> None:
        """Put `fields` back into the stream at time `due` (Unix seconds)."""
        member = _json(fields)
        await self._redis.zadd(self.names.delayed, {member: due})

    # -- what handlers report --------------------------------------------------------------------------

    def write(self, entry_id: str, *command: ArgT) -> None:
        """Queue a Redis command (`"HSET", key, field, value`) that must be stored before `entry_id` is
        acked. It is sent with others in a pipeline: it must be idempotent, and it must not depend on the
        reply of another queued command. Ignored for an entry this consumer is not handling."""
        track = self._tracks.get(entry_id)
        if track is None or track.done:
            log.warning("stream_write_ignored", stream=self.names.stream, entry=entry_id,
                        why="not in flight" if track is None else "already done")
            return
        track.writes += 1
        self._writes.append((entry_id, command))
        self._arm()

    def done(self, entry_id: str) -> None:
        """The entry is finished: ack it once every write queued for it is stored."""
        track = self._tracks.get(entry_id)
        if track is None or track.done:
            return
        track.done = True
        if track.writes == 0:
            self._finish(entry_id, track)

    def inflight(self) -> int:
        """Entries read (or reclaimed) and not finished yet."""
        return len(self._tracks)

    # -- consuming -------------------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.names.stream, self.names.group, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish what is in flight (handlers, writes, acks). Redis
        outages are waited out."""
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
        """Wait for the handlers in flight, then store their writes and acks (a store outage is waited
        out for at most `stop_flush_s`: what is not acked by then stays pending and is reclaimed)."""
        self._stopping_at = time.monotonic()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._flusher is not None or self._writes or self._acks:
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush())
            await asyncio.shield(self._flusher)
        self._stopping_at = None

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
            if len(self._tracks) >= self._max_inflight:
                self._room.clear()
                await self._room.wait()
                continue
            reply = await self._redis.xreadgroup(self.names.group, self.consumer, {self.names.stream: ">"},
                                             count=self._batch, block=self._block_ms)
            for _stream, entries in cast(list[tuple[str, list[Entry]]], reply or []):
                self._start(entries)

    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        interval = max(0.5, self._reclaim_idle_ms / 2000)
        while not stop.is_set():
            await asyncio.sleep(interval)
            start = "0-0"
            while True:
                reply = await self._redis.xautoclaim(self.names.stream, self.names.group, self.consumer,
                                                 self._reclaim_idle_ms, start_id=start, count=self._batch)
                start, entries = reply[0], reply[1]
                if entries:
                    await self._take_over(entries)
                if start in ("0-0", b"0-0"):
                    break

    async def _take_over(self, entries: list[tuple[str, Fields | None]]) -> None:
        ids = [entry_id for entry_id, _ in entries]
        pending = await self._redis.xpending_range(self.names.stream, self.names.group, min=min(ids),
                                               max=max(ids), count=len(ids) * 2)
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        again: list[Entry] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream (trimmed) while pending
                await self._redis.xack(self.names.stream, self.names.group, entry_id)
            elif deliveries.get(entry_id, 0) > self._dead_after:
                await self._dead_letter(entry_id, fields, "delivered too often without an ack")
            elif entry_id in self._tracks:
                # Still being handled here (a slow send): handling it twice at once could push twice.
                log.info("stream_entry_still_in_flight", stream=self.names.stream, entry=entry_id)
            else:
                log.info("stream_entry_reclaimed", stream=self.names.stream, entry=entry_id,
                         deliveries=deliveries.get(entry_id))
                again.append((entry_id, fields))
        if again:
            self._start(again)

    async def _dead_letter(self, entry_id: str, fields: Fields, why: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        dead: dict[Any, Any] = {**fields, "_id": entry_id, "_why": why, "_at": str(int(time.time()))}
        pipe.xadd(self.names.dead, dead, maxlen=100_000, approximate=True)
        pipe.xack(self.names.stream, self.names.group, entry_id)
        await pipe.execute()
        log.error("stream_dead_letter", stream=self.names.stream, entry=entry_id, why=why)

    async def _delayed_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            moved = await move_due(self._redis, delayed_key=self.names.delayed, stream_key=self.names.stream,
                                   now=time.time(), max_entries=500, maxlen=self._maxlen)
            if not moved:
                await asyncio.sleep(0.1)

    # -- handling --------------------------------------------------------------------------------------

    def _start(self, entries: Sequence[Entry]) -> None:
        fresh = [(entry_id, fields) for entry_id, fields in entries if entry_id not in self._tracks]
        if not fresh:
            return
        for entry_id, _ in fresh:
            self._tracks[entry_id] = _Track()
        if self._batch_handler is not None:
            self._spawn(self._run_batch(fresh))
        else:
            for entry_id, fields in fresh:
                self._spawn(self._run_one(entry_id, fields))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(self, entry_id: str, fields: Fields) -> None:
        assert self._handler is not None
        structlog.contextvars.bind_contextvars(stream_entry=entry_id)
        try:
            await self._handler(entry_id, fields)
        except STORE_DOWN_ERRORS as exc:
            # Not acked: it stays pending and is reclaimed once Redis is back.
            log.warning("stream_handler_store_unavailable", entry=entry_id, error=type(exc).__name__)
            self._fail(entry_id)
        except Exception:
            # Not acked either: retried after reclaim_idle_s, dead-lettered after dead_letter_after tries.
            log.exception("stream_handler_failed", stream=self.names.stream, entry=entry_id)
            self._fail(entry_id)
        else:
            self.done(entry_id)

    async def _run_batch(self, entries: list[Entry]) -> None:
        assert self._batch_handler is not None
        try:
            await self._batch_handler(entries)
        except STORE_DOWN_ERRORS as exc:
            log.warning("stream_handler_store_unavailable", stream=self.names.stream,
                        entries=len(entries), error=type(exc).__name__)
        except Exception:
            log.exception("stream_handler_failed", stream=self.names.stream, entries=len(entries))
        # Whatever the handler did not finish stays pending: reclaimed, dead-lettered if it keeps failing.
        for entry_id, _ in entries:
            track = self._tracks.get(entry_id)
            if track is not None and not track.done:
                self._fail(entry_id)

    def _fail(self, entry_id: str) -> None:
        track = self._tracks.get(entry_id)
        if track is None:
            return
        track.failed = True
        track.done = True
        if track.writes == 0:
            self._finish(entry_id, track)

    def _finish(self, entry_id: str, track: _Track) -> None:
        del self._tracks[entry_id]
        if not track.failed:
            self._acks.append(entry_id)
            self._arm()
        if len(self._tracks) < self._max_inflight:
            self._room.set()

    # -- group commit ----------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._flusher is not None:
            return  # the running flush picks it up when it is done
        if len(self._writes) + len(self._acks) >= self._flush_max:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_interval, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None and (self._writes or self._acks):
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            writes, acks = self._writes[:self._flush_max], self._acks[:self._flush_max]
            del self._writes[:len(writes)], self._acks[:len(acks)]
            results = await self._send(writes, acks)
            for (entry_id, command), result in zip(writes, results, strict=False):
                track = self._tracks.get(entry_id)
                if track is None:
                    continue
                track.writes -= 1
                if isinstance(result, Exception):
                    log.error("stream_write_failed", stream=self.names.stream, entry=entry_id,
                              command=str(command[0]), error=str(result))
                    track.failed = True
                if track.writes == 0 and track.done:
                    self._finish(entry_id, track)
        finally:
            self._flusher = None
        if (self._writes or self._acks) and self._stopping_at is None:
            self._arm()

    async def _send(self, writes: list[tuple[str, Command]], acks: list[str]) -> list[Any]:
        """One pipeline: the writes, then the acks. Retried while Redis is unreachable (everything in it
        is idempotent); given up `stop_flush_s` after the consumer started stopping."""
        backoff = 0.1
        while True:
            pipe = self._redis.pipeline(transaction=False)
            for _, command in writes:
                pipe.execute_command(*command)
            if acks:
                pipe.xack(self.names.stream, self.names.group, *acks)
            try:
                return await pipe.execute(raise_on_error=False)
            except STORE_DOWN_ERRORS as exc:
                stopping = self._stopping_at
                if stopping is not None and time.monotonic() - stopping > self._stop_flush_s:
                    log.error("stream_flush_given_up", stream=self.names.stream, writes=len(writes),
                              acks=len(acks), error=type(exc).__name__)
                    # Not stored: the entries are not acked (they stay pending and are reclaimed).
                    return [exc] * len(writes)
                log.warning("stream_flush_store_unavailable", stream=self.names.stream, writes=len(writes),
                            acks=len(acks), error=type(exc).__name__)
            except Exception as exc:  # a bug, not an outage: nothing of this pipeline counts as stored
                log.exception("stream_flush_failed", stream=self.names.stream, writes=len(writes),
                              acks=len(acks))
                return [exc] * len(writes)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _json(fields: Fields) -> str:
    import msgspec

    return msgspec.json.encode(dict(sorted(fields.items()))).decode()
