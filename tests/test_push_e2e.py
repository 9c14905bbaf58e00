"""The real push worker process (`python -m workers.push`) with the real pushauth FCM client and the real
aioapns client, against the fake FCM and the fake APNs, a real Redis and a real server: end to end, and
`kill -9` in the middle of a batch, for each provider.

The worker runs in the sandbox (testkit/fakes/sandbox.py): its own mount namespace maps fcm.googleapis.com
and Apple's push hosts to the fakes and trusts the test CA; nothing in either client is patched. Both
providers are enabled, as in a deployment with Android and iOS phones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support import API_KEY, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit.fakes import fcm, sandbox
from testkit.fakes.apns import Answer, FakeAPNs, write_p8
from testkit.fakes.fcm import FakeFCM
from testkit.fakes.sandbox import PrivateHosts, TestCA
from testkit.processes import Child

if (why := sandbox.available()) is not None:
    pytest.skip(why, allow_module_level=True)

KEY_ID, TEAM_ID, TOPIC = "ABC123DEFG", "TEAM123456", "org.pushauth.app"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, PrivateHosts]:
    folder = tmp_path_factory.mktemp("push-sandbox")
    ca = TestCA.create(folder)
    return ca, PrivateHosts.create(folder, ca)


@pytest.fixture
async def fake(tls: tuple[TestCA, PrivateHosts]) -> AsyncIterator[FakeFCM]:
    async with FakeFCM(tls[0], host=tls[1].fcm_addr) as running:
        yield running


@pytest.fixture
def service_account(fake: FakeFCM, tmp_path: Path) -> Path:
    return fake.write_service_account(tmp_path / "service-account.json")


@pytest.fixture
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def p8(apns_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> Path:
    return write_p8(tmp_path / f"AuthKey_{KEY_ID}.p8", apns_key)


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder, service_account: Path,
                 p8: Path) -> AsyncIterator[RunningServer]:
    push = {"fcm": {"enabled": True, "service_account_file": str(service_account)},
            "apns": {"enabled": True, "key_file": str(p8), "key_id": KEY_ID, "team_id": TEAM_ID,
                     "topic": TOPIC, "sandbox": True},
            "reclaim_idle_s": 1}
    running = await start_server(make_settings(redis_url, free_port(), push=push), keyring)
    yield running
    await running.close()


class WorkerPool:
    """The worker processes a test starts; all stopped afterwards."""

    def __init__(self, hosts: PrivateHosts, config: Path, logs: Path) -> None:
        self.hosts, self.config, self.logs = hosts, config, logs
        self.started: list[Child] = []

    def start(self, name: str) -> Child:
        worker = Child.python(["-m", "workers.push", "-c", str(self.config), "--name", name],
                              self.logs / f"{name}.log", hosts=self.hosts)
        self.started.append(worker)
        return worker

    def __getitem__(self, i: int) -> Child:
        return self.started[i]


@pytest.fixture
def workers(server: RunningServer, tls: tuple[TestCA, PrivateHosts], service_account: Path, p8: Path,
            redis_url: str, tmp_path: Path) -> Iterator[WorkerPool]:
    config = tmp_path / "worker.toml"
    config.write_text(f"""
[server]
base_url = "{server.url}"
[store]
redis_url = "{redis_url}"
[push]
reclaim_idle_s = 1
[push.fcm]
enabled = true
service_account_file = "{service_account}"
[push.apns]
enabled = true
key_file = "{p8}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
topic = "{TOPIC}"
sandbox = true
[logging]
format = "json"
""")
    pool = WorkerPool(tls[1], config, tmp_path)
    pool.start("w1")
    yield pool
    for worker in pool.started:
        worker.stop()


async def states(login: LoginFlow, ids: list[str]) -> dict[str, str]:
    out = {}
    for cid in ids:
        body = await login.status(cid)
        [(_, state)] = body["delivery"].items()
        out[cid] = state["state"]
    return out


async def wait_for(predicate_states: list[str], login: LoginFlow, ids: list[str], within_s: float,
                   count: int | None = None) -> dict[str, str]:
    deadline = time.time() + within_s
    while True:
        now = await states(login, ids)
        done = sum(1 for s in now.values() if s in predicate_states)
        if done >= (count if count is not None else len(ids)) or time.time() > deadline:
            return now
        await asyncio.sleep(0.1)


async def test_worker_pushes_and_the_phone_answers_from_the_push(
        login: LoginFlow, http: aiohttp.ClientSession, fake: FakeFCM, workers: WorkerPool) -> None:
    phone = await Phone.enroll(await login.enroll_uri("erin@nhs.net"), session=http, platform="android",
                               push_provider="fcm", push_token="tok-erin")
    created = await login.create("erin@nhs.net")
    final = await wait_for(["sent"], login, [created["id"]], within_s=20)
    assert final == {created["id"]: "sent"}, workers[0].log.read_text()[-2000:]
    [record] = fake.sends_to("tok-erin")
    assert record.data == {"type": "challenge", "challenge_id": created["id"], "server": login.url}
    # what the app does with the push: fetch the challenge it names, show it, answer it
    challenge = await phone.fetch(record.data["challenge_id"])
    await phone.approve(challenge, number=created["number"])
    assert (await login.status(created["id"]))["status"] == "approved"
    # the worker beats like the others: /readyz (and `pushauth check`) see it alive
    async with http.get(login.url + "/readyz") as resp:
        assert (await resp.json())["workers"]["push"] == ["w1"]


@pytest.mark.parametrize("provider", ["hanging", "failing"])
async def test_a_slow_or_failing_provider_never_holds_up_a_login(
        login: LoginFlow, http: aiohttp.ClientSession, fake: FakeFCM, workers: WorkerPool,
        provider: str) -> None:
    """FCM, through the real pushauth FCM client, hangs (answers after 30 s) or fails (503 on every
    attempt): the login page learns the push is not there, and the user opens the app, which finds the
    prompt by polling; the login completes while the push worker is still stuck on, or retrying, the push."""
    phone = await Phone.enroll(await login.enroll_uri("fay@nhs.net"), session=http, platform="android",
                               push_provider="fcm", push_token="tok-fay")
    fake.script("tok-fay", *((fcm.slow(30.0),) if provider == "hanging" else (fcm.UNAVAILABLE,) * 50))
    created = await login.create("fay@nhs.net", ttl_s=60)
    start = time.monotonic()
    await asyncio.sleep(1.0)  # the worker has the push by now, on the wire or between retries
    [delivery] = (await login.status(created["id"]))["delivery"].values()
    assert delivery["state"] in ("queued", "retrying"), delivery  # what the login page tells the user
    [pending] = await phone.pending()  # the app, opened by the user, polls
    assert pending.id == created["id"]
    waiter = asyncio.create_task(login.status(created["id"], wait=10))
    assert await phone.approve(pending, number=created["number"]) == "approved"
    seen = await asyncio.wait_for(waiter, 5)
    assert seen["status"] == "approved"
    assert "assertion" in seen
    assert time.monotonic() - start < 5, "the login waited on the push provider"


@dataclass
class ProviderFake:
    """One provider's fake, as the kill -9 test sees it: its phones' tokens, a slow answer for a token, and
    the challenge ids of the push requests that reached it for a token (failed or cut-off ones included)."""

    name: str
    platform: str
    fcm: FakeFCM | None = None
    apns: FakeAPNs | None = None

    def token(self, i: int) -> str:
        # APNs tokens are hex (the provider refuses anything else unsent); FCM's are opaque.
        return f"{i:064x}" if self.apns else f"tok-{i}"

    def answer_slowly(self, token: str, delay_s: float) -> None:
        if self.apns:
            self.apns.script(token, Answer.slow(delay_s))
        else:
            assert self.fcm is not None
            self.fcm.script(token, fcm.slow(delay_s))

    def pushes(self, token: str) -> list[str]:
        if self.apns:
            return [r.body["challenge_id"] for r in self.apns.seen(token)]
        assert self.fcm is not None
        return [s.data["challenge_id"] for s in self.fcm.sends_to(token)]


@pytest.fixture(params=["fcm", "apns"])
async def target(request: pytest.FixtureRequest, fake: FakeFCM, tls: tuple[TestCA, PrivateHosts],
                 apns_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[ProviderFake]:
    """The provider a test's phones use, for each of the two; the FCM fake runs for every test anyway."""
    if request.param == "fcm":
        yield ProviderFake("fcm", "android", fcm=fake)
        return
    async with FakeAPNs(tls[0], topic=TOPIC, key_id=KEY_ID, team_id=TEAM_ID,
                        public_key=apns_key.public_key(), host=tls[1].apns_addr) as apns:
        yield ProviderFake("apns", "ios", apns=apns)


async def test_kill_9_mid_batch_loses_nothing_and_repeats_nothing_acknowledged(
        target: ProviderFake, login: LoginFlow, http: aiohttp.ClientSession, workers: WorkerPool) -> None:
    users = [f"user{i}@nhs.net" for i in range(24)]
    for i, user in enumerate(users):
        await Phone.enroll(await login.enroll_uri(user), session=http, platform=target.platform,
                           push_provider=target.name, push_token=target.token(i))
        if i >= 8:  # the provider answers these slowly: they are in flight when the worker dies
            target.answer_slowly(target.token(i), 4.0)
    created = [await login.create(user) for user in users]
    ids = [c["id"] for c in created]
    # the fast third is acknowledged (state "sent" recorded), the rest are on the wire
    before = await wait_for(["sent"], login, ids, within_s=20, count=8)
    acknowledged = [cid for cid, state in before.items() if state == "sent"]
    assert len(acknowledged) >= 8, before
    workers[0].kill9()
    workers.start("w2")
    after = await wait_for(["sent"], login, ids, within_s=30)
    assert set(after.values()) == {"sent"}, f"lost pushes: {after}\n{workers[1].log.read_text()[-3000:]}"
    for i, cid in enumerate(ids):
        pushes = target.pushes(target.token(i))
        assert pushes, f"push for {cid} never reached the provider"
        if cid in acknowledged:
            assert len(pushes) == 1, f"phone {i} was acknowledged before the crash but pushed again"
        assert set(pushes) == {cid}


async def test_embedded_server_runs_the_push_worker_itself(
        tls: tuple[TestCA, PrivateHosts], fake: FakeFCM, service_account: Path, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """One process, embedded store: `pushauth serve` must push without any worker process."""
    port = free_port()
    config = tmp_path / "embedded.toml"
    config.write_text(f"""
[server]
port = {port}
base_url = "http://127.0.0.1:{port}"
[keys]
ephemeral = true
[push.fcm]
enabled = true
service_account_file = "{service_account}"
[[applications]]
id = "webmail"
name = "Webmail"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]
""")
    serve = Child.python(["-m", "pushauth", "-c", str(config), "serve"], tmp_path / "serve.log", hosts=tls[1])
    log = serve.log
    try:
        url = f"http://127.0.0.1:{port}"
        login = LoginFlow(http, url)
        for _ in range(100):  # wait for the server to listen
            try:
                uri = await login.enroll_uri("frank@nhs.net")
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail(f"server did not start:\n{log.read_text()[-2000:]}")
        phone = await Phone.enroll(uri, session=http, push_provider="fcm", push_token="tok-frank")
        created = await login.create("frank@nhs.net")
        final = await wait_for(["sent"], login, [created["id"]], within_s=20)
        assert final == {created["id"]: "sent"}, log.read_text()[-2000:]
        [record] = fake.sends_to("tok-frank")
        assert record.data["challenge_id"] == created["id"]
        assert phone.device_id in (await login.status(created["id"]))["delivery"]
        assert b"EMBEDDED STORE" in log.read_bytes(), "the embedded store must say nothing survives a restart"
    finally:
        assert serve.stop() == 0, "the server must shut down cleanly on SIGTERM"
