"""Rate limits per client address and per application: the outer fence against floods (issue 8). The
per-user limits (push bombing, access-code attempts) are detection rules, pushauth/detection/rules.py; these
stop a flood from one address, or for one application, before it costs more than one Redis round trip.

    scope          one bucket counts                       default             keyed so because
    application    calls made with one application's API   12,000 per 60 s     an identity provider sends a
                   keys, from whatever address             (or the app's own   whole organisation's sign-ins
                                                           `rate_limit`)       from a few addresses
    ip             every other call from one client        12,000 per 60 s     a hospital's phones share one
                   address (IPv6: its /64)                                     public address on guest Wi-Fi
    auth_failures  failed authentications from one client  50 per 300 s, then  credential stuffing and bad
                   address (pushauth/web/limits.py says    refused for the     signature floods, stopped
                   which 401s count)                       rest of the window  before each costs a verify
    radius_client  Access-Requests from one RADIUS client  6,000 per 60 s (the one gateway carries a whole
                   (pushauth/radius/)                      client's own        site's sign-ins
                                                           `rate_limit`)

Requests are metered by GCRA (the generic cell rate algorithm, as in redis-cell): a bucket keeps one
number, the theoretical arrival time of its next request. A burst of a whole window's quota passes, then
requests pass at quota/window; unlike fixed windows there is no boundary at which twice the quota gets
through, and unlike a log of timestamps the state is one number. Refused requests are not counted, so a
flood that stops is let through again within one window. Auth failures are counted in a window opened by
the first one; at the limit the address is refused until that window closes.

Time is pushauth's clock (`clock.now()`), passed to the scripts like every other script's, so that tests
move it instead of sleeping (servers run NTP, as any token issuer must). A bucket is one hash key
(`KeySpace.rate_bucket`), so both scripts touch a single key and run in any Cluster slot, and it expires as
soon as nothing in it matters (at most a window). If Redis does not answer, the script call raises and the
request fails closed with the 503 every call gives: never let through unchecked. The counts are not
waited on by replicas (`store.replica_acks`): a failover that loses some lets a little more through for
one window, where a WAIT on every request would double the cost of every request.
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis
import structlog

from pushauth import clock, metrics
from pushauth.config import Settings
from pushauth.errors import RateLimited
from pushauth.netaddr import network_of, parse_ip
from pushauth.ratelimit import scripts as lua
from pushauth.store import KeySpace

log = structlog.get_logger(__name__)

APPLICATION: Final = "application"
IP: Final = "ip"
AUTH_FAILURES: Final = "auth_failures"
RADIUS_CLIENT: Final = "radius_client"

_MESSAGES: Final = {
    APPLICATION: "too many requests for this application",
    RADIUS_CLIENT: "too many Access-Requests from this RADIUS client",
    IP: "too many requests from this address",
    AUTH_FAILURES: "too many failed authentications from this address",
}


def address_bucket(ip: str | None) -> str:
    """What one client address is counted as: an IPv4 address, or the /64 of an IPv6 one: a single host is
    routinely given a whole /64, and counting its addresses one by one would let it rotate through them
    freely."""
    addr = parse_ip(ip)
    if addr is None:
        return "unknown"  # no TCP peer (a Unix socket): every such client shares one bucket
    # str() rather than a /32 network for IPv4: this runs on every request, and parsing a network is not free
    return str(addr) if addr.version == 4 else network_of(addr, v4=32, v6=64)


class RateLimiter:
    """The three limits. Each check is one script call (one round trip), or none when its limit is off;
    a refusal raises `RateLimited` (429 with `Retry-After`), is counted and logged."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings) -> None:
        self._redis = redis
        self._ks = keyspace
        self._limits = settings.rate_limits
        default = self._limits.application_requests
        self._quotas = {app.id: default if app.rate_limit is None else app.rate_limit
                        for app in settings.applications}

    async def application(self, app_id: str) -> None:
        quota = self._quotas.get(app_id, self._limits.application_requests)
        if quota:
            await self._check(self._ks.rate_bucket("a", app_id), quota, 0, APPLICATION, app=app_id)

    async def radius_client(self, name: str, quota: int) -> None:
        """Access-Requests from one RADIUS client (a VPN, a gateway, a server's PAM): its own `rate_limit`,
        counted per client rather than per address, since one gateway sends a whole site's sign-ins."""
        if quota:
            await self._check(self._ks.rate_bucket("r", name), quota, 0, RADIUS_CLIENT, radius_client=name)

    async def address(self, ip: str | None) -> None:
        if self._limits.ip_requests or self._limits.auth_failures:
            await self._check(self._ks.rate_bucket("ip", address_bucket(ip)), self._limits.ip_requests,
                              self._limits.auth_failures, IP, ip=ip)

    async def unless_blocked(self, ip: str | None) -> None:
        """Refuse an address in its auth-failure block, counting nothing against its quota: for a call that is
        never metered but takes a credential (/metrics with a token)."""
        if self._limits.auth_failures:
            await self._check(self._ks.rate_bucket("ip", address_bucket(ip)), 0, self._limits.auth_failures,
                              IP, ip=ip)

    async def auth_failed(self, ip: str | None) -> None:
        """Count a failed authentication from `ip`; the one that reaches the limit starts the block."""
        s = self._limits
        if not s.auth_failures:
            return
        failures = await lua.rate_auth_failure(self._redis, self._ks.rate_bucket("ip", address_bucket(ip)),
                                               now=clock.now(), window_s=s.auth_failures_window_s)
        if failures == s.auth_failures:
            log.warning("auth_failures_blocked", ip=ip, failures=failures,
                        window_s=s.auth_failures_window_s)

    async def _check(self, key: str, quota: int, auth_failures: int, scope: str, **who: str | None) -> None:
        checked = await lua.rate_limit(self._redis, key, now=clock.now(), quota=quota,
                                       window_s=self._limits.window_s, auth_failures=auth_failures)
        if checked.result is lua.Limit.OK:
            return
        refused = AUTH_FAILURES if checked.result is lua.Limit.AUTH_FAILURES else scope
        retry_after = max(1, checked.retry_after_s)
        metrics.RATE_LIMITED.labels(refused).inc()
        log.warning("rate_limited", scope=refused, retry_after_s=retry_after, **who)
        raise RateLimited(f"{_MESSAGES[refused]}; retry after {retry_after} s", retry_after_s=retry_after)
