"""For operations: liveness, readiness and metrics.

    GET /healthz   200 while the process runs (a liveness probe restarts a wedged process, nothing more)
    GET /readyz    200 when this instance can serve sign-ins: Redis answers and the signing keys are loaded;
                   otherwise 503, so a load balancer sends logins elsewhere. The body also says which
                   workers have a fresh heartbeat; missing workers make it "degraded", not 503: sign-ins
                   still work (phones poll; alerts wait in their stream), and taking every server out of
                   the balancer because an alert worker died would turn a delay into an outage.
                   `pushauth check` exits non-zero for both.
    GET /metrics   Prometheus text format (pushauth/metrics.py); open, or behind a bearer token when
                   `metrics.token_sha256` is set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushauth import metrics
from pushauth.config import Settings
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import Unauthorized
from pushauth.store import KeySpace
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.web.auth import bearer_token
from pushauth.web.state import KEYRING, REDIS, SETTINGS

routes = web.RouteTableDef()

_DOWN: tuple[type[BaseException], ...] = (TimeoutError, *STORE_DOWN_ERRORS)

# Never rate limited (pushauth/web/limits.py): a load balancer or Prometheus polling them from one address
# must never be refused, or a 429 on /readyz would take a healthy server out of the balancer.
UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


def expected_workers(settings: Settings) -> list[str]:
    """The worker kinds this deployment needs running as separate processes."""
    if settings.embedded:
        return []  # the server runs them itself
    kinds = ["expiry"]
    if settings.push.enabled:
        kinds.append("push")
    if settings.alerts.sinks:
        kinds.append("alerts")
    return kinds


async def readiness(redis: Any, settings: Settings, keys_loaded: bool) -> tuple[int, dict[str, Any]]:
    checks: dict[str, Any] = {"keys": "ok" if keys_loaded else "not loaded"}
    try:
        await asyncio.wait_for(redis.ping(), timeout=settings.store.socket_timeout_s)
        checks["redis"] = "ok"
    except _DOWN as exc:
        checks["redis"] = f"unreachable ({type(exc).__name__})"
        metrics.REDIS_ERRORS.labels("readyz").inc()
    workers: dict[str, Any] = {}
    if checks["redis"] == "ok":
        try:
            alive = await metrics.live_workers(redis, KeySpace(settings.store.prefix))
            workers = {kind: alive.get(kind, []) for kind in expected_workers(settings)}
        except STORE_DOWN_ERRORS:
            checks["redis"] = "unreachable"
    ready = checks["redis"] == "ok" and checks["keys"] == "ok"
    missing = sorted(kind for kind, names in workers.items() if not names)
    status = "ready" if ready and not missing else "degraded" if ready else "not ready"
    body = {"status": status, "checks": checks, "workers": workers}
    if missing:
        body["missing_workers"] = missing
    return (200 if ready else 503), body


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


@routes.get("/metrics")
async def metrics_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    allowed = settings.metrics.token_sha256
    if allowed:
        token = bearer_token(request)
        if token is None or sha256_hex(token) not in allowed:
            raise Unauthorized("metrics need Authorization: Bearer <metrics token>")
    await metrics.refresh_store_gauges(_redis(request), KeySpace(settings.store.prefix))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
