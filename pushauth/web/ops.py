"""For operations: liveness, readiness and metrics.

    GET /healthz   200 while the process runs (a liveness probe restarts a wedged process, nothing more)
    GET /readyz    200 when this instance can serve sign-ins: Redis answers and the signing keys are loaded;
                   otherwise 503, so a load balancer sends logins elsewhere. The body also says which
                   workers have a fresh heartbeat; missing workers make it "degraded", not 503: sign-ins
                   still work (phones poll; alerts wait in their stream), and taking every server out of
                   the balancer because an alert worker died would turn a delay into an outage.
                   `pushauth check` exits non-zero for both.
    GET /metrics   Prometheus text format (pushauth/metrics.py), for `metrics.allow_from` (this host by
                   default) or, when `metrics.token_sha256` is set, for a bearer token from anywhere
                   (`MetricsAccess`). Its counts tell an attacker which attacks are working.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import shlex
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushauth import metrics
from pushauth.config import Settings
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import Forbidden, Unauthorized
from pushauth.netaddr import parse_ip
from pushauth.store import KeySpace, gauges, heartbeats
from pushauth.store.connection import STORE_DOWN_ERRORS
from pushauth.web.auth import bearer_token
from pushauth.web.io import client_ip
from pushauth.web.state import KEYRING, LIMITER, REDIS, SETTINGS

routes = web.RouteTableDef()

_DOWN: tuple[type[BaseException], ...] = (TimeoutError, *STORE_DOWN_ERRORS)

# Never rate limited (pushauth/web/limits.py): a load balancer polling them from one address must never be
# refused, or a 429 on /readyz would take a healthy server out of the balancer.
UNLIMITED = frozenset({"/healthz", "/readyz"})
# Never counted against a request quota (Prometheus polls from one address), but a bad credential counts
# as a failed authentication, and an address blocked for those is refused (MetricsAccess).
UNMETERED = frozenset({"/metrics"})


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


# What a deployment lacks while no worker of a kind runs (sign-ins work regardless).
_WITHOUT = {
    "push": "no push reaches a phone (phones find prompts only by polling)",
    "alerts": "no alert reaches the security team's sinks",
    "expiry": "prompts that expire unanswered are counted only at the user's next sign-in",
}


def worker_command(kind: str, config: Path | None) -> str:
    """The command that starts a worker of `kind` on the settings a server was started with."""
    return f"python -m workers.{kind}" + (f" -c {shlex.quote(str(config))}" if config else "")


async def missing_workers(redis: Any, settings: Settings) -> list[str]:
    """The worker kinds this deployment needs that have no fresh heartbeat."""
    alive = await heartbeats.live_workers(redis, KeySpace(settings.store.prefix))
    return [kind for kind in expected_workers(settings) if not alive.get(kind)]


def missing_workers_hint(missing: list[str], config: Path | None) -> dict[str, Any]:
    """Fields of the log line that says which workers are missing, what that costs, how to start each."""
    return {"missing": missing, "start": [worker_command(kind, config) for kind in missing],
            "meanwhile": "; ".join(_WITHOUT[kind] for kind in missing)}


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
            alive = await heartbeats.live_workers(redis, KeySpace(settings.store.prefix))
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
