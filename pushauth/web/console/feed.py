"""The console's live alert feed: one task per server process (`LiveFeed.run`, started by the cleanup
context in `pushauth.web.console.setup`) reads the alert stream with plain XREAD BLOCK (never the alert
workers' consumer group) while someone watches, and fans each alert out to the server-sent-event clients
(`/console/events`) through bounded queues; a client too slow to keep up is dropped, and its browser
reconnects with `Last-Event-ID` and is replayed what it missed from the stream.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from pushauth.alerts.store import AlertStore, alert_view
from pushauth.store import STORE_DOWN_ERRORS
from pushauth.web.console.html.alerts import alert_title
from pushauth.web.console.html.layout import SECURITY_HEADERS
from pushauth.web.console.sessions import SESSIONS, current_session

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

HEARTBEAT_S = 15.0
# Alerts a client may have waiting before it counts as too slow and is dropped.
QUEUE_MAX = 256
# Most alerts replayed to a reconnecting client; beyond that its page reloads instead.
REPLAY_MAX = 200
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # not \d: "١-١" is digits to Python, not to Redis
# An event stream ends quietly when the browser goes away or Redis does: the browser reconnects.
_STREAM_GONE: tuple[type[Exception], ...] = (ConnectionResetError, *STORE_DOWN_ERRORS)
_encode = msgspec.json.Encoder().encode

FeedItem = tuple[str, bytes]  # (stream entry id, the server-sent event)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class LiveFeed:
    def __init__(self, redis: aioredis.Redis, alerts: AlertStore, *, block_ms: int) -> None:
        self._redis = redis
        self._alerts = alerts
        self._stream = alerts.names.stream
        self._block_ms = block_ms
        self._subs: set[asyncio.Queue[FeedItem | None]] = set()
        self._wanted = asyncio.Event()

    @property
    def clients(self) -> int:
        return len(self._subs)

    def subscribe(self) -> asyncio.Queue[FeedItem | None]:
        queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(QUEUE_MAX)
        self._subs.add(queue)
        self._wanted.set()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[FeedItem | None]) -> None:
        self._subs.discard(queue)

    def _drop(self, queue: asyncio.Queue[FeedItem | None]) -> None:
        self._subs.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)  # the client's handler ends its response

    def publish(self, item: FeedItem) -> None:
        for queue in list(self._subs):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                log.warning("console_feed_client_dropped", reason="too slow")
                self._drop(queue)

    def close(self) -> None:
        for queue in list(self._subs):
            self._drop(queue)

    async def tail(self) -> str:
        """The stream's newest entry id: `$`, made concrete so that nothing added between two reads is
        missed."""
        newest = cast(list[tuple[str, Any]], await self._redis.xrevrange(self._stream, count=1))
        return newest[0][0] if newest else "0-0"

    async def run(self) -> None:
        last: str | None = None
        backoff = 0.1
        while True:
            if not self._subs:  # nobody watching: no read loop, no connection held
                self._wanted.clear()
                last = None
                await self._wanted.wait()
                continue
            try:
                if last is None:
                    last = await self.tail()
                reply = await self._redis.xread({self._stream: last}, count=100, block=self._block_ms)
                for _name, entries in cast(list[tuple[str, list[tuple[str, dict[str, str]]]]], reply or []):
                    for entry_id, fields in entries:
                        last = entry_id
                        item = await self.item(entry_id, fields)
                        if item is not None:
                            self.publish(item)
                backoff = 0.1
            except STORE_DOWN_ERRORS as exc:  # Redis away: keep `last`, read on from it when it is back
                log.warning("console_feed_store_error", error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("console_feed_error")
                await asyncio.sleep(1.0)

    async def item(self, entry_id: str, fields: Mapping[str, str]) -> FeedItem | None:
        record = await self._alerts.raw(fields.get("a", ""))
        if record is None:
            return None
        alert = alert_view(record)
        data = {"id": alert["id"], "kind": alert["kind"], "severity": alert["severity"],
                "user": alert["user"], "status": alert["status"], "created_at": alert["created_at"],
                "updated_at": alert["updated_at"], "version": alert["version"],
                "event_count": alert["evidence"]["event_count"], "title": alert_title(alert)}
        frame = b"id: " + entry_id.encode() + b"\nevent: alert\ndata: " + _encode(data) + b"\n\n"
        return entry_id, frame

    async def replay(self, since: str) -> tuple[list[FeedItem], bool]:
        """What a client missed after `since`, and whether there was more than REPLAY_MAX of it."""
        entries = cast(list[tuple[str, dict[str, str]]],
                       await self._redis.xrange(self._stream, min=since, count=REPLAY_MAX + 1))
        entries = [e for e in entries if _id_key(e[0]) > _id_key(since)]
        items = [item for eid, fields in entries[:REPLAY_MAX] if (item := await self.item(eid, fields))]
        return items, len(entries) > REPLAY_MAX



FEED = web.AppKey("console_feed", LiveFeed)


@routes.get("/console/events")
async def events(request: web.Request) -> web.StreamResponse:
    session = await current_session(request)
    if session is None:
        return web.Response(status=401, text="sign in to the console first\n", headers=SECURITY_HEADERS)
    since = request.headers.get("Last-Event-ID") or request.query.get("since", "")
    seen = since if _STREAM_ID.fullmatch(since) else ""
    feed, sessions = request.app[FEED], request.app[SESSIONS]
    queue = feed.subscribe()
    response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        if seen:
            missed, more = await feed.replay(seen)
            for entry_id, frame in missed:
                await response.write(frame)
                seen = entry_id
            if more:
                await response.write(b"event: reload\ndata: {}\n\n")
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                if await sessions.get(session.sid) is None:  # signed out or expired meanwhile
                    break
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            if seen and _id_key(item[0]) <= _id_key(seen):
                continue  # already sent in the replay
            await response.write(item[1])
    except _STREAM_GONE:
        pass  # the browser went away, or Redis did: it reconnects with Last-Event-ID
    finally:
        feed.unsubscribe(queue)
    return response
