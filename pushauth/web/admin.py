"""The security team's API: alerts, users (view, lock, unlock, revoke a device), alert delivery (dead
letter, disabled sinks) and console accounts. Every call needs an admin token whose role may do the call's
action (pushauth/operators.py: `viewer` reads, `service_desk` also unlocks and issues access codes,
`responder` also acknowledges, locks and revokes, `owner` also changes sinks, policies and accounts); any
other is refused with 403 `role_forbidden`. Every action records which token acted (`admin:<its name>`,
or `admin:<first 12 hex digits of its SHA-256>`)."""

from __future__ import annotations

from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.clock import rfc3339
from pushauth.errors import NotFound, Unprocessable
from pushauth.web import io
from pushauth.web.auth import Admin
from pushauth.web.queries import alert_query, audit_cursor
from pushauth.web.schemas import AccountPolicy, AckAlert, ConsoleAccount, Unlock
from pushauth.web.state import (
    ACCOUNTS,
    ALERTS,
    AUDIT,
    CREDENTIALS,
    DEAD_LETTERS,
    DEVICES,
    OPERATORS,
    SETTINGS,
)

routes = web.RouteTableDef()

MAX_LIST = 500


def _admin(request: web.Request, action: str = "accounts") -> Admin:
    """The caller's admin token, if its role may do `action`; without one, owners only (fail closed)."""
    return request.app[CREDENTIALS].admin(request, action)


def _by(admin: Admin) -> str:
    return admin.who


@routes.get("/v1/alerts")
async def list_alerts(request: web.Request) -> web.Response:
    """Newest first (`order=severity`: open alerts by severity, then newest), filtered by status, user,
    severity, kind, app, since / until or range; `start` is the `next` of the previous page."""
    _admin(request, "read")
    limit = io.int_query(request, "limit", default=100, low=1, high=MAX_LIST)
    start = io.int_query(request, "start", default=0, low=0, high=999_999)
    order = request.query.get("order", "newest")
    if order not in ("newest", "severity"):
        raise Unprocessable("order must be newest or severity", code="invalid_query")
    uid = None
    if request.query.get("user"):
        uid = await request.app[DEVICES].uid_for(canonical(request.query["user"]))
    query = alert_query(request, uid=uid, default_status=None)
    if request.query.get("user") and uid is None:
        return io.json({"alerts": [], "next": None})
    found, after = await request.app[ALERTS].search(query, start=start, limit=limit,
                                                    by_severity=order == "severity")
    return io.json({"alerts": found, "next": after})


@routes.get("/v1/alerts/{id}")
async def get_alert(request: web.Request) -> web.Response:
    _admin(request, "read")
    return io.json(await request.app[ALERTS].get(request.match_info["id"]))


@routes.post("/v1/alerts/{id}/ack")
async def ack_alert(request: web.Request) -> web.Response:
    """Body optional: `{"note": "..."}`."""
    admin = _admin(request, "ack")
    body = await io.read_body(request)
    note = io.decode(body, AckAlert).note.strip() if body.strip() else ""
    alert = await request.app[ALERTS].ack(request.match_info["id"], _by(admin), note)
    await request.app[AUDIT].record("alert_acked", user=alert["user"], who=_by(admin), why=note,
                                    alert=alert["id"])
    return io.json(alert)


@routes.get("/v1/users/{user}")
async def get_user(request: web.Request) -> web.Response:
    _admin(request, "read")
    return io.json(await request.app[ACCOUNTS].view(canonical(request.match_info["user"])))


@routes.post("/v1/users/{user}/unlock")
async def unlock_user(request: web.Request) -> web.Response:
    admin = _admin(request, "unlock")
    body = await io.read_body(request)
    what = io.decode(body, Unlock).what if body.strip() else "all"
    user = canonical(request.match_info["user"])
    cleared = await request.app[ACCOUNTS].unlock(user, by=_by(admin), what=what)
    return io.json({"user": user, "locked": False if what != "suspension" else None,
                    "suspended": False if what != "lock" else None, **cleared})


@routes.post("/v1/users/{user}/lock")
async def lock_user(request: web.Request) -> web.Response:
    admin = _admin(request, "lock")
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].lock(user, by=_by(admin))
    return io.json({"user": user, "locked": True})


@routes.delete("/v1/users/{user}/devices/{device_id}")
async def revoke_device(request: web.Request) -> web.Response:
    admin = _admin(request, "revoke")
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].revoke_device(user, request.match_info["device_id"], by=_by(admin))
    return io.json({"user": user, "device_id": request.match_info["device_id"], "status": "revoked"})


@routes.post("/v1/users/{user}/devices/{device_id}/allow-revoke")
async def allow_revoke(request: web.Request) -> web.Response:
    """Let a phone inside its cool-down (`enrollment.revoke_cooldown_s`) revoke the user's older phones."""
    admin = _admin(request, "allow_revoke")
    user = canonical(request.match_info["user"])
    await request.app[ACCOUNTS].allow_revoke(user, request.match_info["device_id"], by=_by(admin))
    return io.json({"user": user, "device_id": request.match_info["device_id"], "may_revoke": True})


@routes.get("/v1/alert-deliveries/dead")
async def list_dead(request: web.Request) -> web.Response:
    _admin(request, "read")
    limit = io.int_query(request, "limit", default=100, low=1, high=MAX_LIST)
    return io.json({"dead": await request.app[DEAD_LETTERS].entries(limit)})


@routes.post("/v1/alert-deliveries/dead/{entry}/replay")
async def replay_dead(request: web.Request) -> web.Response:
    _admin(request, "sinks")
    entry = request.match_info["entry"]
    if not entry.replace("-", "").isdigit() or entry.count("-") != 1:
        raise NotFound("no such dead-letter entry")
    if not await request.app[DEAD_LETTERS].replay(entry):
        raise NotFound("no such dead-letter entry")
    return io.json({"id": entry, "status": "replayed"})


@routes.get("/v1/alert-sinks")
async def list_sinks(request: web.Request) -> web.Response:
    _admin(request, "read")
    configured = {s.name: s for s in request.app[SETTINGS].alerts.sinks}
    return io.json({"sinks": await request.app[DEAD_LETTERS].sinks(configured)})


@routes.post("/v1/alert-sinks/{name}/enable")
async def enable_sink(request: web.Request) -> web.Response:
    _admin(request, "sinks")
    name = request.match_info["name"]
    if name not in {s.name for s in request.app[SETTINGS].alerts.sinks}:
        raise NotFound("no such alert sink")
    was_disabled = await request.app[DEAD_LETTERS].enable(name)
    return io.json({"name": name, "enabled": True, "was_disabled": was_disabled})


@routes.put("/v1/users/{user}/policy")
async def set_policy(request: web.Request) -> web.Response:
    admin = _admin(request, "policy")
    body = io.decode(await io.read_body(request), AccountPolicy)
    user = canonical(request.match_info["user"])
    kind = await request.app[ACCOUNTS].set_policy(user, exempt=body.exempt, shared=body.shared, by=_by(admin),
                                                  force=body.force)
    return io.json({"user": user, "policy": kind})


@routes.post("/v1/users/{user}/access-codes")
async def issue_access_code(request: web.Request) -> web.Response:
    admin = _admin(request, "access_code")
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(admin.role, user)
    code, expires = await request.app[ACCOUNTS].issue_access_code(user, by=_by(admin))
    return io.json({"code": code, "expires_at": rfc3339(expires)}, status=201)


@routes.get("/v1/users/{user}/remembered")
async def list_remembered(request: web.Request) -> web.Response:
    _admin(request, "read")
    view = await request.app[ACCOUNTS].view(canonical(request.match_info["user"]))
    return io.json({"remembered": view["remembered_browsers"]})


@routes.delete("/v1/users/{user}/remembered")
async def revoke_all_remembered(request: web.Request) -> web.Response:
    admin = _admin(request, "revoke")
    user = canonical(request.match_info["user"])
    n = await request.app[ACCOUNTS].revoke_remembered(user, None, by=_by(admin), why="security team")
    return io.json({"user": user, "revoked": n})


@routes.delete("/v1/users/{user}/remembered/{token_id}")
async def revoke_one_remembered(request: web.Request) -> web.Response:
    admin = _admin(request, "revoke")
    user = canonical(request.match_info["user"])
    n = await request.app[ACCOUNTS].revoke_remembered(user, request.match_info["token_id"], by=_by(admin),
                                                       why="security team")
    if not n:
        raise NotFound("no such remembered browser")
    return io.json({"user": user, "revoked": n})


@routes.get("/v1/audit")
async def audit_trail(request: web.Request) -> web.Response:
    """Newest first, filtered by user, who (the actor) and what (the action); `before` is the id of the
    last entry of the previous page. A filtered read that stopped at its scan bound before filling the page
    says so (`complete` false) with where to search on from (`resume_before`): a short page is then no
    proof that nothing older matches."""
    _admin(request, "read")
    limit = io.int_query(request, "limit", default=100, low=1, high=MAX_LIST)
    user = canonical(request.query["user"]) if request.query.get("user") else None
    found = await request.app[AUDIT].page(user=user, limit=limit, who=request.query.get("who") or None,
                                          what=request.query.get("what") or None,
                                          before=audit_cursor(request))
    entries = found.entries
    return io.json({"entries": entries, "next": entries[-1]["id"] if len(entries) == limit else None,
                    "complete": not found.partial, "scanned": found.scanned,
                    "resume_before": found.older if found.partial else None})


# -- console accounts (owners only) ----------------------------------------------------------------------


@routes.get("/v1/console-accounts")
async def list_accounts(request: web.Request) -> web.Response:
    _admin(request, "accounts")
    return io.json({"accounts": await request.app[OPERATORS].list()})


@routes.put("/v1/console-accounts/{user}")
async def set_account(request: web.Request) -> web.Response:
    admin = _admin(request, "accounts")
    body = io.decode(await io.read_body(request), ConsoleAccount)
    user = canonical(request.match_info["user"])
    return io.json(await request.app[OPERATORS].set(user, body.role, by=_by(admin)))


@routes.delete("/v1/console-accounts/{user}")
async def remove_account(request: web.Request) -> web.Response:
    admin = _admin(request, "accounts")
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].remove(user, by=_by(admin))
    return io.json({"user": user, "removed": True})
