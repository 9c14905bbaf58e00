"""Keycloak's CIBA HTTP authentication channel (`[oidc.keycloak] enabled`; pushauth/oidc/keycloak.py has the
protocol and the Keycloak source it follows):

    POST /keycloak/authentication-channel   Keycloak's request, `Authorization: Bearer <the realm's token>`
                                            -> 201, the phone prompted; then, when the phone has answered
                                            (or the prompt expired or was cancelled), a POST of the result
                                            to the realm's callback with the same bearer

The sign-in is a prompt of the same Challenges service as every other login flow, for the realm's
configured application: policy, locks, suspensions, "not me" and every detection rule apply unchanged. It
has no number to match: Keycloak's answer to its client carries only its auth_req_id, so a number could
never reach the user. The client's `binding_message`, which it shows the user, is shown on the phone
instead (as text, bounded: pushauth/challenges/context.py).

Errors are the contract's `{"error", "message"}`: Keycloak reads only the status (anything but 201 and it
tells its client 503), so the shape is for whoever reads the logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from pushauth import clock
from pushauth.accounts.users import canonical
from pushauth.challenges import context as login_context
from pushauth.challenges.service import Allowed
from pushauth.clock import rfc3339
from pushauth.config import Application, Settings
from pushauth.errors import ApiError, ConfigError, Conflict, Forbidden, PushAuthError, Unprocessable
from pushauth.oidc import keycloak
from pushauth.oidc.keycloak import Bearer, ChannelRequest, KeycloakChannel
from pushauth.store import STORE_DOWN_ERRORS
from pushauth.web import io
from pushauth.web.state import CHALLENGES, LIMITER, REDIS, RUNTIME, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

CHANNEL = web.AppKey("keycloak_channel", KeycloakChannel)
CALLBACKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("keycloak_callbacks")  # in flight (strong refs)
WAIT_S = 25.0  # one long wait on the prompt's decision, repeated until it is decided or expires
# The prompt ends this long before the realm's bearer does, so that its "expired" (CANCELLED) still reaches
# Keycloak with a bearer its callback accepts.
CALLBACK_MARGIN_S = 5
MIN_PROMPT_S = 10
STORE_RETRY_S = 1.0
_STORE_DOWN: tuple[type[Exception], ...] = (PushAuthError, *STORE_DOWN_ERRORS)


def setup(app: web.Application, settings: Settings) -> None:
    """Add the channel when `[oidc.keycloak] enabled`."""
    cfg = settings.oidc.keycloak
    if not cfg.enabled:
        return
    problems = cfg.problems({a.id for a in settings.applications})
    if problems:
        raise ConfigError("invalid setting oidc.keycloak: " + "; ".join(problems))
    app[CHANNEL] = KeycloakChannel(cfg)  # a bad jwks_file fails here, before anything is served

    async def callbacks_ctx(app: web.Application) -> AsyncIterator[None]:
        callbacks: set[asyncio.Task[None]] = set()
        app[CALLBACKS] = callbacks
        yield
        for task in list(callbacks):  # see _follow: a shutdown drops the callbacks still waiting
            task.cancel()

    app.cleanup_ctx.append(callbacks_ctx)
    app.add_routes(routes)


@routes.post("/keycloak/authentication-channel")
async def authentication_channel(request: web.Request) -> web.Response:
    try:
        bearer = await request.app[CHANNEL].verify(request.headers.get("Authorization"))
    except ApiError:
        await request.app[LIMITER].auth_failed(io.client_ip(request))
        raise
    body = io.decode(await io.read_body(request), ChannelRequest)
    try:
        user = canonical(body.login_hint)
    except ApiError:
        raise Unprocessable("login_hint is not a valid user name", code="invalid_user") from None
    binding_message = None
    if body.binding_message is not None:
        binding_message = login_context.binding_message(body.binding_message)
        if binding_message is None:
            raise Unprocessable(f"binding_message must be 1..{login_context.MAX_BINDING_MESSAGE} printable "
                                "characters", code="invalid_binding_message")
    ttl = min(bearer.exp - CALLBACK_MARGIN_S - clock.now(), bearer.realm.max_prompt_s,
              request.app[SETTINGS].challenges.max_ttl_s)
    if ttl < MIN_PROMPT_S:
        raise Unprocessable("the realm's request expires too soon for a prompt", code="expires_too_soon")
    # One prompt per realm request: the bearer is Keycloak's to send once, a replay of it is someone else's.
    runtime = request.app[RUNTIME]
    if not await request.app[REDIS].set(runtime.keyspace.keycloak_request(bearer.realm.issuer, bearer.jti),
                                        "1", nx=True, exat=bearer.exp):
        raise Conflict("this authentication request was already taken", code="replayed")
    application = _application(request, bearer)
    created = await request.app[CHALLENGES].create(application, user, None, int(ttl), number_matching=False,
                                                   binding_message=binding_message)
    if isinstance(created, Allowed):  # exempt, or before the enforcement date: nothing to approve
        raise Forbidden("this account signs in without a phone: not through Keycloak's CIBA",
                        code="no_prompt")
    log.info("keycloak_channel_prompt", realm=bearer.realm.issuer, client=bearer.client_id,
             binding_message=binding_message is not None, consent=body.is_consent_required)
    _follow(request.app, application, bearer, created.id)
    return io.json({"status": "pending", "expires_at": rfc3339(created.expires_at)}, 201)


def _application(request: web.Request, bearer: Bearer) -> Application:
    app_id = bearer.realm.application
    return next(a for a in request.app[SETTINGS].applications if a.id == app_id)


def _follow(app: web.Application, application: Application, bearer: Bearer, cid: str) -> None:
    """Wait for the prompt's decision, then tell the realm. The task lives in this server process: a
    restart before the phone answers loses the callback, and Keycloak's client is told expired_token when
    the request runs out."""

    async def follow() -> None:
        status = "pending"
        while status == "pending" and clock.now() < bearer.exp:
            try:
                status = str((await app[CHALLENGES].status(application, cid, WAIT_S)).get("status"))
            except _STORE_DOWN:  # Redis unreachable: the decision is there when it is back
                await asyncio.sleep(STORE_RETRY_S)
        result = keycloak.CALLBACK_STATUS.get(status, "CANCELLED")
        await keycloak.callback(bearer, result)

    task = asyncio.get_running_loop().create_task(follow())
    app[CALLBACKS].add(task)
    task.add_done_callback(app[CALLBACKS].discard)
