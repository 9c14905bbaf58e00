"""The push pipeline against a real Redis: enqueue on create, delivery state, retries with backoff that
honour Retry-After and stop at expiry, stale tokens falling back to polling, no double push, poison
entries to the dead-letter stream, batches of challenges for many users and devices, a Redis outage
while pushes are on the wire, and the worker on a Redis Cluster (its pipelines span every master).

The provider here is a scripted implementation of pushauth's own `PushProvider` protocol, so the worker's
decisions can be driven exactly; the real firebase-admin and aioapns clients are tested against protocol
fakes in test_push_fcm.py and test_push_apns.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from support import ADMIN_TOKEN, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth import ids
from pushauth.config import PushSettings, StoreSettings
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from pushauth.push import Outcome, OutcomeKind, PushMessage
from pushauth.push.dispatch import PushDelivery
from pushauth.push.scripts import SET_DELIVERY
from pushauth.store import KeySpace, open_redis
from pushauth.store.streams import StreamNames
from testkit.redis_cluster import RedisCluster
from testkit.redis_server import RedisServer

USER = "dave@nhs.net"
TOKEN = "fcm-token-dave-0001"


@dataclass
class ScriptedProvider:
    name: str = "fcm"
    script: dict[str, list[Outcome]] = field(default_factory=dict)
    sent: list[tuple[str, PushMessage, float]] = field(default_factory=list)
    # a send to one of these tokens waits until its event is set (a push on the wire)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)

    async def send(self, token: str, message: PushMessage) -> Outcome:
        self.sent.append((token, message, time.time()))
        if token in self.hold:
            await self.hold[token].wait()
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


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> bool:
    deadline = time.time() + within_s
    while not await check():
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _true(value: bool) -> bool:
    return value



async def nothing_pending(redis: aioredis.Redis) -> bool:
    """Every push stream entry is acked (within a few seconds: acks are batched)."""
    names = StreamNames.for_("pa", "push")

    async def none() -> bool:
        return int((await redis.xpending(names.stream, names.group))["pending"]) == 0

    return await until(none)


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


def send_seconds(provider: str) -> tuple[float, float, float]:
    """pushauth_push_send_seconds{provider} so far: (count, sum, observations of 0.25 s or less)."""
    labels = {"provider": provider}

    def sample(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(f"pushauth_push_send_seconds_{name}", {**labels, **extra}) or 0.0

    return sample("count"), sample("sum"), sample("bucket", le="0.25")


async def test_send_latency_is_observed_for_failed_and_timed_out_sends_too(
        login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
        provider: ScriptedProvider) -> None:
    """Every send is timed, whatever came of it: a refused one, and one that ran into its deadline (what
    the FCM and APNs providers answer then: RETRY "timeout", after the wait), as well as a success."""
    phone = await enrolled(login, http)
    count0, sum0, fast0 = send_seconds(provider.name)
    provider.script[TOKEN] = [Outcome(OutcomeKind.FAILED, "SENDER_ID_MISMATCH")]
    refused = await login.create(USER)
    state = await delivery_of(login, refused["id"], phone.device_id, "failed")
    assert state == {"state": "failed", "reason": "SENDER_ID_MISMATCH"}
    # The next send waits 0.4 s on the wire, then times out; its retry goes through.
    wire = asyncio.Event()
    provider.hold[TOKEN] = wire
    provider.script[TOKEN] = [Outcome(OutcomeKind.RETRY, "timeout")]
    timed_out = await login.create(USER)
    assert await until(lambda: _true(len(provider.sent) == 2))  # on the wire
    await asyncio.sleep(0.4)
    wire.set()
    assert (await delivery_of(login, timed_out["id"], phone.device_id, "sent"))["state"] == "sent"
    assert len(provider.sent) == 3  # refused, timed out, its retry
    count, total, fast = send_seconds(provider.name)
    assert count - count0 == 3, (count0, count)
    assert fast - fast0 == 2, "the refused send and the retry are quick; the timed-out one is not"
    assert total - sum0 >= 0.4, (sum0, total)


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


async def test_a_batch_of_challenges_for_many_users_and_devices(
        login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery, provider: ScriptedProvider,
        redis_url: str) -> None:
    """Challenges created together are read and pushed as one batch: every device gets exactly one push,
    a phone without push is marked polling, a user with two phones gets both pushed."""
    users = [f"user{i}@nhs.net" for i in range(30)]
    phones: dict[str, list[Phone]] = {}
    for i, user in enumerate(users):
        uri = await login.enroll_uri(user)
        token = None if i == 7 else f"tok-{i}"
        phones[user] = [await Phone.enroll(uri, session=http, push_provider="fcm" if token else "none",
                                           push_token=token)]
    team = LoginFlow(http, login.url, api_key=ADMIN_TOKEN)  # a further phone the security team enrolls
    phones[users[3]].append(await Phone.enroll(await team.enroll_uri(users[3]), session=http,
                                               push_provider="fcm", push_token="tok-3b"))
    created = await asyncio.gather(*(login.create(user) for user in users))
    for user, challenge in zip(users, created, strict=True):
        for phone in phones[user]:
            want = "polling" if user == users[7] else "sent"
            assert (await delivery_of(login, challenge["id"], phone.device_id, want))["state"] == want
    # (the second phone of users[3] also got tok-3 a notice push: a phone was added)
    tokens = sorted(token for token, message, _ in provider.sent if message.kind == "challenge")
    assert tokens == sorted([f"tok-{i}" for i in range(30) if i != 7] + ["tok-3b"])
    by_token = {token: message.challenge_id for token, message, _ in provider.sent}
    assert by_token["tok-3b"] == by_token["tok-3"] == created[3]["id"]
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    assert await nothing_pending(redis)
    await redis.aclose()


async def test_delivery_state_never_creates_a_stray_hash_nor_takes_back_sent(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    gone = "pa:{aaaaaaaaaaaaaaaa}:ch:expired"
    assert await SET_DELIVERY(redis, [gone], ["pd:d1", "sent"]) == 0
    assert await redis.exists(gone) == 0, "state written for an expired challenge created a hash"
    key = "pa:{aaaaaaaaaaaaaaaa}:ch:live"
    await redis.hset(key, "st", "pending")
    assert await SET_DELIVERY(redis, [key], ["pd:d1", "retrying:UNAVAILABLE"]) == 1
    assert await SET_DELIVERY(redis, [key], ["pd:d1", "sent"]) == 1
    assert await SET_DELIVERY(redis, [key], ["pd:d1", "retrying:UNAVAILABLE"]) == 0
    assert await redis.hget(key, "pd:d1") == "sent"
    await redis.aclose()


async def test_retry_entry_naming_another_users_device_is_refused(
        login: LoginFlow, http: aiohttp.ClientSession, server: RunningServer, provider: ScriptedProvider,
        redis_url: str) -> None:
    await enrolled(login, http)
    created = await login.create(USER)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    delivery = PushDelivery(redis, KeySpace("pa"), server.settings.push, server.url, {"fcm": provider})
    other = ids.new_device_id(ids.new_uid())
    try:
        with pytest.raises(ValueError, match="could not be handled"):
            await delivery.handle("0-1", {"c": created["id"], "d": other, "n": "2"})
        with pytest.raises(ValueError, match="could not be handled"):
            await delivery.handle("0-2", {"c": created["id"], "n": "not-a-number"})
    finally:
        await redis.aclose()
    assert provider.sent == []


async def test_redis_outage_while_a_push_is_on_the_wire(private_redis: RedisServer, keyring: KeyRingHolder,
                                                         http: aiohttp.ClientSession) -> None:
    """Redis goes away while the provider is accepting a push: the worker keeps the outcome, stores it once
    Redis is back, and only then acks the entry; the push is not sent twice and nothing is lost."""
    running = await start_server(make_settings(private_redis.url, free_port(), push=PUSH), keyring)
    login = LoginFlow(http, running.url)
    redis = open_redis(StoreSettings(redis_url=private_redis.url, socket_timeout_s=1.0,
                                     connect_timeout_s=0.5), health_check_interval_s=0)
    provider = ScriptedProvider(hold={TOKEN: asyncio.Event()})
    delivery = PushDelivery(redis, KeySpace("pa"), running.settings.push, running.url, {"fcm": provider})
    stop = asyncio.Event()
    task = asyncio.create_task(delivery.consumer_for("w1").run(stop))
    try:
        phone = await enrolled(login, http)
        created = await login.create(USER)
        assert await until(lambda: _true(bool(provider.sent)))
        assert len(provider.sent) == 1
        private_redis.stop()  # graceful: the AOF keeps the challenge and the pending entry
        provider.hold[TOKEN].set()  # the provider accepts the push while Redis is away
        await asyncio.sleep(1.0)
        private_redis.start()
        state = await delivery_of(login, created["id"], phone.device_id, "sent", within_s=10)
        assert state == {"state": "sent"}
        assert await nothing_pending(redis)
        # the worker goes on pushing on its recovered connections
        second = await login.create(USER)
        state = await delivery_of(login, second["id"], phone.device_id, "sent", within_s=10)
        assert state == {"state": "sent"}
        assert [message.challenge_id for _, message, _ in provider.sent] == [created["id"], second["id"]]
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await redis.aclose()
        await running.close()


async def test_worker_on_a_redis_cluster(tmp_path_factory: pytest.TempPathFactory, keyring: KeyRingHolder,
                                         http: aiohttp.ClientSession) -> None:
    """The batched reads and writes are pipelines over keys of many hash tags (each user's {uid}, and the
    stream's {push}): on a cluster they go to every master, and an ack still waits for its writes."""
    with RedisCluster(tmp_path_factory.mktemp("push-cluster"), replicas_per_master=0) as cluster:
        store = {"redis_url": cluster.url, "cluster": True, "socket_timeout_s": 1.0, "connect_timeout_s": 0.5,
                 "prefix": "pc"}
        settings = make_settings(cluster.url, free_port(), store=store, push=PUSH)
        running = await start_server(settings, keyring)
        login = LoginFlow(http, running.url)
        redis = open_redis(settings.store, health_check_interval_s=0)
        provider = ScriptedProvider()
        delivery = PushDelivery(redis, KeySpace("pc"), settings.push, running.url, {"fcm": provider})
        stop = asyncio.Event()
        task = asyncio.create_task(delivery.consumer_for("w1").run(stop))
        try:
            users = [f"cluster{i}@nhs.net" for i in range(24)]
            phones = [await Phone.enroll(await login.enroll_uri(user), session=http, push_provider="fcm",
                                         push_token=f"tok-{i}") for i, user in enumerate(users)]
            ks = KeySpace("pc")

            def device_key(phone: Phone) -> str:
                return ks.device(ids.device_uid(phone.device_id) or "", phone.device_id)

            masters = {cluster.master_of(device_key(p)) for p in phones}
            assert len(masters) > 1, "the users should live on several masters"
            provider.script["tok-1"] = [Outcome(OutcomeKind.RETRY, "UNAVAILABLE")]  # a scheduled retry
            provider.script["tok-2"] = [Outcome(OutcomeKind.INVALID_TOKEN, "UNREGISTERED")]  # a stale token
            created = await asyncio.gather(*(login.create(user) for user in users))
            for i, (phone, challenge) in enumerate(zip(phones, created, strict=True)):
                want = "failed" if i == 2 else "sent"
                state = await delivery_of(login, challenge["id"], phone.device_id, want, within_s=10)
                assert state["state"] == want, (i, state)
            names = StreamNames.for_("pc", "push")

            async def none_pending() -> bool:
                return int((await redis.xpending(names.stream, names.group))["pending"]) == 0

            assert await until(none_pending)
            want_tokens = [f"tok-{i}" for i in range(24)] + ["tok-1"]  # tok-1 twice: its retry
            assert sorted(t for t, _, _ in provider.sent) == sorted(want_tokens)
            assert await redis.hget(device_key(phones[2]), "ptok_stale") == "1"
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await redis.aclose()
            await running.close()


async def test_a_phone_added_to_the_account_is_pushed_to_the_others_as_a_notice(
        server: RunningServer, login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery,
        provider: ScriptedProvider) -> None:
    """A new phone is news the other phones must not have to poll for: each gets a notice push (the
    phone that approved it excepted); the prompt to approve a further phone is pushed like any prompt."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first = await enrolled(login, http, "tok-first")
    async with http.post(f"{server.url}/v1/enrollments", json={"user": USER}, headers=admin) as resp:
        vouched_uri = (await resp.json())["uri"]
    second = await Phone.enroll(vouched_uri, session=http, push_provider="fcm", push_token="tok-second")

    def notices_to(token: str) -> list[PushMessage]:
        return [m for t, m, _ in provider.sent if t == token and m.kind == "notice"]

    assert await until(lambda: _true(len(notices_to("tok-first")) == 1))
    [notice] = notices_to("tok-first")
    assert notice.data() == {"type": "notice", "server": server.url}
    assert notice.expires_at > time.time() + 3600
    [added] = await first.notices()
    assert added["device_id"] == second.device_id

    # A third phone, enrolled by the login flow: the approval prompt is pushed to both phones, and once
    # the first approves, the notice goes to the second only.
    third = await Phone.enroll(await login.enroll_uri(USER), session=http, push_provider="fcm",
                               push_token="tok-third")
    [prompt] = await first.add_device_prompts()

    def challenge_pushes() -> set[str]:
        return {t for t, m, _ in provider.sent if m.kind == "challenge" and m.challenge_id == prompt.id}

    assert await until(lambda: _true(challenge_pushes() == {"tok-first", "tok-second"}))
    assert await first.approve(prompt, number=third.approval_number) == "approved"
    assert await until(lambda: _true(len(notices_to("tok-second")) == 1))
    await asyncio.sleep(0.3)
    assert len(notices_to("tok-first")) == 1  # the approver was not pushed a second notice
    assert notices_to("tok-third") == []


async def test_a_cancel_after_the_push_was_accepted_counts_as_ignored(
        server: RunningServer, login: LoginFlow, http: aiohttp.ClientSession, worker: PushDelivery) -> None:
    """A prompt the provider accepted was on the phone's screen: withdrawing it is an ignored prompt."""
    phone = await enrolled(login, http)
    for _ in range(3):
        c = await login.create(USER)
        assert (await delivery_of(login, c["id"], phone.device_id, "sent"))["state"] == "sent"
        status, _body = await login.call("DELETE", f"/v1/challenges/{c['id']}")
        assert status == 200
    async with http.get(f"{server.url}/v1/alerts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        [alert] = (await r.json())["alerts"]
    assert alert["kind"] == "ignored_prompts"
    assert len(alert["evidence"]["events"][-1]["ignored"]) == 3
