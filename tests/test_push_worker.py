"""The push pipeline against a real Redis: enqueue on create, delivery state, retries with backoff that
honour Retry-After and stop at expiry, stale tokens falling back to polling, no double push, poison
entries to the dead-letter stream.

The provider here is a scripted implementation of pushauth's own `PushProvider` protocol, so the worker's
decisions can be driven exactly; the real firebase-admin and aioapns clients are tested against protocol
fakes in test_push_fcm.py and test_push_apns.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import aiohttp
import pytest
import redis.asyncio as aioredis
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.config import PushSettings
from pushauth.delivery import PushDelivery
from pushauth.phone import Phone
from pushauth.push import Outcome, OutcomeKind, PushMessage
from pushauth.store import KeySpace
from pushauth.store.streams import StreamNames
from pushauth.web.keyring import KeyRingHolder

USER = "dave@nhs.net"
TOKEN = "fcm-token-dave-0001"


@dataclass
class ScriptedProvider:
    name: str = "fcm"
    script: dict[str, list[Outcome]] = field(default_factory=dict)
    sent: list[tuple[str, PushMessage, float]] = field(default_factory=list)

    async def send(self, token: str, message: PushMessage) -> Outcome:
        self.sent.append((token, message, time.time()))
        queue = self.script.get(token)
        return queue.pop(0) if queue else Outcome(OutcomeKind.SENT, provider_id="m1")

    async def aclose(self) -> None:
        return None


PUSH = {"fcm": {"enabled": True, "service_account_file": "unused-by-the-scripted-provider.json"},
        "backoff_base_s": 0.2, "backoff_max_s": 0.4, "reclaim_idle_s": 1, "dead_letter_after": 2}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), push=PUSH), keyring)
    yield running
    await running.close()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
async def worker(server: RunningServer, redis_url: str,
                 provider: ScriptedProvider) -> AsyncIterator[PushDelivery]:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    settings = server.settings
    delivery = PushDelivery(redis, KeySpace(settings.store.prefix), settings.push, server.url,
                            {"fcm": provider})
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.consumer_for("w1").run(stop))
    yield delivery
    stop.set()
    await task
    await redis.aclose()


async def enrolled(login: LoginFlow, http: aiohttp.ClientSession, token: str | None = TOKEN) -> Phone:
    return await Phone.enroll(await login.enroll_uri(USER), session=http,
                              push_provider="fcm" if token else "none", push_token=token)


async def delivery_of(login: LoginFlow, cid: str, device: str, want: str,
                      within_s: float = 5.0) -> dict[str, str]:
    """Poll the login flow's view until the device's delivery state is `want` (or time runs out)."""
    deadline = time.time() + within_s
    while True:
        body = await login.status(cid)
        state: dict[str, str] = body["delivery"][device]
        if state["state"] == want or time.time() > deadline:
            return state
        await asyncio.sleep(0.05)


async def test_push_sent_and_visible_to_the_login_flow(
        login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
        provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http)
    created = await login.create(USER)
    assert (await delivery_of(login, created["id"], phone.device_id, "sent")) == {"state": "sent"}
    [(token, message, _)] = provider.sent
    assert token == TOKEN
    assert message.data() == {"type": "challenge", "challenge_id": created["id"], "server": login.url}
    assert abs(message.expires_at - (time.time() + 60)) < 3, "the push must carry the challenge's expiry"


async def test_retry_honours_retry_after_then_succeeds(
        login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
        provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http)
    provider.script[TOKEN] = [Outcome(OutcomeKind.RETRY, "UNAVAILABLE", retry_after_s=1.0)]
    created = await login.create(USER)
    assert (await delivery_of(login, created["id"], phone.device_id, "retrying"))["reason"] == "UNAVAILABLE"
    assert (await delivery_of(login, created["id"], phone.device_id, "sent"))["state"] == "sent"
    first, second = provider.sent[0][2], provider.sent[1][2]
    assert second - first >= 1.0, "Retry-After was not honoured"


async def test_retries_stop_at_expiry(login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
                                      provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http)
    provider.script[TOKEN] = [Outcome(OutcomeKind.RETRY, "QUOTA_EXCEEDED", retry_after_s=30.0)]
    created = await login.create(USER, ttl_s=10)
    state = await delivery_of(login, created["id"], phone.device_id, "failed")
    assert state == {"state": "failed", "reason": "QUOTA_EXCEEDED"}
    await asyncio.sleep(0.5)
    assert len(provider.sent) == 1, "retried although the retry would land after the challenge expired"


async def test_retries_are_bounded(login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
                                   provider: ScriptedProvider, server: RunningServer) -> None:
    phone = await enrolled(login, http)
    provider.script[TOKEN] = [Outcome(OutcomeKind.RETRY, "INTERNAL")] * 20
    created = await login.create(USER)
    state = await delivery_of(login, created["id"], phone.device_id, "failed", within_s=15)
    assert state["state"] == "failed"
    assert len(provider.sent) == server.settings.push.max_attempts


async def test_invalid_token_falls_back_to_polling_and_login_completes(
        login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
        provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http)
    provider.script[TOKEN] = [Outcome(OutcomeKind.INVALID_TOKEN, "UNREGISTERED")]
    first = await login.create(USER)
    assert (await delivery_of(login, first["id"], phone.device_id, "failed"))["reason"] == "invalid_token"
    # the login still completes: the phone polls
    [challenge] = await phone.pending()
    await phone.approve(challenge, number=first["number"])
    assert (await login.status(first["id"]))["status"] == "approved"
    # the next challenge is not pushed to the stale token at all
    second = await login.create(USER)
    assert (await delivery_of(login, second["id"], phone.device_id, "polling"))["state"] == "polling"
    assert len(provider.sent) == 1
    # a new token from the phone makes it pushable again
    await phone.update_push_token("fcm", "fcm-token-dave-0002")
    third = await login.create(USER)
    assert (await delivery_of(login, third["id"], phone.device_id, "sent"))["state"] == "sent"
    assert provider.sent[-1][0] == "fcm-token-dave-0002"


async def test_no_double_push_when_an_entry_is_handled_again(login: LoginFlow, http: aiohttp.ClientSession,
                                                             worker: PushDelivery,
                                                             provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http)
    created = await login.create(USER)
    await delivery_of(login, created["id"], phone.device_id, "sent")
    # what a reclaim after a crash between the provider's ack and XACK amounts to
    await worker.handle("0-1", {"c": created["id"]})
    assert len(provider.sent) == 1


async def test_phone_without_push_is_polling(login: LoginFlow, http: aiohttp.ClientSession,
                                             worker: PushDelivery, provider: ScriptedProvider) -> None:
    phone = await enrolled(login, http, token=None)
    created = await login.create(USER)
    assert (await delivery_of(login, created["id"], phone.device_id, "polling"))["state"] == "polling"
    assert provider.sent == []


async def test_decided_challenge_is_not_pushed(login: LoginFlow, http: aiohttp.ClientSession,
                                               provider: ScriptedProvider, server: RunningServer,
                                               redis_url: str) -> None:
    phone = await enrolled(login, http)
    created = await login.create(USER)
    [challenge] = await phone.pending()
    await phone.approve(challenge, number=created["number"])
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    delivery = PushDelivery(redis, KeySpace("pa"), server.settings.push, server.url, {"fcm": provider})
    await delivery.handle("0-1", {"c": created["id"]})
    await redis.aclose()
    assert provider.sent == []


async def test_poison_entry_goes_to_dead_letter(worker: PushDelivery, redis_url: str) -> None:
    assert worker.consumer is not None
    await worker.consumer.add({"c": "not-a-challenge-id"})
    names = StreamNames.for_("pa", "push")
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.time() + 15
    dead: list[tuple[str, dict[str, str]]] = []
    while time.time() < deadline and not dead:
        dead = cast(list[tuple[str, dict[str, str]]], await redis.xrange(names.dead))
        await asyncio.sleep(0.2)
    pending = await redis.xpending(names.stream, names.group)
    await redis.aclose()
    assert len(dead) == 1
    assert dead[0][1]["c"] == "not-a-challenge-id"
    assert pending["pending"] == 0, "the poison entry must be acknowledged once dead-lettered"


def test_push_settings_defaults_are_sane() -> None:
    s = PushSettings()
    assert not s.enabled
    assert s.max_attempts >= 3
