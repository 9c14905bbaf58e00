"""The app factory. One cleanup context per resource, unwound in reverse on shutdown:

    redis_ctx     the Redis client (or the embedded store)
    keyring_ctx   the server signing keys, and the task that reloads them after a rotation
    events_ctx    the pub/sub listener that wakes waiting login flows
    services_ctx  the domain services (devices, challenges, the rate limiter), built from the above
    push_ctx      embedded mode only: the push worker runs inside the server (one process, one store)
    embedded_workers_ctx  embedded mode only: the expiry and alert workers, likewise
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from pushauth.accounts.service import Accounts
from pushauth.alerts.delivery import AlertDelivery, DeadLetters, sweep_loop
from pushauth.alerts.sinks import close_sinks, open_sinks
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges import context as login_context
from pushauth.challenges.events import ChallengeEvents
from pushauth.challenges.expiry import ExpirySweeper
from pushauth.challenges.service import ASSERTION_LIFE_S, Challenges
from pushauth.config import Settings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.devices.service import Devices
from pushauth.netaddr import TrustedProxies
from pushauth.push.dispatch import PushDelivery, PushQueue
from pushauth.push.registry import close_providers, open_providers
from pushauth.ratelimit.limiter import RateLimiter
from pushauth.store import KeySpace, open_redis
from pushauth.web import admin, console, demo_page, device, login_flow, openapi, ops, wellknown
from pushauth.web.auth import Credentials
from pushauth.web.limits import rate_limit
from pushauth.web.middleware import error_boundary, request_context
from pushauth.web.state import (
    ACCOUNTS,
    ALERTS,
    AUDIT,
    CHALLENGES,
    CREDENTIALS,
    DEAD_LETTERS,
    DEVICES,
    KEYRING,
    LIMITER,
    PROXIES,
    REDIS,
    SETTINGS,
)

log = structlog.get_logger(__name__)

EVENTS = web.AppKey("events", ChallengeEvents)


async def _close_events(events: ChallengeEvents) -> None:
    events.close()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it, cancelling again every half second: a cancellation a library turns
    into something else (redis-py's pub/sub read, as its timeout fires) must not hold a shutdown forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


def create_app(settings: Settings, *, keyring: KeyRingHolder | None = None,
               redis: aioredis.Redis | None = None) -> web.Application:
    """Build the server. `keyring` and `redis` may be injected (the embedded demo shares one in-process
    store between the server and its workers); otherwise they come from `settings`."""
    app = web.Application(middlewares=[request_context, error_boundary, rate_limit],
                          client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[CREDENTIALS] = Credentials(settings)
    app[PROXIES] = TrustedProxies(settings.server.trusted_proxies)
    app[KEYRING] = keyring or KeyRingHolder.from_settings(settings.keys)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = redis if redis is not None else open_redis(settings.store)
        yield
        if redis is None:
            await app[REDIS].aclose()

    async def keyring_ctx(app: web.Application) -> AsyncIterator[None]:
        async with app[KEYRING].watching(settings.keys.reload_interval_s):
            yield

    async def events_ctx(app: web.Application) -> AsyncIterator[None]:
        events = ChallengeEvents(app[REDIS], KeySpace(settings.store.prefix).events)
        app[EVENTS] = events
        task = asyncio.create_task(events.run(), name="challenge-events")
        # Do not take traffic before the subscription exists, or an early answer could be missed by a
        # waiter (it would still see it at its deadline, but late). Redis down at start: start anyway,
        # fail closed per request, and subscribe when Redis is back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(events.connected.wait(), 5)
        # On shutdown, long-polls answer at once instead of holding the shutdown for up to 30 s.
        app.on_shutdown.append(lambda _app: _close_events(events))
        yield
        events.closing = True
        await _stop(task)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        keyspace = KeySpace(settings.store.prefix)
        push = PushQueue(app[REDIS], settings.store.prefix) if settings.push.enabled else None
        app[ALERTS] = AlertStore(app[REDIS], keyspace, settings, assertion_life_s=ASSERTION_LIFE_S)
        app[AUDIT] = Audit(app[REDIS], keyspace)
        app[DEVICES] = Devices(app[REDIS], keyspace, settings, app[KEYRING], app[ALERTS], app[AUDIT], push)
        login_context.warm_up()
        app[CHALLENGES] = Challenges(app[REDIS], keyspace, settings, app[KEYRING], app[DEVICES], app[EVENTS],
                                     app[ALERTS], app[AUDIT], push)
        app[ACCOUNTS] = Accounts(app[REDIS], keyspace, settings, app[DEVICES], app[ALERTS], app[AUDIT])
        app[DEAD_LETTERS] = DeadLetters(app[REDIS], keyspace, app[ALERTS])
        app[LIMITER] = RateLimiter(app[REDIS], keyspace, settings)
        yield
        await app[CHALLENGES].close()

    async def embedded_workers_ctx(app: web.Application) -> AsyncIterator[None]:
        # With a real Redis, expiry and alert delivery are separate processes (workers/expiry.py,
        # workers/alerts.py); with the embedded store they must run in this process.
        if not settings.embedded:
            yield
            return
        stop = asyncio.Event()
        keyspace = KeySpace(settings.store.prefix)
        tasks = [asyncio.create_task(ExpirySweeper(app[REDIS], keyspace, app[ALERTS]).run(stop),
                                     name="expiry-worker")]
        sinks = open_sinks(settings.alerts.sinks, console_url=settings.alerts.console_url)
        if sinks:
            delivery = AlertDelivery(app[REDIS], keyspace, app[ALERTS], settings.alerts, sinks,
                                     {s.name: s for s in settings.alerts.sinks})
            tasks.append(asyncio.create_task(delivery.consumer_for("embedded").run(stop),
                                             name="alert-worker"))
            tasks.append(asyncio.create_task(sweep_loop(app[ALERTS], settings.alerts.sweep_interval_s, stop),
                                             name="alert-sweep"))
        yield
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_sinks(sinks)

    async def push_ctx(app: web.Application) -> AsyncIterator[None]:
        # With a real Redis the push workers are separate processes (workers/push.py); the embedded store
        # lives in this process, so here the worker must too.
        if not (settings.embedded and settings.push.enabled):
            yield
            return
        providers = open_providers(settings.push)
        delivery = PushDelivery(app[REDIS], KeySpace(settings.store.prefix), settings.push,
                                settings.server.base_url, providers)
        stop = asyncio.Event()
        task = asyncio.create_task(delivery.consumer_for("embedded").run(stop), name="push-worker")
        yield
        stop.set()
        await task
        await close_providers(providers)

    app.cleanup_ctx.extend([redis_ctx, keyring_ctx, events_ctx, services_ctx, push_ctx, embedded_workers_ctx])
    app.add_routes(wellknown.routes)
    app.add_routes(login_flow.routes)
    app.add_routes(device.routes)
    app.add_routes(admin.routes)
    ops.setup(app, settings)
    app.add_routes(openapi.routes)
    console.setup(app)  # the security team's console: routes, sessions and the live alert feed
    demo_page.setup(app, settings)  # the sample login page, when [demo] enabled
    return app
