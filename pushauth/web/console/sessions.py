"""Console sessions: sign-in with a push to the person's own phone (their console account,
pushauth/operators.py) or with an admin token, the session cookie, the session's role, and the CSRF and
same-origin checks every console POST passes (`signed_in`).

A person's sign-in is a challenge like any login flow's (`CONSOLE_APP`), with number matching; its wait is
bound to the browser by an HttpOnly cookie. Token sign-in takes an admin token, which the sign-in page's
script sends as the admin API takes it (`Authorization: Bearer`), so the admin API's own `Credentials` check
it. What follows is a server-side session: a random id in an HttpOnly, SameSite=Strict cookie (Secure over
https), stored in Redis only as its SHA-256 (`<prefix>:console:sess:<sha256 of id>`), holding which token or
person signed in and a CSRF token. It ends after 8 idle hours, 24 hours after sign-in, at sign-out, when its
admin token is no longer configured, or when the person's console account is removed or their own pushauth
account is locked or suspended. Every POST needs the session's CSRF token (compared in constant time) and,
from a browser, a same-origin `Origin` / `Sec-Fetch-Site`.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from yarl import URL

from pushauth.accounts.users import canonical
from pushauth.challenges.service import Allowed
from pushauth.clock import rfc3339
from pushauth.config import Application
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.devices.service import Devices
from pushauth.errors import ApiError, Forbidden, Unauthorized
from pushauth.operators import Operators, may, person, require
from pushauth.store import STORE_DOWN_ERRORS, KeySpace
from pushauth.web import io
from pushauth.web.auth import Admin, Credentials
from pushauth.web.console.html.layout import SECURITY_HEADERS, error_page, redirect, respond
from pushauth.web.console.html.signin import login_page
from pushauth.web.state import AUDIT, CHALLENGES, CREDENTIALS, LIMITER, OPERATORS, REDIS, RUNTIME, SETTINGS

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
    who: str  # the audit "who": console:<user> for a person, admin:<token> as the admin API writes it
    csrf: str
    role: str = "owner"
    user: str = ""  # the person's pushauth user name, the audit "user" of their sign-out ("" for a token)

    def __repr__(self) -> str:  # never the id or the CSRF token
        return f"Session(who={self.who!r}, role={self.role!r})"

    def may(self, action: str) -> bool:
        return may(self.role, action)

    def require(self, action: str) -> None:
        """Refuse (403 `role_forbidden`) what this session's role may not do: the server decides, whatever
        the page showed."""
        require(self.role, action)


class Sessions:
    """Console sessions (`<prefix>:console:sess:<sha256 of id>`). A session is a person's (their console
    account, signed in with their phone) or an admin token's; its role is read again on every request,
    from the account or the token's configuration, so taking a role away takes effect at once."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, credentials: Credentials,
                 operators: Operators, devices: Devices) -> None:
        self._redis = redis
        self._key = keyspace.console_session
        self._credentials = credentials
        self._operators = operators
        self._devices = devices

    async def create(self, admin: Admin) -> Session:
        return await self._create({"tok": admin.token_hash_prefix}, admin.who, admin.role)

    async def create_for(self, user: str, role: str) -> Session:
        return await self._create({"user": user}, person(user), role)

    async def _create(self, record: dict[str, str | int], who: str, role: str) -> Session:
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        record = {**record, "csrf": csrf, "created": int(time.time())}
        await self._redis.set(self._key(sid), _encode(record), ex=SESSION_IDLE_S)
        return Session(sid, who, csrf, role, str(record.get("user", "")))

    async def get(self, sid: str) -> Session | None:
        if not _SESSION_ID.fullmatch(sid):
            return None
        raw = await self._redis.getex(self._key(sid), ex=SESSION_IDLE_S)  # read and extend the idle time
        if not raw:
            return None
        record = msgspec.json.decode(raw)
        session = None
        if int(record.get("created", 0)) + SESSION_MAX_S >= time.time():
            session = await self._holder(sid, record)
        if session is None:  # expired, or its token or account is gone
            await self.delete(sid)
        return session

    async def _holder(self, sid: str, record: dict[str, object]) -> Session | None:
        csrf = str(record.get("csrf", ""))
        if record.get("user"):
            user = str(record["user"])
            role = await self._operators.role_of(user)
            if role is None:
                return None
            # A person whose own pushauth account is locked or suspended (their "not me", the team's lock:
            # their phone or password may be someone else's now) is signed out of the console too.
            _, flags = await self._devices.account_flags(user)
            if flags.get("locked") == "1" or flags.get("suspended") == "1":
                log.warning("console_session_ended", who=person(user), reason="account contained")
                return None
            return Session(sid, person(user), csrf, role, user)
        prefix = str(record.get("tok", ""))
        admin = self._credentials.admin_role(prefix) if prefix else None
        return Session(sid, admin.who, csrf, admin.role) if admin else None

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
            return error_page(503, "pushauth cannot reach its store. Try again shortly.")

    async def _page(request: web.Request) -> web.StreamResponse:
        session = await current_session(request)
        if session is None:
            if request.method == "GET":
                return redirect("/console/login")
            return error_page(403, "Your console session has ended. Sign in again.")
        if request.method == "POST":
            token = await form_field(request, "csrf")
            if not (same_origin(request) and token is not None and equal(token, session.csrf)):
                log.warning("console_csrf_refused", who=session.who, route=request.path)
                return error_page(403, "This form did not come from this console session. Go back, reload "
                                       "the page and try again.", csrf=session.csrf, who=session.who)
        try:
            return await handler(request, session)
        except ApiError as exc:
            if exc.code == "role_forbidden":
                log.warning("console_role_refused", who=session.who, role=session.role, route=request.path)
            return error_page(exc.status, exc.message, csrf=session.csrf, who=session.who)

    return page


# -- sign-in ---------------------------------------------------------------------------------------------


@routes.get("/console/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        return redirect("/console")
    return respond(login_page())


@routes.post("/console/login")
async def login(request: web.Request) -> web.StreamResponse:
    """The sign-in page's script sends the token as the admin API takes it (`Authorization: Bearer`),
    so it is checked by the admin API's own `Credentials`, unchanged; and no other site can send this
    header without a CORS preflight that is never granted."""
    if not same_origin(request):
        return error_page(403, "Sign in from this server's own sign-in page.")
    if "Authorization" not in request.headers:
        return respond(login_page(error="Signing in needs JavaScript in this browser."), status=400)
    try:
        admin = request.app[CREDENTIALS].admin(request, "read")
    except (Unauthorized, Forbidden):
        log.warning("console_sign_in_refused", ip=io.client_ip(request))
        return web.Response(status=401, text="That is not an admin token of this server.",
                            headers=SECURITY_HEADERS)
    session = await request.app[SESSIONS].create(admin)
    await request.app[AUDIT].record("console_signed_in", user="", who=session.who, why="admin token",
                                    role=admin.role)
    log.info("console_signed_in", who=session.who, ip=io.client_ip(request))
    response = web.Response(status=204, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, session.sid, path="/console", httponly=True, samesite="Strict",
                        secure=secure(request))
    return response


# -- sign-in with the person's own phone --------------------------------------------------------------------

PUSH_COOKIE = "pushauth_console_push"
# The console asks for its own sign-ins as an application of its own, through the same challenge service as
# any login flow: number matching, the detection rules and "not me" alerts all apply to it. No API key
# reaches it (its key hash is of a random value nobody holds).
CONSOLE_APP = Application(id="pushauth-console", name="pushauth console",
                          api_key_sha256=[sha256_hex(secrets.token_hex(32))])
PUSH_WAIT_S = 20


class PushSignIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    response = io.json(data, status)
    response.headers.update(SECURITY_HEADERS)
    return response


@routes.post("/console/login/push")
async def push_sign_in(request: web.Request) -> web.StreamResponse:
    """Start a person's sign-in: a prompt with number matching to their own phone. The page shows the
    number and waits (`/console/login/push/wait`), bound to this browser by an HttpOnly cookie."""
    if not same_origin(request):
        raise Forbidden("sign in from this server's own sign-in page", code="csrf")
    user = canonical(io.decode(await io.read_body(request), PushSignIn).user)
    ip = io.client_ip(request)
    if await request.app[OPERATORS].role_of(user) is None:
        # A guess at who may sign in: counted like a wrong credential, so names cannot be tried in bulk.
        await request.app[LIMITER].auth_failed(ip)
        log.warning("console_sign_in_refused", reason="no_account", ip=ip)
        raise Forbidden("that user has no console account: an owner adds one", code="no_console_account")
    agent = io.header_text(request, "User-Agent")[:512]
    context = {k: v for k, v in (("ip", (ip or "")[:64]), ("user_agent", agent),
                                 ("location", "pushauth console")) if v}
    created = await request.app[CHALLENGES].create(CONSOLE_APP, user, context, None)
    if isinstance(created, Allowed):  # exempt, or before enforcement: the console needs a phone
        raise Forbidden("the console needs a push to your own phone, and this account has none",
                        code="not_enrolled")
    pending = secrets.token_urlsafe(32)
    ttl = max(1, created.expires_at - int(time.time()))
    await request.app[REDIS].set(request.app[RUNTIME].keyspace.console_push(pending),
                                 _encode({"user": user, "cid": created.id}), ex=ttl)
    response = _json({"status": "pending", "number": created.number,
                      "expires_at": rfc3339(created.expires_at)}, status=201)
    response.set_cookie(PUSH_COOKIE, pending, path="/console/login", httponly=True, samesite="Strict",
                        secure=secure(request), max_age=ttl)
    return response


@routes.post("/console/login/push/wait")
async def push_wait(request: web.Request) -> web.StreamResponse:
    """Wait up to PUSH_WAIT_S for the phone: approved, the session cookie is set; denied or expired, the
    sign-in is over (a "not me" has raised its critical alert through the detection rules as any login's
    does); else still pending, and the page asks again."""
    if not same_origin(request):
        raise Forbidden("sign in from this server's own sign-in page", code="csrf")
    pending = request.cookies.get(PUSH_COOKIE, "")
    key = request.app[RUNTIME].keyspace.console_push(pending)
    raw = await request.app[REDIS].get(key) if _SESSION_ID.fullmatch(pending) else None
    if not raw:
        raise Unauthorized("no sign-in is waiting for this browser: start again", code="no_sign_in")
    record = msgspec.json.decode(raw)
    user, cid = str(record["user"]), str(record["cid"])
    view = await request.app[CHALLENGES].status(CONSOLE_APP, cid, PUSH_WAIT_S)
    if view["status"] == "pending":
        return _json({"status": "pending"}, status=202)
    await request.app[REDIS].delete(key)
    role = await request.app[OPERATORS].role_of(user) if view["status"] == "approved" else None
    if role is None:
        log.warning("console_sign_in_refused", reason=view["status"], ip=io.client_ip(request))
        await request.app[AUDIT].record("console_sign_in_refused", user=user, who=person(user),
                                        why=str(view.get("reason") or view["status"]))
        response = _json({"error": "sign_in_refused", "status": view["status"], "reason": view.get("reason"),
                          "message": "The sign-in was not approved on your phone."}, status=403)
        response.del_cookie(PUSH_COOKIE, path="/console/login")
        return response
    session = await request.app[SESSIONS].create_for(user, role)
    await request.app[AUDIT].record("console_signed_in", user=user, who=session.who, why="push", role=role)
    log.info("console_signed_in", who=session.who, ip=io.client_ip(request))
    response = _json({"status": "approved"})
    response.del_cookie(PUSH_COOKIE, path="/console/login")
    response.set_cookie(COOKIE, session.sid, path="/console", httponly=True, samesite="Strict",
                        secure=secure(request))
    return response


@routes.post("/console/logout")
@signed_in
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    await request.app[SESSIONS].delete(session.sid)
    # Audited like the sign-in, so the trail shows when a person's session ended, not only when it began.
    await request.app[AUDIT].record("console_signed_out", user=session.user, who=session.who,
                                    role=session.role)
    log.info("console_signed_out", who=session.who)
    response = redirect("/console/login")
    response.del_cookie(COOKIE, path="/console", secure=secure(request), httponly=True, samesite="Strict")
    return response

