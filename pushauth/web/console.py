"""The security team's console (`/console`): the alert feed, incidents, users and their containment, as
server-rendered pages over the same domain objects as the admin API (`Accounts`, `AlertStore`), with the
same audit "who" (`admin:<first 12 hex digits of the token's SHA-256>`).

Sign-in takes an admin token, which the sign-in page's script sends as the admin API takes it
(`Authorization: Bearer`), so the admin API's own `Credentials` check it. What follows is a server-side
session: a random id in an HttpOnly, SameSite=Strict cookie (Secure over https), stored in Redis only as
its SHA-256 (`<prefix>:console:sess:<sha256 of id>`), holding which token signed in and a CSRF token. It
ends after 8 idle hours, 24 hours after sign-in, at sign-out, or when its admin token is no longer
configured. Every POST needs the session's CSRF token (compared in constant time) and, from a browser,
a same-origin `Origin` / `Sec-Fetch-Site`.

The live feed: one task per server process (`LiveFeed.run`, started by the cleanup context in `setup`)
reads the alert stream with plain XREAD BLOCK (never the alert workers' consumer group) while someone
watches, and fans each alert out to the server-sent-event clients through bounded queues; a client too
slow to keep up is dropped, and its browser reconnects with `Last-Event-ID` and is replayed what it
missed from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from yarl import URL

from pushauth.accounts.users import canonical
from pushauth.alerts.store import AlertStore, alert_view
from pushauth.clock import rfc3339
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.errors import ApiError, Conflict, Forbidden, NotFound, Unauthorized
from pushauth.store import STORE_DOWN_ERRORS
from pushauth.web import console_html as ui
from pushauth.web import io
from pushauth.web.auth import Admin
from pushauth.web.state import ACCOUNTS, ALERTS, CREDENTIALS, REDIS, SETTINGS

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

COOKIE = "pushauth_console"
SESSION_IDLE_S = 8 * 3600
SESSION_MAX_S = 24 * 3600
HEARTBEAT_S = 15.0
# Alerts a client may have waiting before it counts as too slow and is dropped.
QUEUE_MAX = 256
# Most alerts replayed to a reconnecting client; beyond that its page reloads instead.
REPLAY_MAX = 200
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # not \d: "١-١" is digits to Python, not to Redis
# A session id as `Sessions.create` makes it (token_urlsafe(32)); a cookie that is not one is no session.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{20,64}")
# An event stream ends quietly when the browser goes away or Redis does: the browser reconnects.
_STREAM_GONE: tuple[type[Exception], ...] = (ConnectionResetError, *STORE_DOWN_ERRORS)
_encode = msgspec.json.Encoder().encode

# What a finished action says on the page it leads back to (the query names one; nothing is reflected).
DONE = {"acked": "Alert acknowledged.", "already_acked": "That alert was already acknowledged.",
        "lock": "Account unlocked.", "suspension": "Suspension lifted: the user gets prompts again.",
        "all": "Account unlocked and suspension lifted.", "locked": "Account locked.",
        "revoked": "Device revoked."}


# -- sessions --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Session:
    sid: str
    who: str  # the audit "who": admin:<token hash prefix>, as the admin API writes it
    csrf: str

    def __repr__(self) -> str:  # never the id or the CSRF token
        return f"Session(who={self.who!r})"


def _by(admin: Admin) -> str:
    return f"admin:{admin.token_hash_prefix}"  # the admin API's format (pushauth/web/admin.py)


class Sessions:
    def __init__(self, redis: aioredis.Redis, prefix: str, admin_hashes: list[str]) -> None:
        self._redis = redis
        self._prefix = prefix
        self._admins = list(admin_hashes)

    def _key(self, sid: str) -> str:
        return f"{self._prefix}:console:sess:{sha256_hex(sid)}"

    async def create(self, admin: Admin) -> Session:
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        record = {"tok": admin.token_hash_prefix, "csrf": csrf, "created": int(time.time())}
        await self._redis.set(self._key(sid), _encode(record), ex=SESSION_IDLE_S)
        return Session(sid, _by(admin), csrf)

    async def get(self, sid: str) -> Session | None:
        if not _SESSION_ID.fullmatch(sid):
            return None
        raw = await self._redis.getex(self._key(sid), ex=SESSION_IDLE_S)  # read and extend the idle time
        if not raw:
            return None
        record = msgspec.json.decode(raw)
        prefix = str(record.get("tok", ""))
        if (int(record.get("created", 0)) + SESSION_MAX_S < time.time() or not prefix
                or not any(h.startswith(prefix) for h in self._admins)):
            await self.delete(sid)
            return None
        return Session(sid, _by(Admin(prefix)), str(record["csrf"]))

    async def delete(self, sid: str) -> None:
        await self._redis.delete(self._key(sid))


def secure(request: web.Request) -> bool:
    """Whether cookies must be Secure: the request came over https, or the public URL is https (a TLS
    proxy in front)."""
    return request.secure or request.app[SETTINGS].server.base_url.startswith("https://")


def same_origin(request: web.Request) -> bool:
    """A browser says where a POST comes from; anything but this server's own pages is refused.
    `Sec-Fetch-Site` (which no page can set) decides where a browser sends it. `Origin` decides otherwise,
    except "null": with `Referrer-Policy: no-referrer`, which these pages send, a browser without
    `Sec-Fetch-Site` says "null" for our own forms. Without either (scripts), the CSRF token alone
    decides."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    own = {str(URL(request.app[SETTINGS].server.base_url).origin()), f"{request.scheme}://{request.host}"}
    return origin in own


async def current_session(request: web.Request) -> Session | None:
    sid = request.cookies.get(COOKIE)
    return await request.app[SESSIONS].get(sid) if sid else None


async def form_field(request: web.Request, name: str) -> str | None:
    """A text field of the posted form (None without one). The pages post x-www-form-urlencoded forms, so
    nothing else is parsed (aiohttp's multipart reader raises on hostile bodies), and one aiohttp cannot
    read (a charset Python does not know, bytes that are not the charset) is read as a form without the
    field: a 403 page, never a 500."""
    if request.content_type != "application/x-www-form-urlencoded":
        return None
    try:
        value = (await request.post()).get(name)
    except (ValueError, LookupError):
        return None
    return value if isinstance(value, str) else None


Page = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def signed_in(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A console page: needs a session (GET: else to the sign-in page), and for a POST the session's CSRF
    token from a same-origin form. A domain error becomes an error page rather than the API's JSON."""

    @functools.wraps(handler)
    async def page(request: web.Request) -> web.StreamResponse:
        try:
            return await _page(request)
        except STORE_DOWN_ERRORS as exc:  # fail closed, as the API does, but as a page
            log.error("store_unavailable", error=type(exc).__name__)
            return ui.error_page(503, "pushauth cannot reach its store. Try again shortly.")

    async def _page(request: web.Request) -> web.StreamResponse:
        session = await current_session(request)
        if session is None:
            if request.method == "GET":
                return ui.redirect("/console/login")
            return ui.error_page(403, "Your console session has ended. Sign in again.")
        if request.method == "POST":
            token = await form_field(request, "csrf")
            if not (same_origin(request) and token is not None and equal(token, session.csrf)):
                log.warning("console_csrf_refused", who=session.who, route=request.path)
                return ui.error_page(403, "This form did not come from this console session. Go back, reload "
                                          "the page and try again.", csrf=session.csrf, who=session.who)
        try:
            return await handler(request, session)
        except ApiError as exc:
            return ui.error_page(exc.status, exc.message, csrf=session.csrf, who=session.who)

    return page


# -- the live feed ---------------------------------------------------------------------------------------

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
        h = await self._alerts.raw(fields.get("a", ""))
        if h is None:
            return None
        a = alert_view(h)
        data = {"id": a["id"], "kind": a["kind"], "severity": a["severity"], "user": a["user"],
                "status": a["status"], "created_at": a["created_at"], "updated_at": a["updated_at"],
                "version": a["version"], "event_count": a["evidence"]["event_count"]}
        frame = b"id: " + entry_id.encode() + b"\nevent: alert\ndata: " + _encode(data) + b"\n\n"
        return entry_id, frame

    async def replay(self, since: str) -> tuple[list[FeedItem], bool]:
        """What a client missed after `since`, and whether there was more than REPLAY_MAX of it."""
        entries = cast(list[tuple[str, dict[str, str]]],
                       await self._redis.xrange(self._stream, min=since, count=REPLAY_MAX + 1))
        entries = [e for e in entries if _id_key(e[0]) > _id_key(since)]
        items = [item for eid, fields in entries[:REPLAY_MAX] if (item := await self.item(eid, fields))]
        return items, len(entries) > REPLAY_MAX


SESSIONS = web.AppKey("console_sessions", Sessions)
FEED = web.AppKey("console_feed", LiveFeed)


def setup(app: web.Application) -> None:
    """Add the console to the app: its routes, its cleanup context (sessions and the feed task; after the
    domain services, whose alert store it reads) and a shutdown hook that ends the open event streams."""

    async def console_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        app[SESSIONS] = Sessions(app[REDIS], settings.store.prefix, settings.admin.token_sha256)
        # XREAD BLOCK shorter than the socket timeout, or every quiet read would count as Redis down.
        block_ms = 1000 if settings.embedded else int(min(1000, settings.store.socket_timeout_s * 500))
        feed = LiveFeed(app[REDIS], app[ALERTS], block_ms=block_ms)
        app[FEED] = feed
        task = asyncio.create_task(feed.run(), name="console-feed")
        yield
        feed.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def end_streams(app: web.Application) -> None:
        if FEED in app:
            app[FEED].close()

    app.cleanup_ctx.append(console_ctx)
    app.on_shutdown.append(end_streams)
    app.add_routes(routes)


# -- sign-in ---------------------------------------------------------------------------------------------


@routes.get("/console/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        return ui.redirect("/console")
    return ui.respond(ui.login_page())


@routes.post("/console/login")
async def login(request: web.Request) -> web.StreamResponse:
    """The sign-in page's script sends the token as the admin API takes it (`Authorization: Bearer`),
    so it is checked by the admin API's own `Credentials`, unchanged; and no other site can send this
    header without a CORS preflight that is never granted."""
    if not same_origin(request):
        return ui.error_page(403, "Sign in from this server's own sign-in page.")
    if "Authorization" not in request.headers:
        return ui.respond(ui.login_page(error="Signing in needs JavaScript in this browser."), status=400)
    try:
        admin = request.app[CREDENTIALS].admin(request)
    except (Unauthorized, Forbidden):
        log.warning("console_sign_in_refused", ip=io.client_ip(request))
        return web.Response(status=401, text="That is not an admin token of this server.",
                            headers=ui.SECURITY_HEADERS)
    session = await request.app[SESSIONS].create(admin)
    log.info("console_signed_in", who=session.who, ip=io.client_ip(request))
    response = web.Response(status=204, headers=ui.SECURITY_HEADERS)
    response.set_cookie(COOKIE, session.sid, path="/console", httponly=True, samesite="Strict",
                        secure=secure(request))
    return response


@routes.post("/console/logout")
@signed_in
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    await request.app[SESSIONS].delete(session.sid)
    log.info("console_signed_out", who=session.who)
    response = ui.redirect("/console/login")
    response.del_cookie(COOKIE, path="/console", secure=secure(request), httponly=True, samesite="Strict")
    return response


# -- alerts ----------------------------------------------------------------------------------------------


@routes.get("/console")
@signed_in
async def feed_page(request: web.Request, session: Session) -> web.StreamResponse:
    since = await request.app[FEED].tail()  # before the list: anything newer is replayed, not lost
    alerts = await request.app[ALERTS].alerts(status="open", uid=None, limit=200)
    return ui.respond(ui.feed_page(alerts, since=since, csrf=session.csrf, who=session.who,
                                   done=DONE.get(request.query.get("done", ""))))


@routes.get("/console/events")
async def events(request: web.Request) -> web.StreamResponse:
    session = await current_session(request)
    if session is None:
        return web.Response(status=401, text="sign in to the console first\n", headers=ui.SECURITY_HEADERS)
    since = request.headers.get("Last-Event-ID") or request.query.get("since", "")
    seen = since if _STREAM_ID.fullmatch(since) else ""
    feed, sessions = request.app[FEED], request.app[SESSIONS]
    queue = feed.subscribe()
    response = web.StreamResponse(headers={**ui.SECURITY_HEADERS, "Content-Type": "text/event-stream",
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


@routes.get("/console/alerts/{id}")
@signed_in
async def alert_page(request: web.Request, session: Session) -> web.StreamResponse:
    alert = await request.app[ALERTS].get(request.match_info["id"])
    return ui.respond(ui.alert_page(alert, csrf=session.csrf, who=session.who))


@routes.post("/console/alerts/{id}/ack")
@signed_in
async def ack(request: web.Request, session: Session) -> web.StreamResponse:
    try:
        await request.app[ALERTS].ack(request.match_info["id"], session.who)
    except Conflict:
        return ui.redirect("/console?done=already_acked")
    return ui.redirect("/console?done=acked")


# -- users -----------------------------------------------------------------------------------------------


def _user_url(user: str, done: str | None = None) -> str:
    return f"/console/users/{ui.path_part(user)}" + (f"?done={done}" if done else "")


@routes.get("/console/users")
@signed_in
async def find_user(request: web.Request, session: Session) -> web.StreamResponse:
    query = request.query.get("user", "")
    if not query.strip():
        return ui.respond(ui.user_search_page(csrf=session.csrf, who=session.who))
    return ui.redirect(_user_url(canonical(query)))


@routes.get("/console/users/{user}")
@signed_in
async def user_page(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    try:
        view = await request.app[ACCOUNTS].view(user)
    except NotFound as exc:
        return ui.respond(ui.user_search_page(csrf=session.csrf, who=session.who, query=user,
                                              error=f"{user}: {exc.message}"), status=404)
    return ui.respond(ui.user_page(view, csrf=session.csrf, who=session.who,
                                   done=DONE.get(request.query.get("done", ""))))


@routes.post("/console/users/{user}/unlock")
@signed_in
async def unlock(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    what = await form_field(request, "what") or "all"
    await request.app[ACCOUNTS].unlock(user, by=session.who, what=what)
    return ui.redirect(_user_url(user, what))


@routes.post("/console/users/{user}/lock")
@signed_in
async def lock(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].lock(user, by=session.who)
    return ui.redirect(_user_url(user, "locked"))


@routes.post("/console/users/{user}/devices/{device_id}/revoke")
@signed_in
async def revoke_device(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].revoke_device(user, request.match_info["device_id"], by=session.who)
    return ui.redirect(_user_url(user, "revoked"))


@routes.post("/console/users/{user}/access-code")
@signed_in
async def access_code(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    code, expires = await request.app[ACCOUNTS].issue_access_code(user, by=session.who)
    return ui.respond(ui.access_code_page(user, code, rfc3339(expires), csrf=session.csrf, who=session.who))


# -- static files ----------------------------------------------------------------------------------------

_TYPES = {"css": "text/css", "js": "text/javascript"}
_STATIC = {name: resources.files("pushauth.web").joinpath("console_static", name).read_bytes()
           for name in ("console.css", "console.js", "demo.js")}


@routes.get("/console/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = _STATIC.get(name)
    if body is None:
        raise NotFound("no such file")
    return web.Response(body=body, content_type=_TYPES[name.rsplit(".", 1)[1]], charset="utf-8",
                        headers={**ui.SECURITY_HEADERS, "Cache-Control": "max-age=300"})
