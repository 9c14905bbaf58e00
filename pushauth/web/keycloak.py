"""Keycloak's CIBA HTTP authentication channel (`[oidc.keycloak] enabled`; pushauth/oidc/keycloak.py has the
protocol and the Keycloak source it follows):

    POST /keycloak/authentication-channel   Keycloak's request, `Authorization: Bearer <the realm's token>`
                                            -> 201, the phone prompted; then, when the phone has answered
                                            (or the prompt expired or was cancelled), a POST of the result
                                            to the realm's callback with the same bearer (the outbox:
                                            retried, and carried over a restart of this server)

The sign-in is a prompt of the same Challenges service as every other login flow, for the realm's
configured application: policy, locks, suspensions, "not me" and every detection rule apply unchanged. It
has no number to match: Keycloak's answer to its client carries only its auth_req_id, so a number could
never reach the user. The client's `binding_message`, which it shows the user, is shown on the phone
instead (as text, bounded: pushauth/challenges/context.py).

Errors are the contract's `{"error", "message"}`: Keycloak reads only the status (anything but 201 and it
tells its client 503), so the shape is for whoever reads the logs.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from pushauth import clock
from pushauth.accounts.users import canonical
from pushauth.challenges import context as login_context
from pushauth.challenges.service import Allowed
from pushauth.clock import rfc3339
from pushauth.config import Application, Settings
from pushauth.errors import ApiError, ConfigError, Conflict, Forbidden, Unprocessable
from pushauth.oidc.keycloak import Bearer, ChannelRequest, KeycloakChannel
from pushauth.oidc.outbox import Notification
from pushauth.web import io, outbox
from pushauth.web.outbox import OUTBOX
from pushauth.web.state import CHALLENGES, REDIS, RUNTIME, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

CHANNEL = web.AppKey("keycloak_channel", KeycloakChannel)
# The prompt ends this long before the realm's bearer does, so that its "expired" (CANCELLED) still reaches
# Keycloak with a bearer its callback accepts.
CALLBACK_MARGIN_S = 5
MIN_PROMPT_S = 10


def setup(app: web.Application, settings: Settings) -> None:
    """Add the channel when `[oidc.keycloak] enabled`."""
    cfg = settings.oidc.keycloak
    if not cfg.enabled:
        return
    problems = cfg.problems({a.id for a in settings.applications})
    if problems:
        raise ConfigError("invalid setting oidc.keycloak: " + "; ".join(problems))
    app[CHANNEL] = KeycloakChannel(cfg)  # a bad jwks_file fails here, before anything is served
    outbox.setup(app, settings)
    app.add_routes(routes)


@routes.post("/keycloak/authentication-channel")
async def authentication_channel(request: web.Request) -> web.Response:
    # A refused bearer (401) counts as a failed authentication of the caller's address once, in the
    # rate_limit middleware, as on every other route.
    bearer = await request.app[CHANNEL].verify(request.headers.get("Authorization"))
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
    await _follow(request.app, application, bearer, created.id)
    return io.json({"status": "pending", "expires_at": rfc3339(created.expires_at)}, 201)


def _application(request: web.Request, bearer: Bearer) -> Application:
    app_id = bearer.realm.application
    return next(a for a in request.app[SETTINGS].applications if a.id == app_id)


async def _follow(app: web.Application, application: Application, bearer: Bearer, cid: str) -> None:
    """When the prompt is decided, its result goes to the realm's callback with the realm's own bearer,
    through the outbox (pushauth/oidc/outbox.py), which survives a restart of this server."""
    await app[OUTBOX].add(Notification(
        kind="keycloak", application=application.id, challenge_id=cid, url=bearer.realm.callback_url,
        bearer=bearer.token, deadline=bearer.exp, sender=bearer.realm.issuer))
