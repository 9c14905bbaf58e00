"""The login flow (relying party) API: challenges and enrollments."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.challenges.service import Allowed
from pushauth.clock import rfc3339
from pushauth.operators import require
from pushauth.web import io
from pushauth.web.auth import Admin
from pushauth.web.schemas import (
    CreateChallenge,
    CreateEnrollment,
    RevokeRemembered,
    UserSignal,
    VerifyAccessCode,
)
from pushauth.web.state import ACCOUNTS, CHALLENGES, CREDENTIALS, DEVICES, OPERATORS, SETTINGS

routes = web.RouteTableDef()


@routes.post("/v1/challenges")
async def create_challenge(request: web.Request) -> web.Response:
    app = request.app[CREDENTIALS].application(request)
    body = io.decode(await io.read_body(request), CreateChallenge)
    ctx = None
    if body.context is not None:
        ctx = {k: v for k, v in (("ip", body.context.ip), ("user_agent", body.context.user_agent),
                                 ("location", body.context.location)) if v}
    created = await request.app[CHALLENGES].create(app, canonical(body.user), ctx, body.ttl_s,
                                                   remember_token=body.remember_token,
                                                   browser_id=body.browser_id)
    if isinstance(created, Allowed):
        allowed: dict[str, Any] = {"status": "allowed", "reason": created.reason}
        if created.account:
            allowed["account"] = created.account
        if created.enroll_by is not None:
            allowed["enroll_by"] = rfc3339(created.enroll_by)
        return io.json(allowed)
    out = {"id": created.id, "status": "pending", "expires_at": rfc3339(created.expires_at)}
    if created.number is not None:
        out["number"] = created.number
    return io.json(out, status=201)


@routes.get("/v1/challenges/{id}")
async def get_challenge(request: web.Request) -> web.Response:
    app = request.app[CREDENTIALS].application(request)
    wait = io.int_query(request, "wait", default=0, low=0, high=request.app[SETTINGS].server.max_wait_s)
    return io.json(await request.app[CHALLENGES].status(app, request.match_info["id"], wait))


@routes.delete("/v1/challenges/{id}")
async def cancel_challenge(request: web.Request) -> web.Response:
    app = request.app[CREDENTIALS].application(request)
    await request.app[CHALLENGES].cancel(app, request.match_info["id"])
    return io.json({"status": "cancelled"})


@routes.post("/v1/enrollments")
async def create_enrollment(request: web.Request) -> web.Response:
    who = request.app[CREDENTIALS].identify(request)
    body = io.decode(await io.read_body(request), CreateEnrollment)
    user = canonical(body.user)
    if isinstance(who, Admin):  # a vouched enrollment: only a role that may enroll (pushauth/operators.py)
        require(who.role, "enroll")
        await request.app[OPERATORS].require_outranks(who.role, user)
    by = who.who if isinstance(who, Admin) else f"app:{who.id}"
    enrollment = await request.app[DEVICES].create_enrollment(user, requested_by=by)  # (audited there)
    return io.json({"id": enrollment.id, "user": enrollment.user, "code": enrollment.code,
                    "uri": enrollment.uri, "expires_at": rfc3339(enrollment.expires_at),
                    "activation": enrollment.activation}, status=201)


@routes.post("/v1/access-codes/verify")
async def verify_access_code(request: web.Request) -> web.Response:
    app = request.app[CREDENTIALS].application(request)
    body = io.decode(await io.read_body(request), VerifyAccessCode)
    valid, why = await request.app[ACCOUNTS].verify_access_code(canonical(body.user), body.code,
                                                                by=f"app:{app.id}")
    if valid:
        return io.json({"valid": True})
    out = {"valid": False, "reason": why}
    if why in ("locked", "suspended"):
        out["user_message"] = request.app[SETTINGS].policy.user_message
    return io.json(out)


@routes.post("/v1/remembered/revoke")
async def revoke_remembered(request: web.Request) -> web.Response:
    """The login flow forgets one browser (the user signed out with "forget this browser")."""
    app = request.app[CREDENTIALS].application(request)
    body = io.decode(await io.read_body(request), RevokeRemembered)
    found = request.app[CHALLENGES].remember_token_owner(app, body.remember_token)
    if found is None:
        return io.json({"revoked": 0})
    user, token_id = found
    n = await request.app[ACCOUNTS].revoke_remembered(user, token_id, by=f"app:{app.id}",
                                                      why="forget browser")
    return io.json({"revoked": n})


@routes.post("/v1/signals/password-reset")
async def password_reset(request: web.Request) -> web.Response:
    """The user's password was reset: every remembered browser must prompt again."""
    app = request.app[CREDENTIALS].application(request)
    user = canonical(io.decode(await io.read_body(request), UserSignal).user)
    n = await request.app[ACCOUNTS].revoke_remembered(user, None, by=f"app:{app.id}", why="password reset")
    return io.json({"user": user, "revoked": n})
