"""Opening the Redis client: a real server, or the embedded in-process store.

Three kinds of real store, three pools:

    single Redis   `LeanPool` (issue 22): no PING before a command, no per-command socket timeout (a
                   watchdog task per pool bounds every reply instead), a free connection taken without
                   a lock. The hot path of every sign-in.
    Sentinel       redis-py's own pool (`_BlockingSentinelPool`: SentinelConnectionPool waiting like
    Cluster        BlockingConnectionPool) and the cluster client's own per-node pools, as they were: a
                   PING health check on connections idle for `health_check_interval_s` (Sentinel), and
                   `socket_timeout_s` as redis-py's per-command socket timeout (both), with the
                   asyncio.timeout around each read and write that it costs. Deliberately left alone:
                   these pools also follow failovers (the sentinels' answer, MOVED/ASK and the slot map),
                   which the lean pool does not know how to do, and the watchdog has not been tested
                   against either. bench/README.md (issue 22) says what that costs.

Only a single Redis or Sentinel lets one script touch keys of several hash tags (one node holds them all):
`is_cluster` tells the callers that must then split a write (`pushauth.push.dispatch.PushQueue`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
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
    """`health_check_interval_s`: the pub/sub connection (decisions for waiting login flows) PINGs when it
    has been idle for longer (0: never). Commands never PING first (`LeanPool`): a connection Redis closed
    is replaced when the pool hands it out (`ensure_connection`, which is why maintenance notifications are
    off below), and a silently dead one fails its command within socket_timeout_s (x 1.25, the watchdog's
    tick). The server keeps 30; the push worker uses 0."""
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
    pool = LeanPool.from_url(
        settings.redis_url,
        max_connections=settings.max_connections,
        wait_timeout_s=settings.socket_timeout_s,
        read_timeout_s=settings.socket_timeout_s,
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


def is_cluster(redis: aioredis.Redis) -> bool:
    """Whether `redis` is a Redis Cluster client (`store.cluster`), on which every command and script must
    keep to one slot."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(redis, RedisCluster)


class _Watched:
    """Mixed into the pool's connection class (plain TCP, TLS or a Unix socket, whichever the URL names):
    a reply awaited without a timeout of its own is stamped with its start, so that `LeanPool`'s watchdog
    can break a connection whose reply is overdue; no PING before a command (see LeanPool)."""

    awaiting_since: float = 0.0  # time.monotonic() when the awaited reply was asked for; 0.0: none
    stalled: bool = False

    async def check_health(self) -> None:
        """No PING before a command: a connection Redis closed is replaced when the pool hands it out
        (`ensure_connection`), and a silent one is broken by the watchdog. (Pub/sub still PINGs: it checks
        `health_check_interval` itself.)"""

    async def read_response(self, disable_decoding: bool = False,
                            timeout: float | None = None,  # noqa: ASYNC109 (redis-py's signature)
                            *, disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
        base = cast(Any, super())
        if timeout is not None:  # pub/sub: a bound of its own (or math.inf, blocking on purpose)
            return await base.read_response(disable_decoding, timeout, push_request=push_request,
                                            disconnect_on_error=disconnect_on_error)
        self.awaiting_since = time.monotonic()
        try:
            return await base.read_response(disable_decoding, None, disconnect_on_error=disconnect_on_error,
                                            push_request=push_request)
        except rex.ConnectionError:
            if self.stalled:  # broken by the watchdog: say what happened
                raise rex.TimeoutError("Timeout reading from Redis") from None
            raise
        finally:
            self.awaiting_since = 0.0
            self.stalled = False

    def stall(self) -> None:
        """The watchdog's verdict: abort the socket, so the awaited read fails (as a timeout) at once."""
        self.stalled = True
        writer = cast(Any, self)._writer
        if writer is not None:
            writer.transport.abort()


class LeanPool(aioredis.ConnectionPool):
    """The server's and the workers' command pool: what redis-py's BlockingConnectionPool guarantees, without
    its cost on every command.

    * A command finding every connection busy waits (up to `wait_timeout_s`) for one to come free instead
      of failing with "Too many connections" (redis-py's default pool), which under a burst (a push
      worker's backlog, hundreds of concurrent logins) turned plain load into errors, 503s and re-sent
      pushes. BlockingConnectionPool does that with an asyncio.Condition, a lock and an asyncio.timeout
      around every checkout; here a free connection is taken synchronously, and only a caller that finds
      none queues (with its timeout).
    * The bound on a reply (`read_timeout_s`: a Redis that stopped answering, SIGSTOPped or a frozen host,
      must fail the request closed within it) is kept by one watchdog task per pool that, every quarter of
      the bound, aborts the socket of any connection whose awaited reply is older than the bound (the
      command then raises TimeoutError: 503). redis-py's own socket_timeout costs an asyncio.wait_for
      (a new Task) around every write and an asyncio.timeout around every read; with it unset, a command
      pays two time.monotonic() calls. The bound becomes 1.25 x read_timeout_s at worst.
    * No PING health check before commands (`_Watched.check_health`).
    """

    def __init__(self, *, wait_timeout_s: float, read_timeout_s: float, **kwargs: Any) -> None:
        # None, not left out: redis-py's default is 5 s. The watchdog is the read bound (class docstring).
        kwargs["socket_timeout"] = None
        super().__init__(**kwargs)
        base = self.connection_class
        self.connection_class = type(f"Watched{base.__name__}", (_Watched, base), {})
        self._wait_timeout_s = wait_timeout_s
        self._read_timeout_s = read_timeout_s
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._watchdog: asyncio.Task[None] | None = None

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="redis-watchdog")
        if not self.can_get_connection():
            await self._wait_for_free()
        connection = cast(Any, self).get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _wait_for_free(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._wait_timeout_s):
                while not self.can_get_connection():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():
                            waiter.cancel()
        except TimeoutError as exc:
            raise rex.ConnectionError("No connection available.") from exc

    async def release(self, connection: Any) -> None:
        self._in_use_connections.discard(connection)
        try:
            if connection.should_reconnect():
                await connection.disconnect()
        finally:
            self._available_connections.append(connection)
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    async def _watch(self) -> None:
        tick = self._read_timeout_s / 4
        while True:
            await asyncio.sleep(tick)
            overdue = time.monotonic() - self._read_timeout_s
            for connection in list(self._in_use_connections):
                since = getattr(connection, "awaiting_since", 0.0)
                if 0.0 < since < overdue:
                    log.warning("redis_reply_overdue", waited_s=round(time.monotonic() - since, 2))
                    cast(_Watched, connection).stall()

    async def disconnect(self, inuse_connections: bool = True) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await super().disconnect(inuse_connections)


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
