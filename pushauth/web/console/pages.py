"""The console's pages: the alert feed and one alert (acknowledge), users and their containment (unlock,
lock, revoke a device, issue an access code), and the pages' static files. Every page is `signed_in`.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.clock import rfc3339
from pushauth.errors import Conflict, NotFound
from pushauth.web import console_html as ui
from pushauth.web.console.feed import FEED
from pushauth.web.console.sessions import Session, form_field, signed_in
from pushauth.web.state import ACCOUNTS, ALERTS

routes = web.RouteTableDef()

# What a finished action says on the page it leads back to (the query names one; nothing is reflected).
DONE = {"acked": "Alert acknowledged.", "already_acked": "That alert was already acknowledged.",
        "lock": "Account unlocked.", "suspension": "Suspension lifted: the user gets prompts again.",
        "all": "Account unlocked and suspension lifted.", "locked": "Account locked.",
        "revoked": "Device revoked."}


# -- alerts ----------------------------------------------------------------------------------------------


@routes.get("/console")
@signed_in
async def feed_page(request: web.Request, session: Session) -> web.StreamResponse:
    since = await request.app[FEED].tail()  # before the list: anything newer is replayed, not lost
    alerts = await request.app[ALERTS].alerts(status="open", uid=None, limit=200)
    return ui.respond(ui.feed_page(alerts, since=since, csrf=session.csrf, who=session.who,
                                   done=DONE.get(request.query.get("done", ""))))




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
           for name in ("console.css", "console.js", "demo.js", "form-post.js")}


@routes.get("/console/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = _STATIC.get(name)
    if body is None:
        raise NotFound("no such file")
    return web.Response(body=body, content_type=_TYPES[name.rsplit(".", 1)[1]], charset="utf-8",
                        headers={**ui.SECURITY_HEADERS, "Cache-Control": "max-age=300"})
