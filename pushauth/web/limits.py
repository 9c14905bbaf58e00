"""The rate limits (pushauth/ratelimit/limiter.py) as a middleware: which limit a request is under,
checked before
its handler runs, and which 401s count as failed authentications.

It sits inside the error boundary, so a 429 and a Redis outage (503, fail closed) are rendered like every
other error, and in front of every handler, so a refused request has read no body, verified no signature
and changed nothing. A request is counted against one bucket:

    /healthz, /readyz               none: a load balancer's health checks must never take a server out
    /metrics                        none, but a wrong metrics token is a failed authentication, and the
                                    handler refuses an address blocked for those (ops.MetricsAccess)
    Bearer <a valid API key>        its application's, never its address's: an identity provider sends a
                                    whole organisation's sign-ins from a few addresses
    anything else                   its client address's, which also holds the address's auth failures

Telling an API key from anything else here costs a SHA-256 and a dict lookup, no Redis, and the check
spends requests leased from the bucket in batches (`RateLimiter.application_batched`, `address_batched`;
the limiter's docstring says what that costs in accuracy), so a request costs one round trip at most for
the check, and on a busy bucket almost never one. A failed authentication costs one, after the fact.

A refusal is the REST contract's JSON 429 (the error boundary's), except on the routes a person's browser
opens: a module that owns such pages registers them in `BROWSER_PAGES` with the page that tells a person
what to do (the OpenID Provider's sign-in pages, pushauth/web/oidc.py), given the same refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pushauth.errors import RateLimited, Unauthorized
from pushauth.web.io import client_ip
from pushauth.web.ops import UNLIMITED, UNMETERED
from pushauth.web.state import CREDENTIALS, LIMITER

# 401s that are no guess at a credential: the phone's signature verified, so its sender holds the phone's
# key (a wrong clock, a retried request, a phone revoked since, a proxy that rewrites paths). Counting
# them would let a few such phones behind one NAT address block every phone of a hospital.
_NOT_A_GUESS: Final = frozenset({"stale_request", "replayed", "device_revoked", "bad_request_signature"})

# route (canonical) -> the page answering a refused browser on it, with the refusal's status and Retry-After.
# A browser shows JSON as raw text; a relying party's or a phone's endpoint stays JSON by not being here.
BlockedPage = Callable[[web.Request, RateLimited], web.Response]
BROWSER_PAGES = web.AppKey("rate_limited_pages", dict[str, BlockedPage])


def _failed_authentication(request: web.Request, code: str | None) -> bool:
    # Without an Authorization header nothing was guessed: a browser's event stream reconnecting after its
    # console session ended, say. The request limit covers those.
    return "Authorization" in request.headers and code not in _NOT_A_GUESS


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in UNLIMITED:
        return await handler(request)
    limiter = request.app[LIMITER]
    if route not in UNMETERED:
        application = request.app[CREDENTIALS].application_of(request)
        try:
            if application is not None:
                await limiter.application_batched(application.id)
            else:
                await limiter.address_batched(client_ip(request))
        except RateLimited as exc:
            page = request.app.get(BROWSER_PAGES, {}).get(route or "")
            if page is None:
                raise
            structlog.contextvars.bind_contextvars(error=exc.code)  # as the error boundary would
            return page(request, exc)
    try:
        response = await handler(request)
    except Unauthorized as exc:
        if _failed_authentication(request, exc.code):
            await limiter.auth_failed(client_ip(request))
        raise
    # The console's sign-in answers a bad admin token with a page of its own, not an exception.
    if response.status == 401 and _failed_authentication(request, None):
        await limiter.auth_failed(client_ip(request))
    return response
