"""The composition root: every service pushauth runs is built here from `Settings`, and nowhere else.

The aiohttp app factory (pushauth/web/app.py, which serves the OpenID Provider too), the embedded mode (the
server running the workers in its own process), the three worker processes (`python -m workers.<kind>`) and
the RADIUS front (pushauth/radius/process.py) all take their services from one `Runtime`. The fronts build
themselves from it; nothing here imports a front (tests/test_architecture.py).

    open_runtime(settings)    an async context: the Redis client opened and, on exit, closed
    Runtime.services          the domain services one server instance uses (`Services`)
    Runtime.listening()       an async context running the pub/sub listener that wakes waiting sign-ins
    Runtime.push_job(name)    what each worker kind does, as a `Job` (pushauth/runtime/jobs.py); the
    Runtime.alert_job(name)   context opens what the job needs (push providers, alert sinks) and
    Runtime.expiry_job(name)  closes it after
    Runtime.embedded_workers()  an async context running all three jobs in this process (embedded store)

Lifetimes are async context managers; nothing here starts work at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cached_property, partial

import redis.asyncio as aioredis

from pushauth.accounts.service import Accounts
from pushauth.alerts.delivery import AlertDelivery, DeadLetters, sweep_loop
from pushauth.alerts.sinks import close_sinks, open_sinks
from pushauth.alerts.store import AlertStore
from pushauth.audit import Audit
from pushauth.challenges import context as login_context
from pushauth.challenges.events import ChallengeEvents
from pushauth.challenges.expiry import ExpirySweeper
from pushauth.challenges.service import ASSERTION_LIFE_S, Challenges
from pushauth.codes.seal import KekHolder
from pushauth.codes.service import Codes
from pushauth.config import Settings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.devices.service import Devices
from pushauth.push.dispatch import PushDelivery, PushQueue
from pushauth.push.registry import close_providers, open_providers
from pushauth.ratelimit.limiter import RateLimiter
from pushauth.runtime.jobs import EMBEDDED_DRAIN_S, Job, Loop, run_until_stopped, stop_task
from pushauth.store import KeySpace, open_redis

# The subscription is awaited this long at start before serving anyway (Redis down: fail closed per
# request, subscribe when it is back).
_SUBSCRIBE_WAIT_S = 5.0


@dataclass(frozen=True)
class Services:
    """The domain services one server instance uses, wired to each other."""

    alerts: AlertStore
    audit: Audit
    devices: Devices
    challenges: Challenges
    accounts: Accounts
    dead_letters: DeadLetters
    limiter: RateLimiter
    codes: Codes


class Runtime:
    """Settings, one Redis client, and every service built on them, each built once when first asked for.

    `keyring` is the server's signing keys; given (a test's, or the app factory's, loaded at creation so a
    bad keys folder fails before serving) or loaded from `settings.keys` on first use. Workers never ask
    for it, so they run on hosts without the keys."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, *,
                 keyring: KeyRingHolder | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.keyspace = KeySpace(settings.store.prefix)
        self._keyring = keyring

    @cached_property
    def keyring(self) -> KeyRingHolder:
        return self._keyring or KeyRingHolder.from_settings(self.settings.keys)

    @cached_property
    def kek(self) -> KekHolder:
        """The key-encryption key of TOTP seeds (keys/kek.json), read on first use."""
        return KekHolder.from_settings(self.settings.keys)

    @cached_property
    def alerts(self) -> AlertStore:
        # How long an approval's assertion lives is the challenges' rule; the detection ledger needs it too.
        return AlertStore(self.redis, self.keyspace, self.settings, assertion_life_s=ASSERTION_LIFE_S)

    @cached_property
    def audit(self) -> Audit:
        return Audit(self.redis, self.keyspace)

    @cached_property
    def push_queue(self) -> PushQueue | None:
        return PushQueue(self.redis, self.settings.store.prefix) if self.settings.push.enabled else None

    @cached_property
    def events(self) -> ChallengeEvents:
        return ChallengeEvents(self.redis, self.keyspace.events)

    @cached_property
    def services(self) -> Services:
        """The server's services (they need the keyring)."""
        settings, redis, keyspace = self.settings, self.redis, self.keyspace
        devices = Devices(redis, keyspace, settings, self.keyring, self.alerts, self.audit, self.push_queue)
        login_context.warm_up()
        challenges = Challenges(redis, keyspace, settings, self.keyring, devices, self.events, self.alerts,
                                self.audit, self.push_queue)
        return Services(
            alerts=self.alerts, audit=self.audit, devices=devices, challenges=challenges,
            accounts=Accounts(redis, keyspace, settings, devices, self.alerts, self.audit),
            dead_letters=DeadLetters(redis, keyspace, self.alerts),
            limiter=RateLimiter(redis, keyspace, settings),
            codes=Codes(redis, keyspace, settings, self.keyring, self.kek, devices, self.alerts, self.audit))

    def enrollments(self) -> Devices:
        """Devices as the CLI uses them: to make enrollment codes only (no alerts, no audit, no pushes)."""
        return Devices(self.redis, self.keyspace, self.settings, self.keyring)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[ChallengeEvents]:
        """Run the pub/sub listener that wakes waiting sign-ins. Entered only once it is subscribed (or
        after a few seconds with Redis down), so an early answer cannot be missed by a waiter."""
        task = asyncio.create_task(self.events.run(), name="challenge-events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.events.connected.wait(), _SUBSCRIBE_WAIT_S)
        try:
            yield self.events
        finally:
            self.events.closing = True
            await stop_task(task)

    # -- what the workers do ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def push_job(self, consumer: str) -> AsyncIterator[Job]:
        """Consume the push stream: deliver each prompt to its phone through FCM or APNs."""
        providers = open_providers(self.settings.push)
        try:
            delivery = PushDelivery(self.redis, self.keyspace, self.settings.push,
                                    self.settings.server.base_url, providers)
            yield Job({"push-worker": delivery.consumer_for(consumer).run},
                      who={"consumer": consumer}, facts={"providers": sorted(providers)})
        finally:
            await close_providers(providers)

    @contextlib.asynccontextmanager
    async def alert_job(self, consumer: str) -> AsyncIterator[Job]:
        """Consume the alert stream (every alert to every sink, at least once) and sweep the outboxes for
        alerts a crashed server wrote but did not announce. No loops when no sink is enabled."""
        settings = self.settings.alerts
        sinks = open_sinks(settings.sinks, console_url=settings.console_url)
        try:
            loops: dict[str, Loop] = {}
            if sinks:
                delivery = AlertDelivery(self.redis, self.keyspace, self.alerts, settings, sinks,
                                         {s.name: s for s in settings.sinks})
                loops = {"alert-worker": delivery.consumer_for(consumer).run,
                         "alert-sweep": partial(sweep_loop, self.alerts, settings.sweep_interval_s)}
            yield Job(loops, who={"consumer": consumer}, facts={"sinks": sorted(sinks)})
        finally:
            await close_sinks(sinks)

    @contextlib.asynccontextmanager
    async def expiry_job(self, name: str) -> AsyncIterator[Job]:
        """Settle prompts soon after they expire unanswered."""
        sweeper = ExpirySweeper(self.redis, self.keyspace, self.alerts)
        yield Job({"expiry-worker": sweeper.run}, who={"name": name})

    @contextlib.asynccontextmanager
    async def embedded_workers(self) -> AsyncIterator[None]:
        """With the embedded store the workers cannot be other processes: run their jobs here (push only
        with a provider, alerts only with a sink). With Redis, nothing: they are `python -m workers.*`."""
        if not self.settings.embedded:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            jobs = [await stack.enter_async_context(self.expiry_job("embedded")),
                    await stack.enter_async_context(self.alert_job("embedded"))]
            if self.settings.push.enabled:
                jobs.append(await stack.enter_async_context(self.push_job("embedded")))
            stop = asyncio.Event()
            loops = {name: loop for job in jobs for name, loop in job.loops.items()}
            running = asyncio.create_task(run_until_stopped(loops, stop, drain_s=EMBEDDED_DRAIN_S))
            try:
                yield
            finally:
                stop.set()
                await running


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, redis: aioredis.Redis | None = None,
                       keyring: KeyRingHolder | None = None,
                       health_check_interval_s: int = 30) -> AsyncIterator[Runtime]:
    """A `Runtime` on `redis` (left open on exit) or on a client opened from `settings.store` (closed on
    exit). `health_check_interval_s`: see `open_redis`."""
    client = redis if redis is not None else open_redis(settings.store,
                                                        health_check_interval_s=health_check_interval_s)
    try:
        yield Runtime(settings, client, keyring=keyring)
    finally:
        if redis is None:
            await client.aclose()
