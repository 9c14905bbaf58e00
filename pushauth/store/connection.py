"""Opening the Redis client: a real server, or the embedded in-process store."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.maint_notifications import MaintNotificationsConfig

from pushauth.config import StoreSettings

log = structlog.get_logger(__name__)

# Errors that mean "Redis is not there right now" (stopped, restarting, failing over, loading its AOF).
# Every one of them fails closed: the caller gets a 503 and nothing is approved.
STORE_DOWN_ERRORS: tuple[type[Exception], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.BusyLoadingError,
    rex.ReadOnlyError,
    rex.TryAgainError,
    rex.ClusterDownError,
    ConnectionError,
    TimeoutError,
    OSError,
)

EMBEDDED_WARNING = (
    "EMBEDDED STORE: no [store] redis_url is set, so all state (enrolled phones, challenges) lives in this "
    "process and is LOST ON RESTART. Fine for trying pushauth on one machine; set store.redis_url for "
    "anything real."
)


def describe(settings: StoreSettings) -> str:
    """Which store `settings` name, for a log line: the mode and the URL, never a password."""
    if not settings.redis_url:
        return "embedded (in this process; lost on restart)"
    url = without_password(settings.redis_url)
    if settings.cluster:
        return f"redis cluster via {url}"
    if settings.sentinels:
        return (f"redis sentinel service {settings.sentinel_service} via {', '.join(settings.sentinels)}"
                f" ({url})")
    return url


def without_password(url: str) -> str:
    """`url` with its password (in the user part, or a `password=` query parameter) shown as ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(name, "***" if name.lower() == "password" else value)
                       for name, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    # Put together by hand: urlunsplit drops the "//" of unix:///path (an empty host).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def open_redis(settings: StoreSettings, *, health_check_interval_s: int = 30) -> aioredis.Redis:
    """`health_check_interval_s`: a pooled connection idle for longer is PINGed before its next command
    (0: never). It is not what recovers from a Redis restart: the pool already replaces a connection whose
    socket was closed when it hands it out (`ensure_connection`, which is why maintenance notifications are
    off below), and a silently dead one fails its command within socket_timeout_s. The server keeps 30;
    the push worker, which sends few commands per push and retries its writes, uses 0."""
    if not settings.redis_url:
        import fakeredis  # imported lazily: production installs never need it at run time

        log.warning("embedded_store", message=EMBEDDED_WARNING)
        return fakeredis.FakeAsyncRedis(decode_responses=True)
    if settings.cluster:
        return _open_cluster(settings)
    if settings.sentinels:
        return _open_sentinel(settings, health_check_interval_s)
    # No retries inside the client: a request that finds Redis down should fail fast and closed, and the
    # next request simply opens a new connection (that is the "recovers by itself").
    #
    # A blocking pool: when all max_connections are busy, a command waits (up to the socket timeout) for
    # one to come free. redis-py's default pool raises "Too many connections" at once instead, which
    # under a burst (a push worker's backlog, hundreds of concurrent logins) turned plain load into
    # errors, 503s, and re-sent pushes.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        health_check_interval=health_check_interval_s,
        decode_responses=True,
        retry=None,
        # With maintenance notifications on ("auto"), redis-py skips its check that a pooled connection is
        # still alive, so after a Redis restart every pooled connection fails once before being replaced:
        # spurious 503s after recovery. We do not use the notifications (a Redis Enterprise feature).
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    # from_pool: the client owns the pool, so closing the client closes its connections (with
    # Redis(connection_pool=...) aclose() leaves them open, one per process that ever ran a command).
    return aioredis.Redis.from_pool(pool)


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (it asks the sentinels where the primary is, and drops connections to a demoted
    one) that waits for a free connection as the single-Redis pool does (see open_redis)."""


def _open_sentinel(settings: StoreSettings, health_check_interval_s: int) -> aioredis.Redis:
    """The primary that the sentinels name, followed through a failover: a new connection asks them again,
    and one that finds its server demoted (READONLY) is dropped. While no primary is known, commands fail
    like any outage (fail closed, 503)."""
    data: dict[str, Any] = dict(parse_url(settings.redis_url))
    data.pop("host", None)
    data.pop("port", None)
    if data.pop("connection_class", None) is not None:  # rediss://
        data["ssl"] = True
    sentinels = [(host, int(port)) for host, _, port in (s.rpartition(":") for s in settings.sentinels)]
    timeouts: dict[str, Any] = {"socket_timeout": settings.socket_timeout_s,
                                "socket_connect_timeout": settings.connect_timeout_s}
    manager = Sentinel(sentinels, sentinel_kwargs=timeouts)
    return cast(aioredis.Redis, manager.master_for(
        settings.sentinel_service, connection_pool_class=_BlockingSentinelPool,
        max_connections=settings.max_connections, timeout=settings.socket_timeout_s,
        health_check_interval=health_check_interval_s, decode_responses=True, retry=None,
        maint_notifications_config=MaintNotificationsConfig(enabled=False), **timeouts, **data))


def _open_cluster(settings: StoreSettings) -> aioredis.Redis:
    """A Redis Cluster client. It follows MOVED/ASK redirects (inside each command, whatever the retry
    setting) and refreshes the slot map when a node fails (a replica promoted); a command that finds no
    live master for its slot fails like any outage (fail closed, 503) until the cluster has failed over."""
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = RedisCluster.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        decode_responses=True,
        # No retries of a command whose connection broke, as on a single Redis. The command may already
        # have run on the dying master: a re-run script found its own effects (a device request's jti
        # already recorded) and answered "replayed" to a genuine phone. The client gets a 503 instead,
        # signs a new request, and the slot map is refreshed before the next command.
        retry=Retry(NoBackoff(), 0),
    )
    # The cluster client speaks the same commands; the rest of pushauth types it as a plain client.
    return cast(aioredis.Redis, client)
