"""The security team's console (`/console`): the alert feed, incidents, users and their containment, the
audit trail and the console accounts, as server-rendered pages over the same domain objects as the admin
API (`Accounts`, `AlertStore`, `Audit`, `Operators`). Every action is audited under who signed in: a person
as `console:<their user name>`, an admin token as the admin API names it (`admin:<the token's name>`, or
`admin:<first 12 hex digits of its SHA-256>` for an unnamed one).

- `sessions`: sign-in with a push to the person's own phone (a console account with a role) or with an
  admin token, the session cookie, the session's role, CSRF and same-origin checks (`signed_in`);
- `feed`: the live alert feed (`LiveFeed`) and its server-sent-event stream, `/console/events`;
- `pages`: the pages and their static files; `html`, the pages' HTML, a module for each thing it renders.

`setup` adds all of it to the server's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from aiohttp import web

from pushauth.errors import RateLimited
from pushauth.operators import Operators
from pushauth.web.console import feed, pages, sessions
from pushauth.web.console.feed import FEED, QUEUE_MAX, REPLAY_MAX, LiveFeed
from pushauth.web.console.html.layout import error_page
from pushauth.web.console.sessions import COOKIE, SESSIONS, Session, Sessions, same_origin, secure
from pushauth.web.limits import BROWSER_PAGES
from pushauth.web.state import ALERTS, AUDIT, CREDENTIALS, DEVICES, OPERATORS, REDIS, RUNTIME, SETTINGS

__all__ = ["COOKIE", "FEED", "QUEUE_MAX", "REPLAY_MAX", "SESSIONS", "LiveFeed", "Session", "Sessions",
           "same_origin", "secure", "setup"]


def setup(app: web.Application) -> None:
    """Add the console to the app: its routes, its cleanup context (sessions and the feed task; after the
    domain services, whose alert store it reads) and a shutdown hook that ends the open event streams."""

    async def console_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        app[OPERATORS] = Operators(app[REDIS], app[RUNTIME].keyspace, app[AUDIT])
        app[SESSIONS] = Sessions(app[REDIS], app[RUNTIME].keyspace, app[CREDENTIALS], app[OPERATORS],
                                 app[DEVICES])
        # XREAD BLOCK shorter than the socket timeout, or every quiet read would count as Redis down.
        block_ms = 1000 if settings.embedded else int(min(1000, settings.store.socket_timeout_s * 500))
        live = LiveFeed(app[REDIS], app[ALERTS], block_ms=block_ms)
        app[FEED] = live
        task = asyncio.create_task(live.run(), name="console-feed")
        yield
        live.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def end_streams(app: web.Application) -> None:
        if FEED in app:
            app[FEED].close()

    app.cleanup_ctx.append(console_ctx)
    app.on_shutdown.append(end_streams)
    app.add_routes(sessions.routes)
    app.add_routes(pages.routes)
    app.add_routes(feed.routes)
    # A refused browser on a console page sees a page saying how long to wait, not the REST contract's JSON
    # (pushauth/web/limits.py); the push sign-in's calls, the CSV, the static files and the event stream are
    # read by script or saved, and keep the JSON.
    page_routes = {route.path for route in (*sessions.routes, *pages.routes)
                   if isinstance(route, web.RouteDef)} - _NOT_PAGES
    others = app.get(BROWSER_PAGES, {})  # another module's pages, if any, stay
    app[BROWSER_PAGES] = {**others, **dict.fromkeys(page_routes, _rate_limited)}


_NOT_PAGES = frozenset({"/console/login/push", "/console/login/push/wait", "/console/audit.csv",
                        "/console/static/{name}"})


def _rate_limited(request: web.Request, refused: RateLimited) -> web.Response:
    minutes = max(1, math.ceil(refused.retry_after_s / 60))
    response = error_page(429, f"Too many requests have come from your address. Wait {minutes} "
                               f"minute{'s' if minutes > 1 else ''} and try again.")
    response.headers.update(refused.headers)
    return response
