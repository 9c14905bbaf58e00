"""The console's pages: open alerts (triage), their history, one alert (acknowledge with a note), users
(search, containment, access codes, enrollment of a new phone), the audit trail (and its CSV), and the
pages' static files. Every page is `signed_in`; every form names the action it needs, and the server
refuses it (403) for a role that may not do it, whatever the page showed (pushauth/operators.py).
"""

from __future__ import annotations

import csv
import io as stdio
from importlib import resources

import segno
from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.audit import AuditPage
from pushauth.clock import rfc3339
from pushauth.errors import Conflict, NotFound, Unprocessable
from pushauth.operators import check_role
from pushauth.web import io
from pushauth.web.console.feed import FEED
from pushauth.web.console.html import accounts as accounts_html
from pushauth.web.console.html import alerts as alerts_html
from pushauth.web.console.html import audit as audit_html
from pushauth.web.console.html import users as users_html
from pushauth.web.console.html.layout import SECURITY_HEADERS, Markup, json_text, path_part, redirect, respond
from pushauth.web.console.sessions import Session, form_field, signed_in
from pushauth.web.queries import alert_query, audit_cursor
from pushauth.web.state import ACCOUNTS, ALERTS, AUDIT, CODES, DEVICES, OPERATORS

routes = web.RouteTableDef()

PAGE = 50
NOTE_MAX = 500
# How many users one search looks at (pushauth/accounts/service.py `search`): about a second's work.
USER_SCAN = 100_000
# What a finished action says on the page it leads back to (the query names one; nothing is reflected).
DONE = {"acked": "Alert acknowledged.", "already_acked": "That alert was already acknowledged.",
        "lock": "Account unlocked.", "suspension": "Suspension lifted: the user gets prompts again.",
        "all": "Account unlocked and suspension lifted.", "locked": "Account locked.",
        "revoked": "Device revoked.", "account_set": "Console account saved.",
        "account_removed": "Console account removed: its sessions have ended.",
        "otp_active": "Authenticator app active: its codes sign the user in.",
        "otp_revoked": "One-time-code method revoked.",
        "never_enrolled": "This user has no phone and no one-time-code method yet."}


# -- alerts ----------------------------------------------------------------------------------------------


@routes.get("/console")
@signed_in
async def feed_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Open alerts, most severe first, then newest; the filters are the page's query string."""
    query = alert_query(request, uid=None, default_status="open")
    start = io.int_query(request, "start", default=0, low=0, high=999_999)
    since = await request.app[FEED].tail()  # before the list: anything newer is replayed, not lost
    alerts, after = await request.app[ALERTS].search(query, start=start, limit=PAGE,
                                                     by_severity=query.status == "open")
    return respond(alerts_html.feed_page(alerts, since=since, session=session, filters=dict(request.query),
                                         after=after, done=DONE.get(request.query.get("done", ""))))


@routes.get("/console/history")
@signed_in
async def history_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Acknowledged alerts, newest first, a page at a time."""
    query = alert_query(request, uid=None, default_status="acked")
    start = io.int_query(request, "start", default=0, low=0, high=999_999)
    alerts, after = await request.app[ALERTS].search(query, start=start, limit=PAGE)
    return respond(alerts_html.history_page(alerts, session=session, filters=dict(request.query),
                                            start=start, after=after))


@routes.get("/console/alerts/{id}")
@signed_in
async def alert_page(request: web.Request, session: Session) -> web.StreamResponse:
    alert = await request.app[ALERTS].get(request.match_info["id"])
    return respond(alerts_html.alert_page(alert, session=session))


@routes.post("/console/alerts/{id}/ack")
@signed_in
async def ack(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("ack")
    note = (await form_field(request, "note") or "").strip()
    if len(note) > NOTE_MAX:
        raise Unprocessable(f"a note is {NOTE_MAX} characters at most", code="invalid_note")
    try:
        alert = await request.app[ALERTS].ack(request.match_info["id"], session.who, note)
    except Conflict:
        return redirect("/console?done=already_acked")
    await request.app[AUDIT].record("alert_acked", user=alert["user"], who=session.who, why=note,
                                    alert=alert["id"])
    return redirect("/console?done=acked")


# -- users -----------------------------------------------------------------------------------------------


def _user_url(user: str, done: str | None = None) -> str:
    return f"/console/users/{path_part(user)}" + (f"?done={done}" if done else "")


@routes.get("/console/users")
@signed_in
async def find_user(request: web.Request, session: Session) -> web.StreamResponse:
    """A user name that is one goes straight to its page; anything else is searched for, names that start
    with it first, then names that contain it."""
    query = request.query.get("user", "").strip()
    if not query:
        return respond(users_html.user_search_page(session=session))
    try:
        user = canonical(query)
    except Unprocessable as exc:
        return respond(users_html.user_search_page(session=session, query=query, error=exc.message),
                       status=422)
    if await request.app[DEVICES].uid_for(user) is not None:
        return redirect(_user_url(user))
    found, complete = await request.app[ACCOUNTS].search(user, limit=PAGE + 1, scan_max=USER_SCAN)
    if not complete:  # "no user name contains it" would be a claim about users nobody looked at
        partial = (f"Only {USER_SCAN:,} users were searched: a name that is not listed may still exist. "
                   "The whole user name goes straight to its page.")
    elif len(found) > PAGE:
        partial = f"More than {PAGE} names match: only the first {PAGE} are shown. Type more of the name."
    else:
        partial = None
    return respond(users_html.user_search_page(
        session=session, query=query, found=found[:PAGE], partial=partial,
        error=None if found or not complete else f"No user name contains {query}."))


@routes.get("/console/users/{user}")
@signed_in
async def user_page(request: web.Request, session: Session) -> web.StreamResponse:
    user = canonical(request.match_info["user"])
    try:
        view = await request.app[ACCOUNTS].view(user)
    except NotFound:
        # Never enrolled: the service desk may still give them a first phone, an authenticator app or an
        # access code (staff without the app), or lock the name. The page says there is nothing yet.
        view = {"user": user, "locked": False, "suspended": False, "devices": [], "pending_devices": [],
                "blocks": [], "recent_challenges": [], "otp_methods": [], "open_alerts": 0}
        return respond(users_html.user_page(view, [], session=session, done=DONE["never_enrolled"]),
                       status=404)
    # The user's open alerts in words, not ids (a user has few: each is an incident).
    uid = await request.app[DEVICES].uid_for(user) if view.get("open_alerts") else None
    alerts = await request.app[ALERTS].alerts(status="open", uid=uid, limit=20) if uid else []
    return respond(users_html.user_page(view, alerts, session=session,
                                        done=DONE.get(request.query.get("done", ""))))


@routes.post("/console/users/{user}/unlock")
@signed_in
async def unlock(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("unlock")
    user = canonical(request.match_info["user"])
    what = await form_field(request, "what") or "all"
    await request.app[ACCOUNTS].unlock(user, by=session.who, what=what)
    return redirect(_user_url(user, what))


@routes.post("/console/users/{user}/lock")
@signed_in
async def lock(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("lock")
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].lock(user, by=session.who)
    return redirect(_user_url(user, "locked"))


@routes.post("/console/users/{user}/devices/{device_id}/revoke")
@signed_in
async def revoke_device(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("revoke")
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].revoke_device(user, request.match_info["device_id"], by=session.who)
    return redirect(_user_url(user, "revoked"))


@routes.post("/console/users/{user}/access-code")
@signed_in
async def access_code(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("access_code")
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(session.role, user)
    code, expires = await request.app[ACCOUNTS].issue_access_code(user, by=session.who)
    return respond(users_html.access_code_page(user, code, rfc3339(expires), session=session))


@routes.post("/console/users/{user}/enrollment")
@signed_in
async def enrollment(request: web.Request, session: Session) -> web.StreamResponse:
    """A new phone for the user, on a service desk call: the QR code on screen for the user to scan. It is
    issued by a person of the security team, so it is vouched for like any admin-issued enrollment (the
    trust rules of issue 14), and audited under the person's name."""
    session.require("enroll")
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(session.role, user)
    made = await request.app[DEVICES].create_enrollment(user, requested_by=session.who)  # (audited there)
    qr = Markup(segno.make(made.uri, error="m").svg_inline(scale=5, title="Enrollment QR code"))
    return respond(users_html.enrollment_page(user, made.uri, rfc3339(made.expires_at), qr, session=session))


@routes.post("/console/users/{user}/otp-methods")
@signed_in
async def otp_enroll(request: web.Request, session: Session) -> web.StreamResponse:
    """An authenticator app for the user, on a service desk call (pushauth/codes; PROTOCOL.md 17.2)."""
    session.require("enroll")
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(session.role, user)
    made = await request.app[CODES].enroll_app(user, by=session.who)
    qr = Markup(segno.make(made.uri, error="m").svg_inline(scale=5, title="Authenticator app QR code"))
    # the URI (with the key) goes into the QR code only; the page shows the key for typing
    return respond(users_html.otp_enrollment_page(user, made.method_id, made.secret,
                                                  rfc3339(made.expires_at), qr, session=session))


@routes.post("/console/users/{user}/otp-methods/{method_id}/activate")
@signed_in
async def otp_activate(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("enroll")
    user, method_id = canonical(request.match_info["user"]), request.match_info["method_id"]
    await request.app[OPERATORS].require_outranks(session.role, user)
    code = await form_field(request, "code") or ""
    try:
        await request.app[CODES].activate(user, method_id, code, by=session.who)
    except (Unprocessable, Conflict) as exc:
        status = 422 if isinstance(exc, Unprocessable) else 409
        page = users_html.otp_activation_page(user, method_id, exc.message, session=session)
        return respond(page, status=status)
    return redirect(_user_url(user, "otp_active"))


@routes.post("/console/users/{user}/otp-methods/{method_id}/revoke")
@signed_in
async def otp_revoke(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("revoke")
    user = canonical(request.match_info["user"])
    await request.app[CODES].revoke(user, request.match_info["method_id"], by=session.who)
    return redirect(_user_url(user, "otp_revoked"))


# -- console accounts (owners) ----------------------------------------------------------------------------


@routes.get("/console/accounts")
@signed_in
async def accounts_page(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("accounts")
    return respond(accounts_html.accounts_page(await request.app[OPERATORS].list(), session=session,
                                               done=DONE.get(request.query.get("done", ""))))


@routes.post("/console/accounts")
@signed_in
async def set_account(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("accounts")
    user = canonical(await form_field(request, "user") or "")
    role = check_role(await form_field(request, "role") or "")
    await request.app[OPERATORS].set(user, role, by=session.who)
    return redirect("/console/accounts?done=account_set")


@routes.post("/console/accounts/{user}/remove")
@signed_in
async def remove_account(request: web.Request, session: Session) -> web.StreamResponse:
    session.require("accounts")
    await request.app[OPERATORS].remove(canonical(request.match_info["user"]), by=session.who)
    return redirect("/console/accounts?done=account_removed")


# -- the audit trail -------------------------------------------------------------------------------------


async def _audit_read(request: web.Request, limit: int) -> AuditPage:
    user = request.query.get("user", "").strip()
    return await request.app[AUDIT].page(
        user=canonical(user) if user else None, limit=limit, who=request.query.get("who", "").strip() or None,
        what=request.query.get("what", "").strip() or None, before=audit_cursor(request))


@routes.get("/console/audit")
@signed_in
async def audit_page(request: web.Request, session: Session) -> web.StreamResponse:
    found = await _audit_read(request, PAGE)
    partial_after = found.scanned if found.partial else None
    return respond(audit_html.audit_page(found.entries, session=session, filters=dict(request.query),
                                         after=found.older, partial_after=partial_after))


CSV_MAX = 10_000


@routes.get("/console/audit.csv")
@signed_in
async def audit_csv(request: web.Request, session: Session) -> web.StreamResponse:
    """The filtered trail as CSV (newest first, up to CSV_MAX rows). A cell that a spreadsheet would read
    as a formula (=, +, -, @ first) is prefixed with a quote: user names and reasons come from outside."""
    entries = (await _audit_read(request, CSV_MAX)).entries
    out = stdio.StringIO()
    writer = csv.writer(out)
    writer.writerow(["at", "what", "user", "who", "why", "details"])
    for e in entries:
        details = e.get("details")
        writer.writerow([_cell(e.get(k, "")) for k in ("at", "what", "user", "who", "why")]
                        + [_cell(json_text(details) if details else "")])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={**SECURITY_HEADERS,
                                 "Content-Disposition": 'attachment; filename="pushauth-audit.csv"'})


def _cell(value: object) -> str:
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# -- static files ----------------------------------------------------------------------------------------

_TYPES = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}
_STATIC = {name: resources.files("pushauth.web").joinpath("console_static", name).read_bytes()
           for name in ("console.css", "console.js", "demo.js", "form-post.js", "favicon.svg")}


@routes.get("/console/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    body = _STATIC.get(name)
    if body is None:
        raise NotFound("no such file")
    kind = _TYPES[name.rsplit(".", 1)[1]]
    return web.Response(body=body, content_type=kind, charset="utf-8" if kind != "image/svg+xml" else None,
                        headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})
