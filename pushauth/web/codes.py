"""Offline one-time codes (TOTP) over HTTP: the login flow's check, and the security team's enrollment,
activation, import, listing and revocation of a user's methods (PROTOCOL.md section 17)."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from pushauth.accounts.users import canonical
from pushauth.clock import rfc3339
from pushauth.codes.pskc import parse_csv, parse_pskc
from pushauth.errors import Unprocessable
from pushauth.web import io
from pushauth.web.schemas import ActivateCodeMethod, EnrollCodeMethod, ImportTokens, VerifyCode
from pushauth.web.state import CODES, CREDENTIALS, OPERATORS, SETTINGS

routes = web.RouteTableDef()


@routes.post("/v1/codes/verify")
async def verify_code(request: web.Request) -> web.Response:
    app = request.app[CREDENTIALS].application(request)
    body = io.decode(await io.read_body(request), VerifyCode)
    user = canonical(body.user)
    codes = request.app[CODES]
    checked = await codes.verify(user, body.code, via="login_flow", by=f"app:{app.id}")
    if not checked.valid:
        out = {"valid": False, "user": user, "reason": checked.reason}
        if checked.reason in ("locked", "suspended"):
            out["user_message"] = request.app[SETTINGS].policy.user_message
        return io.json(out)
    jti, assertion = codes.assertion(app, user, checked)
    return io.json({"valid": True, "user": user, "id": jti, "method": checked.method_id, "amr": ["otp"],
                    "assertion": assertion})


@routes.get("/v1/users/{user}/otp-methods")
async def list_methods(request: web.Request) -> web.Response:
    request.app[CREDENTIALS].admin(request, "read")
    user = canonical(request.match_info["user"])
    return io.json({"user": user, "methods": await request.app[CODES].methods(user)})


@routes.post("/v1/users/{user}/otp-methods")
async def enroll_method(request: web.Request) -> web.Response:
    admin = request.app[CREDENTIALS].admin(request, "enroll")
    raw = await io.read_body(request)
    body = io.decode(raw, EnrollCodeMethod) if raw.strip() else EnrollCodeMethod()
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(admin.role, user)
    enrolled = await request.app[CODES].enroll_app(user, by=admin.who, name=body.name)
    # The only time the seed leaves the server: shown to the security team, scanned by the user's app.
    return io.json({"id": enrolled.method_id, "user": user, "status": "pending", "uri": enrolled.uri,
                    "secret": enrolled.secret, "qr_svg": enrolled.qr_svg,
                    "expires_at": rfc3339(enrolled.expires_at)}, status=201)


@routes.post("/v1/users/{user}/otp-methods/{id}/activate")
async def activate_method(request: web.Request) -> web.Response:
    admin = request.app[CREDENTIALS].admin(request, "enroll")
    body = io.decode(await io.read_body(request), ActivateCodeMethod)
    user = canonical(request.match_info["user"])
    await request.app[OPERATORS].require_outranks(admin.role, user)
    await request.app[CODES].activate(user, request.match_info["id"], body.code, by=admin.who)
    return io.json({"id": request.match_info["id"], "user": user, "status": "active"})


@routes.delete("/v1/users/{user}/otp-methods/{id}")
async def revoke_method(request: web.Request) -> web.Response:
    admin = request.app[CREDENTIALS].admin(request, "revoke")
    user = canonical(request.match_info["user"])
    await request.app[CODES].revoke(user, request.match_info["id"], by=admin.who)
    return io.json({"id": request.match_info["id"], "user": user, "status": "revoked"})


@routes.post("/v1/otp-methods/import")
async def import_tokens(request: web.Request) -> web.Response:
    admin = request.app[CREDENTIALS].admin(request, "enroll")
    body = io.decode(await io.read_body(request), ImportTokens)
    if body.psk and body.format != "pskc":
        raise Unprocessable("psk goes with a PSKC file only", code="invalid_import")
    psk = bytes.fromhex(body.psk) if body.psk else None
    tokens = parse_pskc(body.data, psk) if body.format == "pskc" else parse_csv(body.data)
    assignments = {serial: canonical(user) for serial, user in body.assignments.items()}
    tokens = [t if t.user is None else replace(t, user=canonical(t.user)) for t in tokens]
    for user in {*assignments.values(), *(t.user for t in tokens if t.user)}:
        await request.app[OPERATORS].require_outranks(admin.role, user)
    imported = await request.app[CODES].import_tokens(tokens, assignments, by=admin.who, source=body.format)
    return io.json({"imported": imported}, status=201)
