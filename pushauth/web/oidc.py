"""The OpenID Provider's routes (`[oidc] enabled`): discovery, authorize, the sign-in and number pages, token,
userinfo. The protocol is pushauth/oidc/provider.py; the pages pushauth/web/oidc_pages.py; the sign-in itself
the same Challenges service as the REST login flow (policy, locks, suspensions, detection, alerts).

    GET  /.well-known/openid-configuration
    GET  /oidc/authorize        (POST too, OpenID Connect Core 3.1.2.1) -> the sign-in page
    POST /oidc/signin           user (and password) -> the first factor; the prompt -> 303 /oidc/wait
    GET  /oidc/wait?signin=     the number; &poll=1 holds up to 25 s for the phone, then 303 to the client
                                with the code (approved) or says what happened
    POST /oidc/token            the code -> ID token + access token
    GET  /oidc/userinfo         (POST too) Bearer access token -> sub

A sign-in is bound to the browser that started it: a random cookie (HttpOnly, SameSite=Lax, Secure on an
https issuer, path /oidc) whose hash the sign-in keeps; its form carries a CSRF token it keeps too. Wrong
passwords count as failed authentications from the address (the rate limiter's block), and never prompt.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web

from pushauth import clock
from pushauth.accounts.users import canonical
from pushauth.challenges import context as login_context
from pushauth.challenges.service import REMEMBER_TYP, Allowed, Created
from pushauth.config import Application, Settings
from pushauth.crypto import jws
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.directory import LdapCheck, Verdict
from pushauth.errors import ApiError, ConfigError, RateLimited
from pushauth.oidc import entra, rsa
from pushauth.oidc.entra import EntraHints
from pushauth.oidc.hints import HintRefused, SignedHints, check_upstream, unverified_issuer
from pushauth.oidc.outbox import Notification
from pushauth.oidc.provider import Provider, RedirectError, ShownError, TokenError
from pushauth.oidc.settings import ACR_MFA, ACR_SFA, OidcClient
from pushauth.oidc.store import Backchannel, Grant, OidcStore, SignIn, new_secret
from pushauth.web import io, outbox
from pushauth.web import oidc_pages as pages
from pushauth.web.limits import BROWSER_PAGES
from pushauth.web.outbox import OUTBOX
from pushauth.web.state import AUDIT, CHALLENGES, CODES, KEYRING, LIMITER, RUNTIME, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

PROVIDER = web.AppKey("oidc_provider", Provider)
LDAP = web.AppKey("oidc_ldap", LdapCheck)
ENTRA = web.AppKey("oidc_entra", EntraHints)
UPSTREAMS = web.AppKey("oidc_upstreams", dict[str, SignedHints])  # client_id -> its upstream's keys
RSA_KEY = web.AppKey("oidc_rsa_key", rsa.RsaSigningKey)
BROWSER_COOKIE = "pushauth_oidc"
# A remembered browser (policy.remember_days): the remember token of REST login flows (PROTOCOL.md 11.7),
# bound to this browser's cookie above; a sign-in from it needs no phone until it expires.
REMEMBER_COOKIE = "pushauth_oidc_remember"
POLL_S = 25.0
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
CIBA_INTERVAL_S = 2  # the least time between a client's polls (CIBA Core 7.3 `interval`)
CIBA_MAX_EXPIRY_S = 600
# RFC 8176: the password (ldap), several factors, proof of possession of the phone's key, a software key
# (pushauth does not attest where the phone keeps it).
AMR_PHONE = ["pop", "swk"]
# The routes a person's browser opens (the sign-in form, the number, the code form): refused by the rate
# limits, they answer a page (`_rate_limited`). Token, userinfo, CIBA, the keys and discovery are a
# relying party's and stay the REST contract's JSON.
BROWSER_ROUTES = ("/oidc/authorize", "/oidc/signin", "/oidc/wait", "/oidc/code")


def setup(app: web.Application, settings: Settings) -> None:
    """Add the provider when `[oidc] enabled`."""
    oidc = settings.oidc
    if not oidc.enabled:
        return
    problems = oidc.problems({a.id for a in settings.applications})
    if problems:
        raise ConfigError("invalid setting oidc: " + "; ".join(problems))

    async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        app[PROVIDER] = Provider(oidc, oidc.issuer or settings.server.base_url,
                                 OidcStore(runtime.redis, runtime.keyspace))
        ldap = LdapCheck(oidc.ldap, "oidc.ldap") if oidc.ldap.url else None
        if ldap is not None:
            app[LDAP] = ldap
        # first_factor = "none" clients, and CIBA clients whose id_token_hint may come from an upstream
        app[UPSTREAMS] = {c.client_id: SignedHints(c.upstream_jwks_url, ["RS256", "ES256"])
                          for c in oidc.clients if c.upstream_jwks_url}
        if oidc.entra.enabled:
            app[ENTRA] = EntraHints(oidc.entra)
        if oidc.entra.enabled or any(c.id_token_alg == "RS256" for c in oidc.clients):  # noqa: S105
            issuer = app[PROVIDER].issuer
            app[RSA_KEY] = (rsa.ephemeral(issuer) if settings.keys.ephemeral
                            else rsa.load_or_create(Path(settings.keys.path), issuer))
        yield
        if ldap is not None:
            await ldap.aclose()

    # After the runtime (Redis) is open: the cleanup contexts run in order.
    app.cleanup_ctx.append(provider_ctx)
    if any(c.ciba == "ping" for c in oidc.clients):
        outbox.setup(app, settings)
    app.add_routes(routes)
    others = app.get(BROWSER_PAGES, {})  # another module's pages, if any, stay
    app[BROWSER_PAGES] = {**others, **dict.fromkeys(BROWSER_ROUTES, _rate_limited)}


def _rate_limited(request: web.Request, refused: RateLimited) -> web.Response:
    """A browser whose address is refused (too many requests, or the auth-failure block): how long to wait,
    in words, and who to call, with the refusal's status and Retry-After."""
    minutes = max(1, math.ceil(refused.retry_after_s / 60))
    text = (f"Too many sign-in attempts have come from your network. Wait {minutes} "
            f"minute{'s' if minutes > 1 else ''} and try again. If you cannot wait: "
            f"{request.app[SETTINGS].policy.user_message}")
    response = pages.respond(pages.message("Too many attempts", text), status=429)
    response.headers.update(refused.headers)
    return response


def _base(request: web.Request) -> str:
    return request.app[SETTINGS].server.base_url.rstrip("/")


def _secure(request: web.Request) -> bool:
    return urlsplit(request.app[PROVIDER].issuer).scheme == "https"


def _browser(request: web.Request) -> tuple[str, str | None]:
    """(hash of this browser's cookie, a new cookie value to set or None)."""
    value = request.cookies.get(BROWSER_COOKIE, "")
    if 32 <= len(value) <= 64:
        return sha256_hex(value), None
    value = new_secret()
    return sha256_hex(value), value


def _set_browser(response: web.Response, request: web.Request, value: str | None) -> web.Response:
    if value is not None:
        # As long-lived as a remembered browser may be: the remember token is bound to this value.
        days = request.app[SETTINGS].policy.remember_days
        response.set_cookie(BROWSER_COOKIE, value, path="/oidc", httponly=True, samesite="Lax",
                            secure=_secure(request), max_age=days * 86400 if days else None)
    return response


def _app(request: web.Request, client: OidcClient) -> Application:
    return next(a for a in request.app[SETTINGS].applications if a.id == client.application)


def _to_client(redirect_uri: str, **params: str | None) -> web.Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    sep = "&" if "?" in redirect_uri else "?"
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"{redirect_uri}{sep}{query}"})


# -- discovery ---------------------------------------------------------------------------------------------


@routes.get("/.well-known/openid-configuration")
async def discovery(request: web.Request) -> web.Response:
    metadata = request.app[PROVIDER].metadata(_base(request))
    metadata["authorization_response_iss_parameter_supported"] = True  # RFC 9207
    if any(c.ciba for c in request.app[PROVIDER].clients.values()):  # OpenID CIBA Core 1.0, section 4
        metadata["backchannel_authentication_endpoint"] = f"{_base(request)}/oidc/bc-authorize"
        metadata["backchannel_token_delivery_modes_supported"] = ["poll", "ping"]
        metadata["backchannel_user_code_parameter_supported"] = False
        metadata["grant_types_supported"] = [*metadata["grant_types_supported"], CIBA_GRANT]
    if RSA_KEY in request.app:  # RS256 for some clients (and Entra's profile): the keys with the RSA one
        metadata["jwks_uri"] = f"{_base(request)}/oidc/jwks"
        metadata["id_token_signing_alg_values_supported"] = ["ES256", "RS256"]
    if ENTRA in request.app:  # Entra's external-method profile: an ID token, form-posted
        metadata["response_types_supported"] = ["code", "id_token"]
        metadata["response_modes_supported"] = ["query", "form_post"]
        metadata["acr_values_supported"] = [*metadata["acr_values_supported"], entra.ACR]
    response = io.json(metadata)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# -- authorize and the pages --------------------------------------------------------------------------------


@routes.route("*", "/oidc/authorize")
async def authorize(request: web.Request) -> web.Response:
    if request.method not in ("GET", "POST"):
        return pages.respond(pages.message("Not allowed", "Use GET or POST."), status=405)
    params: dict[str, str] = dict(request.query)
    if request.method == "POST":
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    browser, new_cookie = _browser(request)
    provider = request.app[PROVIDER]
    if ENTRA in request.app and params.get("client_id") == request.app[SETTINGS].oidc.entra.client_id:
        return _set_browser(await _entra_authorize(request, params, browser), request, new_cookie)
    try:
        auth = provider.check_authorization(params, browser)
    except ShownError as exc:
        return pages.respond(pages.message("Cannot sign in", exc.message), status=400)
    except RedirectError as exc:
        return _to_client(exc.redirect_uri, error=exc.error, error_description=exc.description,
                          state=exc.state, iss=provider.issuer)
    client = auth.client
    if client.first_factor == "none":
        return _set_browser(await _behind_upstream(request, auth.signin, client, params), request, new_cookie)
    await provider.store.put_signin(auth.signin, provider.settings.signin_ttl_s)
    page = pages.signin(client.name, auth.signin.id, auth.signin.csrf, user=auth.signin.login_hint,
                        password=client.first_factor == "ldap")
    return _set_browser(pages.respond(page), request, new_cookie)


async def _behind_upstream(request: web.Request, signin: SignIn, client: OidcClient,
                           params: dict[str, str]) -> web.Response:
    """first_factor = "none": the upstream identity provider checked the password and names the user in a
    signed `id_token_hint`; straight to the phone."""
    provider = request.app[PROVIDER]
    try:
        claims = await request.app[UPSTREAMS][client.client_id].claims(params.get("id_token_hint", ""))
        user = canonical(check_upstream(claims, issuer=client.upstream_issuer,
                                        audience=client.upstream_audience or client.client_id,
                                        user_claim=client.upstream_user_claim,
                                        max_age_s=client.upstream_max_age_s))
    except HintRefused as exc:
        log.warning("oidc_upstream_hint_refused", client=client.client_id, why=exc.reason)
        return _to_client(signin.redirect_uri, error="login_required",
                          error_description="a valid id_token_hint from the upstream is required",
                          state=signin.state, iss=provider.issuer)
    except ApiError:
        return _to_client(signin.redirect_uri, error="invalid_request", error_description="invalid user",
                          state=signin.state, iss=provider.issuer)
    ip = io.client_ip(request)
    context = {"ip": ip or "", "user_agent": request.headers.get("User-Agent", "")[:512]}
    try:
        created = await request.app[CHALLENGES].create(_app(request, client), user,
                                                       {k: v for k, v in context.items() if v},
                                                       provider.settings.prompt_ttl_s)
    except ApiError as exc:
        if await _code_instead(request, exc, signin, user):
            await provider.store.put_signin(signin, provider.settings.signin_ttl_s)
            return _to_code_form(signin)
        return pages.respond(pages.message("Sign-in refused", _refusal(exc, request)), status=403)
    # What this token says is what pushauth did: the phone. The upstream vouches for the password.
    signin.user, signin.auth_time, signin.amr, signin.acr = user, clock.now(), list(AMR_PHONE), ACR_SFA
    if not isinstance(created, Allowed):
        signin.challenge_id, signin.number = created.id, created.number or ""
    else:
        signin.amr = []
    await provider.store.put_signin(signin, provider.settings.signin_ttl_s)
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"/oidc/wait?signin={signin.id}"})


async def _own_signin(request: web.Request, signin_id: str) -> SignIn | None:
    signin = await request.app[PROVIDER].store.signin(signin_id)
    if signin is None:
        return None
    browser, _ = _browser(request)
    return signin if equal(browser, signin.browser) else None


def _expired() -> web.Response:
    return pages.respond(pages.message(
        "This sign-in has expired", "Go back to the application and sign in again."), status=400)


@routes.get("/oidc/jwks")
async def jwks(request: web.Request) -> web.Response:
    """The provider's keys: the server's EC keys (as /.well-known/jwks.json) and, with the Entra profile, its
    RSA key (with `x5c`)."""
    keys = list(request.app[KEYRING].ring.jwks()["keys"])
    if RSA_KEY in request.app:
        keys.append(request.app[RSA_KEY].public_jwk())
    response = io.json({"keys": keys})
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


async def _entra_authorize(request: web.Request, params: dict[str, str], browser: str) -> web.Response:
    """Entra's external-method request (pushauth/oidc/entra.py): check it and the hint, prompt the phone,
    and show the number; the answer is form-posted from /oidc/wait."""
    cfg = request.app[SETTINGS].oidc.entra
    if params.get("redirect_uri") != cfg.redirect_uri:
        return pages.respond(pages.message("Cannot sign in", "The return address is not Microsoft's."),
                             status=400)
    state = params.get("state")

    def fail(error: str, description: str) -> web.Response:
        fields = {"error": error, "error_description": description}
        if state is not None:
            fields["state"] = state
        return pages.respond_form_post(pages.form_post(cfg.redirect_uri, fields), _origin(cfg.redirect_uri))

    if params.get("response_type") != "id_token" or params.get("response_mode") != "form_post":
        return fail("unsupported_response_type", "this client is answered with an id_token, form_post")
    if "openid" not in params.get("scope", "").split() or not params.get("nonce"):
        return fail("invalid_request", "scope openid and a nonce are required")
    try:
        hint = await request.app[ENTRA].verify(params.get("id_token_hint", ""))
        user = canonical(hint.user)
    except HintRefused as exc:
        log.warning("oidc_entra_hint_refused", why=exc.reason)
        return fail("invalid_request", "the id_token_hint was refused")
    except ApiError:
        return fail("invalid_request", "the hint's user name is not valid")
    application = next(a for a in request.app[SETTINGS].applications if a.id == cfg.application)
    ip = io.client_ip(request)
    context = {"ip": ip or "", "user_agent": request.headers.get("User-Agent", "")[:512]}
    provider = request.app[PROVIDER]
    try:
        created = await request.app[CHALLENGES].create(
            application, user, {k: v for k, v in context.items() if v}, provider.settings.prompt_ttl_s)
    except ApiError as exc:
        log.info("oidc_entra_refused", user=user, code=exc.code)
        return fail("access_denied", _refusal(exc, request))
    signin = SignIn(id=new_secret(), client_id=cfg.client_id, redirect_uri=cfg.redirect_uri, state=state,
                    nonce=params["nonce"], browser=browser, csrf=new_secret(), user=user, eam_sub=hint.sub,
                    auth_time=clock.now(), acr=entra.ACR, amr=[entra.AMR])
    if not isinstance(created, Allowed):
        signin.challenge_id, signin.number = created.id, created.number or ""
    await provider.store.put_signin(signin, provider.settings.signin_ttl_s)
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"/oidc/wait?signin={signin.id}"})


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _entra_answer(request: web.Request, signin: SignIn, fields: dict[str, str]) -> web.Response:
    if signin.state is not None:
        fields["state"] = signin.state
    return pages.respond_form_post(pages.form_post(signin.redirect_uri, fields), _origin(signin.redirect_uri))


@routes.post("/oidc/signin")
async def signin_post(request: web.Request) -> web.Response:
    form = await request.post()
    signin = await _own_signin(request, str(form.get("signin", "")))
    if signin is None or not equal(str(form.get("csrf", "")), signin.csrf):
        return _expired()
    provider = request.app[PROVIDER]
    client = provider.clients[signin.client_id]
    ldap = client.first_factor == "ldap"
    raw_user, password = str(form.get("user", "")), str(form.get("password", ""))

    def again(error: str) -> web.Response:
        return pages.respond(pages.signin(client.name, signin.id, signin.csrf, user=raw_user[:256],
                                          password=ldap, error=error), status=400)

    try:
        user = canonical(raw_user)
    except ApiError:
        return again("Wrong user name or password." if ldap else "That user name is not valid.")
    ip = io.client_ip(request)
    if ldap:
        verdict = await request.app[LDAP].check(user, password)
        if verdict is not Verdict.OK:
            await request.app[AUDIT].record("refused", user=user, who=f"oidc:{client.client_id}",
                                            why=f"password check: {verdict.value}", ip=ip or "")
            if verdict is Verdict.UNAVAILABLE:
                return again("Your password could not be checked just now. Try again shortly.")
            await request.app[LIMITER].auth_failed(ip)
            # The same words for an unknown user and a wrong password: nothing says who exists.
            return again("Wrong user name or password.")
    context = {"ip": ip or "", "user_agent": request.headers.get("User-Agent", "")[:512]}
    remember_token, approved_at = _remember_token(request, signin)
    try:
        created = await request.app[CHALLENGES].create(
            _app(request, client), user, {k: v for k, v in context.items() if v},
            provider.settings.prompt_ttl_s, remember_token=remember_token,
            browser_id=request.cookies.get(BROWSER_COOKIE))
    except ApiError as exc:
        if await _code_instead(request, exc, signin, user):
            await provider.store.update_signin(signin)
            return _to_code_form(signin)
        return pages.respond(pages.message("Sign-in refused", _refusal(exc, request)), status=403)
    signin.user, signin.auth_time = user, clock.now()
    if isinstance(created, Allowed):  # a remembered browser, an exempt account, or before the enforcement
        # date: no phone asked this time, so no claim of a second factor
        signin.amr, signin.acr = (["pwd"] if ldap else []), ACR_SFA
        if created.reason == "remembered" and not ldap:
            # Nobody authenticated just now: the last time was the phone's approval the browser stands for.
            signin.auth_time = approved_at
    else:
        signin.challenge_id, signin.number = created.id, created.number or ""
        signin.amr = (["pwd", "mfa", *AMR_PHONE] if ldap else list(AMR_PHONE))
        signin.acr = ACR_MFA if ldap else ACR_SFA
    await provider.store.update_signin(signin)
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"/oidc/wait?signin={signin.id}"})


async def _code_instead(request: web.Request, refused: ApiError, signin: SignIn, user: str) -> bool:
    """No phone, but an authenticator app or a token: the code is the second factor (the form of
    pushauth/web/oidc_codes.py, where lock, suspension and the wrong-code limit apply). If so, `signin`
    now waits for `user`'s code; the caller stores it and sends the browser `_to_code_form`."""
    if refused.code != "not_enrolled" or not await request.app[CODES].usable(user):
        return False
    signin.code_user = user
    return True


def _to_code_form(signin: SignIn) -> web.Response:
    return web.Response(status=303, headers={**pages.HEADERS, "Location": f"/oidc/code?signin={signin.id}"})


def _remember_token(request: web.Request, signin: SignIn) -> tuple[str | None, int]:
    """This browser's remember token if it may stand for the phone in this sign-in (the client's prompt,
    max_age and acr_values: `SignIn.remembered_max_age`), with the time of the phone's approval it was
    issued for (its `iat`); (None, 0) if not. Whether it is this user's, this application's and this
    browser's, and still not revoked, is for Challenges.create to say."""
    token, limit = request.cookies.get(REMEMBER_COOKIE), signin.remembered_max_age
    if not token or limit == 0:
        return None, 0
    try:
        header = jws.read_header(token, typ=REMEMBER_TYP)
        approved_at = jws.verify(token, request.app[KEYRING].ring.verifying_key(header["kid"])).get("iat")
    except jws.InvalidJWS:
        return None, 0
    if type(approved_at) is not int or (limit is not None and clock.now() - approved_at > limit):
        return None, 0
    return token, approved_at


def _decided_at(view: dict[str, Any], default: int) -> int:
    """When the phone approved (the status view's RFC 3339 `decided_at`): the sign-in's auth_time."""
    try:
        return calendar.timegm(time.strptime(str(view["decided_at"]), "%Y-%m-%dT%H:%M:%SZ"))
    except (KeyError, ValueError):
        return default


def _refusal(exc: ApiError, request: web.Request) -> str:
    blocked = _blocked(request, exc.code)
    if blocked is not None:
        return blocked
    if exc.code == "not_enrolled":
        return "No phone is set up for this account. " + request.app[SETTINGS].policy.user_message
    if exc.status == 429:
        return "Too many sign-in prompts. Wait a few minutes and try again."
    return "The sign-in was refused."


def _blocked(request: web.Request, reason: str) -> str | None:
    """What a locked or a suspended user is told, on every page that refuses them (the sign-in's, the code
    form's: pushauth/web/oidc_codes.py); None for any other reason."""
    user_message = request.app[SETTINGS].policy.user_message
    if reason == "locked":  # by the security team, or by detection: a person has to look at it
        return ("Sign-in is blocked: this account is locked, and only the IT service desk can unlock it. "
                + user_message)
    if reason == "suspended":  # after a "not me" (detection), or paused from the phone itself
        return f"Sign-in is blocked for now: prompts to your phone are on hold. {user_message}"
    return None


@routes.get("/oidc/wait")
async def wait(request: web.Request) -> web.Response:
    signin = await _own_signin(request, request.query.get("signin", ""))
    if signin is None or not signin.user:
        return _expired()
    provider = request.app[PROVIDER]
    application, name = _signing_in_to(request, signin)
    poll_url = f"/oidc/wait?signin={signin.id}&poll=1"
    remember: Any = None
    if signin.challenge_id:
        # offline codes: a link to the code form (pushauth/web/oidc_codes.py), not for Entra's profile
        code_url = None if signin.eam_sub else f"/oidc/code?signin={signin.id}"
        if "poll" not in request.query:
            return pages.respond(pages.number(name, signin.number, poll_url, code_url=code_url))
        view = await request.app[CHALLENGES].status(application, signin.challenge_id, POLL_S)
        status = view.get("status")
        if status == "pending":
            return pages.respond(pages.number(name, signin.number, poll_url, code_url=code_url))
        remember = view.get("remember_token") if status == "approved" else None
        if status == "approved":  # the user authenticated when the phone approved, not when it was asked
            signin.auth_time = _decided_at(view, signin.auth_time)
        else:
            if signin.eam_sub and await provider.store.end_signin(signin.id):
                return _entra_answer(request, signin, {"error": "access_denied",
                                                       "error_description": f"the sign-in was {status}"})
            return _not_approved(request, str(status), view.get("reason"))
    # approved, or allowed without a prompt: the code, once
    if not await provider.store.end_signin(signin.id):
        return _expired()
    if signin.eam_sub:
        token = entra.id_token(request.app[RSA_KEY], issuer=provider.issuer, client_id=signin.client_id,
                               sub=signin.eam_sub, nonce=signin.nonce or "", auth_time=signin.auth_time,
                               ttl_s=provider.settings.id_token_ttl_s)
        return _entra_answer(request, signin, {"id_token": token})
    grant = Grant(client_id=signin.client_id, redirect_uri=signin.redirect_uri, user=signin.user,
                  nonce=signin.nonce, code_challenge=signin.code_challenge, scope=signin.scope,
                  auth_time=signin.auth_time, amr=signin.amr, acr=signin.acr)
    code = await provider.store.issue_code(grant, provider.settings.code_ttl_s)
    response = _to_client(signin.redirect_uri, code=code, state=signin.state, iss=provider.issuer)
    if signin.challenge_id and isinstance(remember, str):
        days = request.app[SETTINGS].policy.remember_days
        response.set_cookie(REMEMBER_COOKIE, remember, path="/oidc", httponly=True, samesite="Lax",
                            secure=_secure(request), max_age=days * 86400)
    return response


def _signing_in_to(request: web.Request, signin: SignIn) -> tuple[Application, str]:
    """The pushauth application of a sign-in, and the name the pages show."""
    if signin.eam_sub:  # Entra's external method: its configured application
        app_id = request.app[SETTINGS].oidc.entra.application
        application = next(a for a in request.app[SETTINGS].applications if a.id == app_id)
        return application, application.name
    client = request.app[PROVIDER].clients[signin.client_id]
    return _app(request, client), client.name


def _not_approved(request: web.Request, status: str, reason: Any) -> web.Response:
    user_message = request.app[SETTINGS].policy.user_message
    if status == "denied" and reason == "not_me":
        text = f"You said you did not request this sign-in. Your security team has been told. {user_message}"
    elif status == "denied":
        text = "The sign-in was denied on your phone."
    elif status == "expired":
        text = "There was no answer from your phone in time. Go back to the application and try again."
    else:
        text = "The sign-in was cancelled. Go back to the application and try again."
    return pages.respond(pages.message("Not signed in", text), status=403)


# -- token and userinfo --------------------------------------------------------------------------------------


def _token_error(exc: TokenError) -> web.Response:
    response = io.json({"error": exc.error, "error_description": exc.description}, exc.status)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="pushauth"'
    return response


@routes.post("/oidc/token")
async def token(request: web.Request) -> web.Response:
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    provider = request.app[PROVIDER]
    if form.get("grant_type") == CIBA_GRANT:
        return await _ciba_token(request, form)
    try:
        answer = await provider.exchange(form, request.headers.get("Authorization"),
                                         request.app[KEYRING].ring, request.app.get(RSA_KEY))
    except TokenError as exc:
        await _count_refused_client(request, exc)
        log.info("oidc_token_refused", error=exc.error, why=exc.description)
        return _token_error(exc)
    response = io.json(answer)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


@routes.route("*", "/oidc/userinfo")
async def userinfo(request: web.Request) -> web.Response:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    claims = None
    if scheme.lower() == "bearer" and value:
        claims = await request.app[PROVIDER].userinfo(value.strip())
    if claims is None:
        response = io.json({"error": "invalid_token"}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    return io.json(claims)


# -- OpenID CIBA: sign-in without a browser ---------------------------------------------------------------


def _ciba_error(error: str, description: str, status: int = 400) -> web.Response:
    return _token_error(TokenError(error, description, status))


@routes.post("/oidc/bc-authorize")
async def backchannel_authorize(request: web.Request) -> web.Response:
    """CIBA Core 7: a client asks for a user's approval out of band. The phone is prompted with number
    matching; the number goes back to the client (`pushauth_number`) to show the user on its side (a
    service desk's screen, a kiosk). A `binding_message` (CIBA Core 7.1), once it passes
    `login_context.binding_message`, is shown on the phone as text beside the number, and echoed back
    (`pushauth_binding_message`) as the phone shows it (NFC)."""
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    provider = request.app[PROVIDER]
    try:
        client = provider.authenticate_client(form, request.headers.get("Authorization"))
    except TokenError as exc:
        await _count_refused_client(request, exc)
        return _token_error(exc)
    if not client.ciba:
        return _ciba_error("unauthorized_client", "this client may not use CIBA")
    if "openid" not in form.get("scope", "").split():
        return _ciba_error("invalid_scope", "the openid scope is required")
    if "user_code" in form:
        return _ciba_error("invalid_user_code", "user codes are not used: the phone is the factor")
    binding_message = None
    if form.get("binding_message"):  # RFC 6749 3.1: a parameter without a value is as if omitted
        binding_message = login_context.binding_message(form["binding_message"])
        if binding_message is None:
            return _ciba_error("invalid_binding_message", f"binding_message must be 1.."
                               f"{login_context.MAX_BINDING_MESSAGE} printable characters")
    if client.ciba == "ping" and not form.get("client_notification_token"):
        return _ciba_error("invalid_request", "ping mode needs client_notification_token")
    hints = [k for k in ("login_hint", "id_token_hint", "login_hint_token") if form.get(k)]
    if hints not in (["login_hint"], ["id_token_hint"]):
        return _ciba_error("invalid_request", "exactly one hint, login_hint or id_token_hint")
    # the deployment's own bound on a prompt's life (challenges.max_ttl_s) is the bound here too: past it,
    # the request is malformed (invalid_request), not refused (access_denied)
    longest = min(CIBA_MAX_EXPIRY_S, request.app[SETTINGS].challenges.max_ttl_s)
    raw_expiry = form.get("requested_expiry", str(min(provider.settings.prompt_ttl_s, longest)))
    if not (raw_expiry.isascii() and raw_expiry.isdigit()) or not 10 <= int(raw_expiry) <= longest:
        return _ciba_error("invalid_request", f"requested_expiry must be 10..{longest} seconds")
    try:
        named = form.get("login_hint") or await _hinted_user(request, client, form["id_token_hint"])
    except HintRefused as exc:
        log.warning("oidc_ciba_hint_refused", client=client.client_id, why=exc.reason)
        return _ciba_error("invalid_request", "the id_token_hint was refused")
    try:
        user = canonical(named)
        created = await request.app[CHALLENGES].create(_app(request, client), user, None, int(raw_expiry),
                                                       binding_message=binding_message)
    except ApiError as exc:
        if exc.code in ("not_enrolled", "invalid_user"):
            return _ciba_error("unknown_user_id", "no phone is set up for this user")
        # CIBA Core 13: access_denied is a 403, whatever refused (a lock, a suspension, push bombing); the
        # REST path's Retry-After goes along, so a client can tell when to try again.
        refused = _ciba_error("access_denied", _refusal(exc, request), 403)
        refused.headers.update(exc.headers)
        return refused
    if isinstance(created, Allowed):  # an exempt account: nothing to approve, nothing to bind
        return _ciba_error("access_denied", "this account signs in without a phone: not through CIBA")
    auth_req_id = new_secret()
    await provider.store.put_backchannel(auth_req_id, Backchannel(
        client_id=client.client_id, user=user, challenge_id=created.id, scope=form["scope"],
        expires_at=created.expires_at, interval_s=CIBA_INTERVAL_S,
        notification_token=form.get("client_notification_token", "")))
    if client.ciba == "ping":
        await _start_ping(request, client, auth_req_id, form["client_notification_token"], created)
    answer: dict[str, Any] = {"auth_req_id": auth_req_id, "expires_in": created.expires_at - clock.now(),
                              "pushauth_number": created.number}
    if client.ciba == "poll":
        answer["interval"] = CIBA_INTERVAL_S
    if binding_message is not None:
        answer["pushauth_binding_message"] = binding_message
    response = io.json(answer)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


async def _hinted_user(request: web.Request, client: OidcClient, token: str) -> str:
    """The user a CIBA `id_token_hint` names: an ID token of the client's configured upstream (its issuer,
    keys, audience and age, as for first_factor = "none"), or one this provider issued to the client."""
    if client.upstream_issuer and unverified_issuer(token) == client.upstream_issuer:
        claims = await request.app[UPSTREAMS][client.client_id].claims(token)
        return check_upstream(claims, issuer=client.upstream_issuer,
                              audience=client.upstream_audience or client.client_id,
                              user_claim=client.upstream_user_claim, max_age_s=client.upstream_max_age_s)
    return request.app[PROVIDER].own_hint_user(token, client.client_id, request.app[KEYRING].ring,
                                               request.app.get(RSA_KEY))


async def _count_refused_client(request: web.Request, exc: TokenError) -> None:
    """A 401 answered to a request with an Authorization header (client_secret_basic) is counted toward the
    address's auth-failure block by the rate_limit middleware (pushauth/web/limits.py), as on every route;
    one without it (client_secret_post) is a guessed secret the middleware cannot see: counted here. Once,
    either way."""
    if exc.status == 401 and "Authorization" not in request.headers:
        await request.app[LIMITER].auth_failed(io.client_ip(request))


async def _ciba_token(request: web.Request, form: dict[str, str]) -> web.Response:
    """CIBA Core 10-11: the token request with an auth_req_id."""
    provider = request.app[PROVIDER]
    try:
        client = provider.authenticate_client(form, request.headers.get("Authorization"))
    except TokenError as exc:
        await _count_refused_client(request, exc)
        return _token_error(exc)
    auth_req_id = form.get("auth_req_id", "")
    pending = await provider.store.backchannel(auth_req_id)
    if pending is None or pending.client_id != client.client_id:
        return _ciba_error("invalid_grant", "unknown or expired auth_req_id")
    now = clock.now()
    if client.ciba == "poll" and now - pending.last_poll < pending.interval_s:
        pending.interval_s += 5  # CIBA 11: slow_down "the interval MUST be increased ... by at least 5 s"
        pending.last_poll = now
        await provider.store.polled(auth_req_id, pending)
        return _ciba_error("slow_down", f"poll at most every {pending.interval_s} s")
    pending.last_poll = now
    view = await request.app[CHALLENGES].status(_app(request, client), pending.challenge_id, 0)
    status = view.get("status")
    if status == "pending":
        await provider.store.polled(auth_req_id, pending)
        return _ciba_error("authorization_pending", "the user has not answered yet")
    if status != "approved":
        await provider.store.end_backchannel(auth_req_id)
        if status == "expired":
            return _ciba_error("expired_token", "the request expired before the user answered")
        return _ciba_error("access_denied", f"the sign-in was {status}")
    if not await provider.store.end_backchannel(auth_req_id):
        return _ciba_error("invalid_grant", "unknown or expired auth_req_id")
    grant = Grant(client_id=client.client_id, redirect_uri="", user=pending.user, scope=pending.scope,
                  auth_time=now, amr=list(AMR_PHONE), acr=ACR_SFA)
    access_token = await provider.store.issue_access_token(grant, provider.settings.access_token_ttl_s)
    rsa_key = request.app.get(RSA_KEY) if client.id_token_alg == "RS256" else None  # noqa: S105
    response = io.json({"access_token": access_token, "token_type": "Bearer",
                        "expires_in": provider.settings.access_token_ttl_s, "scope": pending.scope,
                        "id_token": provider.id_token(grant, request.app[KEYRING].ring, rsa_key)})
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response


async def _start_ping(request: web.Request, client: OidcClient, auth_req_id: str, bearer: str,
                      created: Created) -> None:
    """Ping mode (CIBA Core 10.2): when the phone has answered (or the request expired), POST the
    auth_req_id to the client's notification endpoint with its bearer, until it takes it; the client then
    fetches the result at the token endpoint. Through the outbox (pushauth/oidc/outbox.py): a restart of
    this server does not lose it."""
    await request.app[OUTBOX].add(Notification(
        kind="ping", application=client.application, challenge_id=created.id,
        url=client.ciba_notification_endpoint, bearer=bearer, deadline=created.expires_at,
        auth_req_id=auth_req_id, sender=client.client_id))
