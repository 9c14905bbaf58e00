"""Console sessions: sign-in with an admin token, the session cookie, and the CSRF and same-origin checks
every console POST passes (`signed_in`).

Sign-in takes an admin token, which the sign-in page's script sends as the admin API takes it
(`Authorization: Bearer`), so the admin API's own `Credentials` check it. What follows is a server-side
session: a random id in an HttpOnly, SameSite=Strict cookie (Secure over https), stored in Redis only as
its SHA-256 (`<prefix>:console:sess:<sha256 of id>`), holding which token signed in and a CSRF token. It
ends after 8 idle hours, 24 hours after sign-in, at sign-out, or when its admin token is no longer
configured. Every POST needs the session's CSRF token (compared in constant time) and, from a browser,
a same-origin `Origin` / `Sec-Fetch-Site`.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from yarl import URL

from pushauth.crypto.secrets import equal
from pushauth.errors import ApiError, Forbidden, Unauthorized
from pushauth.store import STORE_DOWN_ERRORS, KeySpace
from pushauth.web import console_html as ui
from pushauth.web import io
from pushauth.web.auth import Admin
from pushauth.web.state import CREDENTIALS, SETTINGS

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

COOKIE = "pushauth_console"
SESSION_IDLE_S = 8 * 3600
SESSION_MAX_S = 24 * 3600
# A session id as `Sessions.create` makes it (token_urlsafe(32)); a cookie that is not one is no session.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{20,64}")
_encode = msgspec.json.Encoder().encode


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
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, admin_hashes: list[str]) -> None:
        self._redis = redis
        self._key = keyspace.console_session
        self._admins = list(admin_hashes)

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




SESSIONS = web.AppKey("console_sessions", Sessions)


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

