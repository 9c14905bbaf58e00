"""A sample relying party's login page (`/demo/login`), served only with `[demo] enabled = true`.

It is what a login flow does, in miniature: the person types a user name, the page's own server side
(these handlers, acting as the configured `[demo] application`) creates the challenge, the page shows the
number big and waits (long-poll), then says "Approved" or "Denied" the moment the phone answers. The
browser never holds an API key; it talks only to these endpoints, which are protected against other
sites by a double-submit CSRF token (an HttpOnly cookie and the same value from the page in a header)
and the browser's Origin / Sec-Fetch-Site. Anyone who can reach the page can send prompts to any enrolled
user: it is for showing pushauth, never for a production server.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any

import msgspec
from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.challenges.service import Allowed
from pushauth.clock import rfc3339
from pushauth.config import Application, Settings
from pushauth.crypto.secrets import equal
from pushauth.errors import ConfigError, Forbidden
from pushauth.web import io
from pushauth.web.console import same_origin, secure
from pushauth.web.console.html.layout import SECURITY_HEADERS, Markup, layout, render, respond
from pushauth.web.state import CHALLENGES, SETTINGS

routes = web.RouteTableDef()

CSRF_COOKIE = "pushauth_demo_csrf"
CSRF_HEADER = "X-CSRF-Token"
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32), as login_page makes it
DEMO_APP = web.AppKey("demo_application", Application)


class DemoSignIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


def setup(app: web.Application, settings: Settings) -> None:
    """Add the page when `[demo] enabled`; its application must be one of `[[applications]]`."""
    if not settings.demo.enabled:
        return
    application = next((a for a in settings.applications if a.id == settings.demo.application), None)
    if application is None:
        raise ConfigError(f"invalid setting demo.application: no [[applications]] entry has id "
                          f"{settings.demo.application!r}")
    app[DEMO_APP] = application
    app.add_routes(routes)


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    response = io.json(data, status)
    response.headers.update(SECURITY_HEADERS)
    return response


def _login_html(*, app_name: str, csrf: str, wait_s: int) -> Markup:
    """The page: the user name form, and where the number and the outcome will show."""
    main = render(
        '<h1>Sign in to {app}</h1>'
        '<p class="hint">A sample login page: it asks pushauth for a prompt on the user\'s phone, as any '
        'login flow would, from its own server.</p>'
        '<form id="demo-form" class="stack" data-csrf="{csrf}" data-wait="{wait}">'
        '<label for="user">User name</label>'
        '<input id="user" name="user" autocomplete="username" required autofocus>'
        '<button type="submit" class="primary">Sign in</button></form>'
        '<section id="demo-prompt" hidden aria-labelledby="demo-prompt-title">'
        '<h2 id="demo-prompt-title">Approve the sign-in on your phone</h2>'
        '<p>Type this number in the app:</p><p id="demo-number" class="number"></p></section>'
        '<p id="demo-result" class="result" role="status" aria-live="assertive"></p>',
        app=app_name, csrf=csrf, wait=wait_s)
    return layout(f"Sign in to {app_name}", main, script="demo.js", section="Sample login page")


@routes.get("/demo/login")
async def login_page(request: web.Request) -> web.StreamResponse:
    token = secrets.token_urlsafe(32)
    response = respond(_login_html(
        app_name=request.app[DEMO_APP].name, csrf=token, wait_s=request.app[SETTINGS].server.max_wait_s))
    response.set_cookie(CSRF_COOKIE, token, path="/demo", httponly=True, samesite="Strict",
                        secure=secure(request))
    return response


@routes.post("/demo/challenges")
async def create(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not (same_origin(request) and _CSRF_TOKEN.fullmatch(cookie) and equal(cookie, header)):
        raise Forbidden("reload the sign-in page and try again", code="csrf")
    body = io.decode(await io.read_body(request), DemoSignIn)
    context = {k: v for k, v in (("ip", (io.client_ip(request) or "")[:64]),
                                 ("user_agent", io.header_text(request, "User-Agent")[:512]),
                                 ("location", "sample login page")) if v}
    created = await request.app[CHALLENGES].create(request.app[DEMO_APP], canonical(body.user), context, None)
    if isinstance(created, Allowed):
        return _json({"status": "allowed", "reason": created.reason})
    return _json({"status": "pending", "id": created.id, "number": created.number,
                  "expires_at": rfc3339(created.expires_at)}, status=201)


@routes.get("/demo/challenges/{id}")
async def status(request: web.Request) -> web.StreamResponse:
    wait = io.int_query(request, "wait", default=0, low=0, high=request.app[SETTINGS].server.max_wait_s)
    view = await request.app[CHALLENGES].status(request.app[DEMO_APP], request.match_info["id"], wait)
    # Only what the page shows: the assertion stays on the server side, where a real login flow keeps it.
    return _json({"status": view["status"], "reason": view.get("reason")})
