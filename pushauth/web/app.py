"""The app factory. The services come from the composition root (pushauth/runtime/root.py); what is here is
their lifetime, one cleanup context per resource, unwound in reverse on shutdown:

    runtime_ctx   the Redis client (or the embedded store) and the Runtime on it
    keyring_ctx   the server signing keys, and the task that reloads them after a rotation
    events_ctx    the pub/sub listener that wakes waiting login flows
    services_ctx  the domain services (devices, challenges, accounts, the rate limiter), under typed keys
    workers_ctx   embedded store only: the push, expiry and alert workers run inside the server
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from pushauth.challenges.events import ChallengeEvents
from pushauth.config import Settings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.netaddr import TrustedProxies
from pushauth.runtime import open_runtime
from pushauth.web import (
    admin,
    codes,
    console,
    demo_page,
    device,
    keycloak,
    login_flow,
    oidc,
    oidc_codes,
    openapi,
    ops,
    wellknown,
)
from pushauth.web.auth import Credentials
from pushauth.web.limits import rate_limit
from pushauth.web.middleware import error_boundary, request_context
from pushauth.web.state import (
    ACCOUNTS,
    ALERTS,
    AUDIT,
    CHALLENGES,
    CODES,
    CREDENTIALS,
    DEAD_LETTERS,
    DEVICES,
    EVENTS,
    KEYRING,
    LIMITER,
    PROXIES,
    REDIS,
    RUNTIME,
    SETTINGS,
)

__all__ = ["EVENTS", "create_app"]


async def _close_events(events: ChallengeEvents) -> None:
    events.close()


def create_app(settings: Settings, *, keyring: KeyRingHolder | None = None,
               redis: aioredis.Redis | None = None) -> web.Application:
    """Build the server. `keyring` and `redis` may be injected (a test's); otherwise they come from
    `settings`. The keys are loaded here, so a bad keys folder fails before anything is served."""
    app = web.Application(middlewares=[request_context, error_boundary, rate_limit],
                          client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[CREDENTIALS] = Credentials(settings)
    app[PROXIES] = TrustedProxies(settings.server.trusted_proxies)
    app[KEYRING] = keyring or KeyRingHolder.from_settings(settings.keys)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, redis=redis, keyring=app[KEYRING]) as runtime:
            app[RUNTIME] = runtime
            app[REDIS] = runtime.redis
            yield

    async def keyring_ctx(app: web.Application) -> AsyncIterator[None]:
        async with app[KEYRING].watching(settings.keys.reload_interval_s):
            yield

    async def events_ctx(app: web.Application) -> AsyncIterator[None]:
        # Taking traffic waits for the subscription (Runtime.listening). Redis down at start: start anyway,
        # fail closed per request, and subscribe when Redis is back.
        async with app[RUNTIME].listening() as events:
            app[EVENTS] = events
            # On shutdown, long-polls answer at once instead of holding the shutdown for up to 30 s.
            app.on_shutdown.append(lambda _app: _close_events(events))
            yield

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[RUNTIME].services
        app[ALERTS] = services.alerts
        app[AUDIT] = services.audit
        app[DEVICES] = services.devices
        app[CHALLENGES] = services.challenges
        app[ACCOUNTS] = services.accounts
        app[DEAD_LETTERS] = services.dead_letters
        app[LIMITER] = services.limiter
        app[CODES] = services.codes
        yield
        await services.challenges.close()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        # With a real Redis the workers are separate processes (workers/); the embedded store lives in
        # this process, so there they must too.
        async with app[RUNTIME].embedded_workers():
            yield

    app.cleanup_ctx.extend([runtime_ctx, keyring_ctx, events_ctx, services_ctx, workers_ctx])
    app.add_routes(wellknown.routes)
    app.add_routes(login_flow.routes)
    app.add_routes(device.routes)
    app.add_routes(admin.routes)
    app.add_routes(codes.routes)  # offline one-time codes: the login flow's check, the admin's methods
    ops.setup(app, settings)
    app.add_routes(openapi.routes)
    console.setup(app)  # the security team's console: routes, sessions and the live alert feed
    demo_page.setup(app, settings)  # the sample login page, when [demo] enabled
    oidc.setup(app, settings)  # the OpenID Provider, when [oidc] enabled
    if settings.oidc.enabled:
        app.add_routes(oidc_codes.routes)  # its sign-in page's "use a code" (offline codes)
    keycloak.setup(app, settings)  # Keycloak's CIBA authentication channel, when [oidc.keycloak] enabled
    return app
