"""The OpenID sign-in page's "use a code" (offline codes, PROTOCOL.md 17.6): instead of approving on the
phone, the user types a one-time code from the phone's offline codes, an authenticator app or a token.

    GET  /oidc/code?signin=     the code form (the first factor has passed: a prompt is waiting, or the
                                user has no phone but an active method and was sent here by /oidc/signin)
    POST /oidc/code             signin, csrf, code -> valid: the prompt (if any) is withdrawn, 303
                                /oidc/wait, which issues the authorization code (amr "otp"); wrong: the
                                form again (400)

A wrong code counts as a failed authentication from the browser's address (the rate limiter's auth-failure
block) besides the user's own wrong-code window and lockout (pushauth/codes/lua/use_code.lua). Registered
with the provider's routes when `[oidc] enabled` (pushauth/web/app.py).
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from pushauth.crypto.secrets import equal
from pushauth.errors import ApiError, RateLimited
from pushauth.oidc.settings import ACR_MFA, ACR_SFA
from pushauth.oidc.store import SignIn
from pushauth.web import io
from pushauth.web import oidc_pages as pages
from pushauth.web.oidc import PROVIDER, _app, _blocked, _expired, _own_signin
from pushauth.web.state import CHALLENGES, CODES, LIMITER

routes = web.RouteTableDef()


async def _waiting(request: web.Request, signin_id: str) -> SignIn | None:
    """This browser's sign-in, past its first factor with a prompt waiting, or waiting for the code of a user
    without a phone (`code_user`); not Entra's profile."""
    signin = await _own_signin(request, signin_id)
    if signin is None or signin.eam_sub:
        return None
    if (signin.user and signin.challenge_id) or (signin.code_user and not signin.user):
        return signin
    return None


@routes.get("/oidc/code")
async def code_form(request: web.Request) -> web.Response:
    signin = await _waiting(request, request.query.get("signin", ""))
    if signin is None:
        return _expired()
    client = request.app[PROVIDER].clients[signin.client_id]
    return pages.respond(pages.code_form(client.name, signin.id, signin.csrf))


@routes.post("/oidc/code")
async def code_post(request: web.Request) -> web.Response:
    form = await request.post()
    signin = await _waiting(request, str(form.get("signin", "")))
    if signin is None or not equal(str(form.get("csrf", "")), signin.csrf):
        return _expired()
    provider = request.app[PROVIDER]
    client = provider.clients[signin.client_id]
    ip = io.client_ip(request)
    user = signin.user or signin.code_user
    try:
        checked = await request.app[CODES].verify(user, str(form.get("code", ""))[:32], via="oidc",
                                                  by=f"oidc:{client.client_id}")
    except RateLimited:
        return pages.respond(pages.message("Sign-in refused", "Too many wrong codes. Wait a few minutes and "
                                           "try again."), status=429)
    blocked = _blocked(request, checked.reason)  # in the words of the provider's other pages
    if blocked is not None:
        return pages.respond(pages.message("Sign-in refused", blocked), status=403)
    if not checked.valid:
        await request.app[LIMITER].auth_failed(ip)
        return pages.respond(pages.code_form(client.name, signin.id, signin.csrf,
                                             error="That code is not valid."), status=400)
    if signin.challenge_id:
        with contextlib.suppress(ApiError):  # answered or expired meanwhile: nothing to withdraw
            await request.app[CHALLENGES].cancel(_app(request, client), signin.challenge_id)
    ldap = client.first_factor == "ldap"
    signin.user, signin.code_user = user, ""
    signin.challenge_id, signin.number = "", ""
    signin.auth_time = checked.auth_time
    signin.amr = ["pwd", "mfa", "otp"] if ldap else ["otp"]
    signin.acr = ACR_MFA if ldap else ACR_SFA
    await provider.store.update_signin(signin)
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"/oidc/wait?signin={signin.id}"})
