"""For operations: liveness, readiness and metrics.

    GET /healthz   200 while the process runs (a liveness probe restarts a wedged process, nothing more)
    GET /readyz    200 when this instance can serve sign-ins (Redis answers, the signing keys are loaded),
                   otherwise 503, so a load balancer sends logins elsewhere; the body says which workers
                   have a fresh heartbeat ("degraded" when one is missing). The rules are
                   pushauth/readiness.py's, shared with `pushauth check`; this module only serves them.
    GET /metrics   Prometheus text format (pushauth/metrics.py), for `metrics.allow_from` (this host by
                   default) or, when `metrics.token_sha256` is set, for a bearer token from anywhere
                   (`MetricsAccess`). Its counts tell an attacker which attacks are working.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushauth.config import Settings
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import Forbidden, Unauthorized
from pushauth.netaddr import parse_ip
from pushauth.readiness import readiness
from pushauth.store import KeySpace, gauges
from pushauth.web.auth import bearer_token
from pushauth.web.io import client_ip
from pushauth.web.state import KEYRING, LIMITER, REDIS, SETTINGS

routes = web.RouteTableDef()

# Never rate limited (pushauth/web/limits.py): a load balancer polling them from one address must never be
# refused, or a 429 on /readyz would take a healthy server out of the balancer.
UNLIMITED = frozenset({"/healthz", "/readyz"})
# Never counted against a request quota (Prometheus polls from one address), but a bad credential counts
# as a failed authentication, and an address blocked for those is refused (MetricsAccess).
UNMETERED = frozenset({"/metrics"})


def _redis(request: web.Request) -> Any:
    return request.app[REDIS]


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    keys_loaded = request.app[KEYRING].ring.current is not None
    status, body = await readiness(_redis(request), settings, keys_loaded)
    return web.json_response(body, status=status)


class MetricsAccess:
    """Who may scrape /metrics, and the cache that keeps a flood of scrapes off Redis.

    With `metrics.token_sha256` set, a scrape needs one of those tokens (`Authorization: Bearer`), from
    any address; an address in its auth-failure block is refused before the token is looked at, and a
    wrong token counts toward the block (pushauth/web/limits.py). Without tokens, only TCP peers in
    `metrics.allow_from` may scrape (403 for others; nothing read, nothing counted): the connection's
    peer, never X-Forwarded-For, which the client writes. The queue and worker gauges are read from Redis
    at most once per `metrics.store_gauges_max_age_s`, by one scrape while the others wait for it.
    """

    def __init__(self, settings: Settings) -> None:
        self._tokens = frozenset(settings.metrics.token_sha256)
        self._allowed = tuple(ipaddress.ip_network(n) for n in settings.metrics.allow_from)
        self._max_age_s = settings.metrics.store_gauges_max_age_s
        self._keyspace = KeySpace(settings.store.prefix)
        self._read_at = -math.inf
        self._reading = asyncio.Lock()

    async def check(self, request: web.Request) -> None:
        if not self._tokens:
            peer = parse_ip(request.remote)
            if peer is None or not any(peer in network for network in self._allowed):
                raise Forbidden("metrics are served to the networks in metrics.allow_from, or with a "
                                "metrics token")
            return
        if "Authorization" in request.headers:
            await request.app[LIMITER].unless_blocked(client_ip(request))
        token = bearer_token(request)
        if token is None or sha256_hex(token) not in self._tokens:
            raise Unauthorized("metrics need Authorization: Bearer <metrics token>",
                               headers={"WWW-Authenticate": 'Bearer realm="pushauth"'})

    async def refresh_store_gauges(self, redis: Any) -> None:
        if time.monotonic() - self._read_at < self._max_age_s:
            return
        async with self._reading:
            if time.monotonic() - self._read_at < self._max_age_s:
                return  # read by the scrape this one waited for
            await gauges.refresh_store_gauges(redis, self._keyspace)
            self._read_at = time.monotonic()


METRICS_ACCESS = web.AppKey("metrics_access", MetricsAccess)


def setup(app: web.Application, settings: Settings) -> None:
    app[METRICS_ACCESS] = MetricsAccess(settings)
    app.add_routes(routes)


@routes.get("/metrics")
async def metrics_page(request: web.Request) -> web.Response:
    access = request.app[METRICS_ACCESS]
    await access.check(request)
    await access.refresh_store_gauges(_redis(request))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
