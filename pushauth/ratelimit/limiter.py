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

The batched path (`application_batched`, `address_batched`; what the HTTP middleware uses, issue 22). A
bucket is global (every instance counts into it), so on Redis Cluster it cannot share a slot with the
user's keys, and the check cannot ride in the script a request makes anyway. Instead each process leases
requests from the bucket in batches (rate_lease.lua, metered exactly as that many single checks) and spends
them locally: a bucket's first request in a while leases 1 (the same round trip as a plain check); each
lease spent within `LEASE_S` doubles the next, up to 1/`LEASE_SHARE` of the quota (at most `LEASE_MAX`). A
busy bucket thus costs one round trip per up to 256 requests. What it costs in accuracy:

    * never more than the quota: every request is charged to the bucket before it is let through;
    * fewer, near the limit: requests a process leased but has not spent (at most quota/200 per bucket per
      process, each kept `LEASE_S`) are charged but unused, so with N processes a flood is refused up to
      (N - 1) x 0.5 % of the quota early; leftovers that expire are lost, not returned;
    * an auth-failure block reaches a process's leased requests only at its next lease (<= LEASE_S, <=
      quota/200 requests) in the other processes; the process that counts the failure drops its lease at
      once. Quotas under 200 never lease more than one request, so they are checked exactly as before.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Final, NoReturn

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

# The batched path: see the module docstring.
LEASE_S: Final = 1.0
LEASE_SHARE: Final = 200
LEASE_MAX: Final = 256
_LEASES_MAX: Final = 10_000  # buckets this process holds leases for; oldest dropped first

_MESSAGES: Final = {
    APPLICATION: "too many requests for this application",
    RADIUS_CLIENT: "too many Access-Requests from this RADIUS client",
    IP: "too many requests from this address",
    AUTH_FAILURES: "too many failed authentications from this address",
}


@functools.lru_cache(maxsize=4096)  # a pure function of the text, asked on every request from an address
def address_bucket(ip: str | None) -> str:
    """What one client address is counted as: an IPv4 address, or the /64 of an IPv6 one: a single host is
    routinely given a whole /64, and counting its addresses one by one would let it rotate through them
    freely."""
    addr = parse_ip(ip)
    if addr is None:
        return "unknown"  # no TCP peer (a Unix socket): every such client shares one bucket
    # str() rather than a /32 network for IPv4: this runs on every request, and parsing a network is not free
    return str(addr) if addr.version == 4 else network_of(addr, v4=32, v6=64)


@dataclass(slots=True)
class _Lease:
    """Requests leased from a bucket and not yet spent, until `until` (time.monotonic())."""

    tokens: int
    until: float
    size: int  # how many the last lease asked for


class RateLimiter:
    """The three limits. Each check is one script call (one round trip), or none when its limit is off;
    a refusal raises `RateLimited` (429 with `Retry-After`), is counted and logged. The `_batched` checks
    spend requests leased in batches (module docstring): no round trip for most requests of a busy bucket.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, settings: Settings) -> None:
        self._redis = redis
        self._ks = keyspace
        self._limits = settings.rate_limits
        default = self._limits.application_requests
        self._quotas = {app.id: default if app.rate_limit is None else app.rate_limit
                        for app in settings.applications}
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, asyncio.Future[lua.Leased | None]] = {}

    async def application(self, app_id: str) -> None:
        quota = self._quotas.get(app_id, self._limits.application_requests)
        if quota:
            await self._check(self._ks.rate_bucket("a", app_id), quota, 0, APPLICATION, app=app_id)

    async def application_batched(self, app_id: str) -> None:
        """`application`, from requests leased in batches (module docstring)."""
        quota = self._quotas.get(app_id, self._limits.application_requests)
        if quota:
            await self._leased(self._ks.rate_bucket("a", app_id), quota, 0, APPLICATION, app=app_id)

    async def address_batched(self, ip: str | None) -> None:
        """`address`, from requests leased in batches (module docstring)."""
        if self._limits.ip_requests or self._limits.auth_failures:
            await self._leased(self._ks.rate_bucket("ip", address_bucket(ip)), self._limits.ip_requests,
                               self._limits.auth_failures, IP, ip=ip)

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
        bucket = self._ks.rate_bucket("ip", address_bucket(ip))
        self._leases.pop(bucket, None)  # the next request from there asks Redis, which knows of the block
        failures = await lua.rate_auth_failure(self._redis, bucket, now=clock.now(),
                                               window_s=s.auth_failures_window_s)
        if failures == s.auth_failures:
            log.warning("auth_failures_blocked", ip=ip, failures=failures,
                        window_s=s.auth_failures_window_s)

    async def _check(self, key: str, quota: int, auth_failures: int, scope: str, **who: str | None) -> None:
        checked = await lua.rate_limit(self._redis, key, now=clock.now(), quota=quota,
                                       window_s=self._limits.window_s, auth_failures=auth_failures)
        if checked.result is not lua.Limit.OK:
            self._refuse(checked.result, checked.retry_after_s, scope, **who)

    async def _leased(self, key: str, quota: int, auth_failures: int, scope: str, **who: str | None) -> None:
        while True:
            lease = self._leases.get(key)
            if lease is not None and lease.tokens > 0 and lease.until > time.monotonic():
                lease.tokens -= 1
                return
            refill = self._refills.get(key)
            if refill is None:
                break
            # One lease in flight per bucket: the requests that find it empty wait for it, then take theirs.
            leased = await refill
            if leased is not None and leased.result is not lua.Limit.OK:
                self._refuse(leased.result, leased.retry_after_s, scope, **who)
        refill = asyncio.get_running_loop().create_future()
        self._refills[key] = refill
        try:
            leased = await self._lease(key, quota, auth_failures)
        except Exception as exc:  # Redis down: every waiter fails closed with the same error
            refill.set_exception(exc)
            refill.exception()  # retrieved (no waiter is not an error)
            raise
        except BaseException:  # cancelled: a waiter takes over the lease
            refill.set_result(None)
            raise
        finally:
            del self._refills[key]
        refill.set_result(leased)
        if leased.result is not lua.Limit.OK:
            self._refuse(leased.result, leased.retry_after_s, scope, **who)

    async def _lease(self, key: str, quota: int, auth_failures: int) -> lua.Leased:
        """Lease requests for `key`: 1 after a quiet spell or a refusal, twice the last lease when that was
        spent within LEASE_S, at most LEASE_MAX or 1/LEASE_SHARE of the quota. Keeps all but one (this
        request's) for the requests that follow."""
        lease = self._leases.get(key)
        size = 1
        if lease is not None and lease.until > time.monotonic():  # the last one was spent in time: busy
            size = min(lease.size * 2, LEASE_MAX, max(1, quota // LEASE_SHARE))
        leased = await lua.rate_lease(self._redis, key, now=clock.now(), quota=quota,
                                      window_s=self._limits.window_s, auth_failures=auth_failures, want=size)
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= _LEASES_MAX:
                self._leases.pop(next(iter(self._leases)))
            lease = self._leases[key] = _Lease(0, 0.0, 1)
        if leased.result is lua.Limit.OK:
            lease.tokens, lease.until, lease.size = leased.granted - 1, time.monotonic() + LEASE_S, size
        else:
            lease.tokens, lease.size = 0, 1
        return leased

    def _refuse(self, result: lua.Limit, retry_after_s: int, scope: str, **who: str | None) -> NoReturn:
        refused = AUTH_FAILURES if result is lua.Limit.AUTH_FAILURES else scope
        retry_after = max(1, retry_after_s)
        metrics.RATE_LIMITED.labels(refused).inc()
        log.warning("rate_limited", scope=refused, retry_after_s=retry_after, **who)
        raise RateLimited(f"{_MESSAGES[refused]}; retry after {retry_after} s", retry_after_s=retry_after)
