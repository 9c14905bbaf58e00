"""The deployment of README "Deploying it", whole, on one machine: every part a real OS process.

    3 x `pushauth -c cfg serve --port P`   one public base_url (a load balancer's) and one keys folder
    2 x `python -m workers.push`           in the push sandbox: pushauth's own FCM sender and aioapns,
                                           unpatched, reaching fake FCM and fake APNs on loopback
                                           addresses of this test's own (testkit/fakes/sandbox.py)
    2 x `python -m workers.alerts`         to a Standard Webhooks receiver that checks every signature
    1 x `python -m workers.expiry`

on one Redis, and on a real local Redis Cluster (3 masters, 3 replicas). One walk through the contract,
each step landing on a different server process than the one before, so that nothing can pass by a
process remembering what it did itself: enrollment, waiting and waking across instances, exactly one push
per device from two workers, "not me" with its alert and containment, the per-user rate limit counted
across processes, fifty users at once, readiness, and a clean SIGTERM of everything.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support import (
    ADMIN_TOKEN,
    API_KEY,
    OTHER_API_KEY,
    AdminClient,
    LoginFlow,
    assert_error,
    eventually,
    free_port,
    phone_via,
    sample,
    scrape,
    verify_assertion,
)

from pushauth.cli import main as pushauth_cli
from pushauth.crypto.keys import KeyStore
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit.fakes import sandbox
from testkit.fakes.apns import FakeAPNs, write_p8
from testkit.fakes.fcm import FakeFCM
from testkit.fakes.receivers import HttpReceiver, standard_webhooks_check
from testkit.fakes.sandbox import PrivateHosts, TestCA
from testkit.processes import Child

if (why := sandbox.available()) is not None:
    pytest.skip(why, allow_module_level=True)

# The load balancer's URL: in every QR code, the `iss` of every challenge and the `server` of every push.
# No process listens there; each request goes to one instance's own port (Phone's server_override).
PUBLIC = "https://pushauth.trust.example"
APP_NAME = "NHSmail webmail"
SECRET = "whsec_" + base64.b64encode(b"pushauth-topology-webhook-secret").decode()
SINK = "soc-hook"
KEY_ID, TEAM_ID, TOPIC = "TOPO123456", "TEAMTOPO12", "org.pushauth.app"
# A small push-bombing limit: more than this many prompts for one user in 5 minutes are refused (429).
BOMB_MAX = 6
# A second application with a small quota of its own (calls per minute), for the per-application limit.
BATCH_QUOTA = 4
USERS = 50
ALICE = "alice@nhs.net"
IVY = "ivy@nhs.net"  # leaves three prompts unanswered: the expiry worker settles them
IGNORED_TTL_S = 10  # the shortest life a login flow may ask for
CONTEXT = {"ip": "198.51.100.7", "location": "Leeds, GB",
           "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}
# What the phone is shown of it: the browser in words (pushauth/challenges/context.py).
PHONE_CONTEXT = {**CONTEXT, "user_agent": "Firefox on Linux"}
PUSH_WORKERS = ("push-1", "push-2")
ALERT_WORKERS = ("alerts-1", "alerts-2")
EXPIRY_WORKERS = ("expiry-1",)
S1, S2, S3 = 0, 1, 2  # the three server processes


@dataclass(frozen=True)
class Store:
    url: str
    cluster: bool
    prefix: str


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "redis":
        return Store(request.getfixturevalue("redis_url"), False, "pa")  # emptied for this test
    cluster = request.getfixturevalue("cluster")
    return Store(cluster.url, True, f"topo{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One keys folder for every server process, made as an operator makes it."""
    path = tmp_path_factory.mktemp("topology-keys") / "keys"
    assert pushauth_cli(["keys", "--path", str(path), "generate"]) == 0
    return path


@dataclass
class PushFakes:
    fcm: FakeFCM
    apns: FakeAPNs
    hosts: PrivateHosts
    service_account: Path
    p8: Path


@pytest.fixture
async def push_fakes(tmp_path: Path) -> AsyncIterator[PushFakes]:
    folder = tmp_path / "push-sandbox"
    ca = TestCA.create(folder)
    hosts = PrivateHosts.create(folder, ca)  # each fake on a random loopback address of its own, :443
    key = ec.generate_private_key(ec.SECP256R1())
    p8 = write_p8(folder / f"AuthKey_{KEY_ID}.p8", key)
    apns_fake = FakeAPNs(ca, topic=TOPIC, key_id=KEY_ID, team_id=TEAM_ID, public_key=key.public_key(),
                         host=hosts.apns_addr)
    async with FakeFCM(ca, host=hosts.fcm_addr) as fcm, apns_fake as apns:
        yield PushFakes(fcm, apns, hosts, fcm.write_service_account(folder / "service-account.json"), p8)


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(check=standard_webhooks_check(SECRET)) as running:
        yield running


def write_config(path: Path, store: Store, keys: Path, fakes: PushFakes, hook_url: str) -> Path:
    """The one config file every process reads (each server gets its own port with --port)."""
    path.write_text(f"""
[server]
host = "127.0.0.1"
base_url = "{PUBLIC}"
[store]
redis_url = "{store.url}"
cluster = {str(store.cluster).lower()}
prefix = "{store.prefix}"
[keys]
path = "{keys}"
[push]
reclaim_idle_s = 5
[push.fcm]
enabled = true
service_account_file = "{fakes.service_account}"
[push.apns]
enabled = true
key_file = "{fakes.p8}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
topic = "{TOPIC}"
sandbox = true
[[applications]]
id = "webmail"
name = "{APP_NAME}"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]
[[applications]]
id = "batch"
name = "Batch sign-in"
api_key_sha256 = ["{sha256_hex(OTHER_API_KEY)}"]
rate_limit = {BATCH_QUOTA}
[admin]
token_sha256 = ["{sha256_hex(ADMIN_TOKEN)}"]
[detection]
push_bombing_max = {BOMB_MAX}
[alerts]
retry_schedule_s = [1, 1, 1]
# Both alert workers sweep every second and take over each other's unfinished deliveries after 3 s: a
# delivery repeated by either path would reach the receiver twice within the test.
sweep_interval_s = 1.0
reclaim_idle_s = 3.0
[[alerts.sinks]]
name = "{SINK}"
kind = "webhook"
url = "{hook_url}"
secret = "{SECRET}"
timeout_s = 2.0
[logging]
level = "info"
format = "json"
""")
    return path


@dataclass
class Topology:
    http: aiohttp.ClientSession
    urls: list[str]  # each server process's own address
    procs: dict[str, Child]
    metrics: dict[str, str]  # worker name -> its /metrics address
    fakes: PushFakes
    receiver: HttpReceiver
    # token -> the challenge ids a push was expected for, in order (checked against the fakes at the end)
    expected_pushes: dict[str, list[str]] = field(default_factory=dict)

    def login(self, i: int) -> LoginFlow:
        return LoginFlow(self.http, self.urls[i % 3])

    def admin(self, i: int) -> AdminClient:
        return AdminClient(self.http, self.urls[i % 3])

    def phone(self, phone: Phone, i: int) -> Phone:
        return phone_via(phone, self.urls[i % 3], self.http)

    def pushes(self, token: str) -> list[dict[str, Any]]:
        """The data of every push request either fake received for `token` (FCM data; the APNs payload
        without `aps`), failed attempts included: a retry would be a second push too."""
        fcm = [dict(r.data) for r in self.fakes.fcm.sends_to(token)]
        apns = [{k: v for k, v in r.body.items() if k != "aps"} for r in self.fakes.apns.seen(token)
                if isinstance(r.body, dict)]
        return fcm + apns

    def prompts(self, token: str) -> list[dict[str, Any]]:
        """The sign-in prompts among `pushes(token)` (not the account notices)."""
        return [p for p in self.pushes(token) if p.get("type") == "challenge"]

    def notices(self, token: str) -> list[dict[str, Any]]:
        return [p for p in self.pushes(token) if p.get("type") == "notice"]

    async def push(self, token: str, cid: str, within_s: float = 15) -> dict[str, Any]:
        """The push naming `cid` that reached the phone with `token` (what the app wakes up with)."""
        self.expected_pushes.setdefault(token, []).append(cid)

        async def arrived() -> dict[str, Any] | None:
            return next((p for p in self.pushes(token) if p.get("challenge_id") == cid), None)

        return await eventually(arrived, within_s, f"a push of {cid} to {token}")

    async def notified(self, i: int) -> float:
        """How many waiting login flows server `i` has woken with a decision published to it."""
        return sample(await scrape(self.http, self.urls[i % 3]), "pushauth_time_to_notify_seconds_count")

    async def get(self, i: int, path: str) -> tuple[int, Any]:
        async with self.http.get(self.urls[i % 3] + path) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def topology(store: Store, keys_dir: Path, push_fakes: PushFakes, receiver: HttpReceiver,
                   tmp_path: Path) -> AsyncIterator[Topology]:
    hook = receiver.url + "/hook"
    config = str(write_config(tmp_path / "pushauth.toml", store, keys_dir, push_fakes, hook))
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, Child] = {}
    ports = [free_port() for _ in range(3)]
    connector = aiohttp.TCPConnector(limit=0)
    http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=40))
    try:
        for i, port in enumerate(ports, 1):
            procs[f"serve-{i}"] = Child.python(["-m", "pushauth", "-c", config, "serve", "--port", str(port)],
                                               logs / f"serve-{i}.log")
        metrics = {name: free_port() for name in PUSH_WORKERS}
        for name, port in metrics.items():
            procs[name] = Child.python(["-m", "workers.push", "-c", config, "--name", name,
                                        "--metrics-port", str(port)], logs / f"{name}.log",
                                       hosts=push_fakes.hosts)
        for kind, names in (("alerts", ALERT_WORKERS), ("expiry", EXPIRY_WORKERS)):
            for name in names:
                procs[name] = Child.python(["-m", f"workers.{kind}", "-c", config, "--name", name],
                                           logs / f"{name}.log")
        top = Topology(http, [f"http://127.0.0.1:{p}" for p in ports], procs,
                       {name: f"http://127.0.0.1:{port}" for name, port in metrics.items()}, push_fakes,
                       receiver)
        await until_ready(top, within_s=40)
        yield top
    finally:
        for proc in procs.values():  # what the test did not stop cleanly (a failure): no orphans
            if proc.returncode is None:
                proc.kill9()
        await http.close()


def crashed(top: Topology) -> str | None:
    """Which process has exited, with the end of its log."""
    for name, proc in top.procs.items():
        if proc.returncode is not None:
            return f"{name} exited with {proc.returncode}:\n{proc.log_text()[-3000:]}"
    return None


async def readyz(top: Topology, i: int) -> tuple[int, dict[str, Any]]:
    try:
        status, body = await top.get(i, "/readyz")
    except aiohttp.ClientConnectionError:
        return 0, {}
    return status, body


async def until_ready(top: Topology, within_s: float) -> None:
    """Every server answers /readyz "ready", with every worker's heartbeat seen."""
    want = {"push": sorted(PUSH_WORKERS), "alerts": sorted(ALERT_WORKERS), "expiry": sorted(EXPIRY_WORKERS)}
    last: list[tuple[int, dict[str, Any]]] = []

    async def ready() -> bool | None:
        nonlocal last
        assert (why := crashed(top)) is None, why
        last = [await readyz(top, i) for i in (S1, S2, S3)]
        ok = all(status == 200 and body["status"] == "ready" and body["workers"] == want
                 for status, body in last)
        return True if ok else None

    try:
        await eventually(ready, within_s, "every server ready with every worker", every_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last /readyz answers: {last}") from None


@pytest.mark.timeout(150)
async def test_the_whole_deployment_as_processes(topology: Topology, keys_dir: Path) -> None:
    top = topology
    steps: dict[str, float] = {}
    began = time.monotonic()

    # -- 1. enrollment across instances; one signing key everywhere ---------------------------------------
    jwks_seen = [(await top.get(i, "/.well-known/jwks.json"))[1] for i in (S1, S2, S3)]
    assert jwks_seen[0] == jwks_seen[1] == jwks_seen[2] == KeyStore(keys_dir).load().jwks()
    jwks = jwks_seen[0]
    fcm_token, apns_token = "fcm-alice-" + secrets.token_urlsafe(16), secrets.token_hex(32)
    uri = await top.login(S1).enroll_uri(ALICE)
    assert f"server={PUBLIC.replace(':', '%3A').replace('/', '%2F')}" in uri  # the public URL, no port
    # The phone pins the key the QR code names (jkt) and checks it on S2 before sending the code there.
    android = await Phone.enroll(uri, session=top.http, server_override=top.urls[S2], platform="android",
                                 push_provider="fcm", push_token=fcm_token)
    # her second phone, issued by the security team (a login flow's would wait for approval on the first)
    iphone = await Phone.enroll(await top.admin(S3).enroll_uri(ALICE), session=top.http,
                                server_override=top.urls[S1], platform="ios", push_provider="apns",
                                push_token=apns_token)
    user = await top.admin(S2).user(ALICE)
    assert {d["id"] for d in user["devices"]} == {android.device_id, iphone.device_id}, user
    # Ivy's phone has no push provider (it polls); three prompts to her, one per server, go unanswered.
    # Nobody touches her account again: only the expiry worker can count them (checked in step 6).
    ivy = await Phone.enroll(await top.login(S2).enroll_uri(IVY), session=top.http,
                             server_override=top.urls[S3])
    ignored = [(await top.login(i).create(IVY, ttl_s=IGNORED_TTL_S))["id"] for i in (S1, S2, S3)]
    ignored_at = time.monotonic()
    assert {c.id for c in await top.phone(ivy, S1).pending()} == set(ignored)
    assert (await top.login(S3).status(ignored[0]))["delivery"] == {ivy.device_id: {"state": "polling"}}
    steps["1 enroll"] = time.monotonic() - began

    # -- 2. a sign-in created on S3, waited for on S1, fetched on S2, approved on S3 ------------------------
    t = time.monotonic()
    notified_before = await top.notified(S1)
    created = await top.login(S3).create(ALICE, context=CONTEXT)
    cid = created["id"]
    waiter = asyncio.create_task(top.login(S1).status(cid, wait=10))
    to_android = await top.push(fcm_token, cid)
    to_iphone = await top.push(apns_token, cid)
    assert to_android == to_iphone == {"type": "challenge", "challenge_id": cid, "server": PUBLIC}
    challenge = await top.phone(android, S2).fetch(to_android["challenge_id"])
    assert (challenge.app, challenge.user, challenge.context) == (APP_NAME, ALICE, PHONE_CONTEXT)
    assert challenge.number_matching
    assert not waiter.done()
    assert await top.phone(android, S3).approve(challenge, number=created["number"]) == "approved"
    answered = time.monotonic()
    seen = await asyncio.wait_for(waiter, 12)
    woken_after = time.monotonic() - answered
    assert seen["status"] == "approved", seen
    assert woken_after < 2.0, f"the waiter on S1 returned {woken_after:.2f} s after the answer on S3"
    claims = verify_assertion(seen["assertion"], jwks)
    assert (claims["iss"], claims["aud"], claims["sub"], claims["jti"], claims["result"], claims["device"]) \
        == (PUBLIC, "webmail", ALICE, cid, "approved", android.device_id)
    # S1's waiter was parked and woken by the decision S3 published (not by reading it at its start)
    notified = await top.notified(S1)
    assert notified - notified_before == 1

    async def both_sent() -> dict[str, Any] | None:
        body = await top.login(S2).status(cid)
        states = {did: d["state"] for did, d in body["delivery"].items()}
        return body if states == {android.device_id: "sent", iphone.device_id: "sent"} else None

    await eventually(both_sent, 10, "delivery 'sent' for both phones")
    assert len(top.prompts(fcm_token)) == len(top.prompts(apns_token)) == 1, "two workers, one push each"
    # and the Android phone was told, by a push, that the iPhone was added to the account
    assert top.notices(fcm_token) == [{"type": "notice", "server": PUBLIC}]
    assert top.notices(apns_token) == []
    steps["2 approve"] = time.monotonic() - t

    # -- 3. "not me" on S3 while the login flow waits on S2; alert on S1; suspended everywhere -------------
    t = time.monotonic()
    notified_before = await top.notified(S2)
    created = await top.login(S1).create(ALICE, context=CONTEXT)
    cid = created["id"]
    waiter = asyncio.create_task(top.login(S2).status(cid, wait=10))
    pushed = await top.push(apns_token, cid)
    await top.push(fcm_token, cid)
    assert await top.phone(iphone, S3).deny(pushed["challenge_id"], reason="not_me") == "denied"
    seen = await asyncio.wait_for(waiter, 12)
    assert (seen["status"], seen["reason"]) == ("denied", "not_me"), seen
    assert "assertion" not in seen
    notified = await top.notified(S2)
    assert notified - notified_before == 1  # woken by the denial S3 published
    [alert] = await top.admin(S1).alerts(user=ALICE)
    assert (alert["kind"], alert["severity"], alert["status"]) == ("denied_not_me", "critical", "open"), alert
    assert [e["kind"] for e in alert["evidence"]["events"]] == ["device_enrolled", "denied_not_me"], alert
    # One incident, two versions: opened (high) by the second phone, raised to critical by "not me".
    # Each version reaches the receiver once, signed, whatever the two alert workers and their sweeps do.
    ids = {f"msg_{alert['id']}_v1_{SINK}": ("alert.created", "device_enrolled", "high"),
           f"msg_{alert['id']}_v2_{SINK}": ("alert.updated", "denied_not_me", "critical")}

    async def delivered() -> bool | None:
        return True if set(ids) <= {r.headers.get("webhook-id") for r in top.receiver.requests} else None

    await eventually(delivered, 10, f"webhook deliveries {sorted(ids)}")
    for request in top.receiver.requests:
        if request.headers.get("webhook-id") not in ids:
            continue  # (Ivy's alert, should her prompts have expired already: checked in step 6)
        body = request.json()
        assert ids[request.headers["webhook-id"]] == (body["type"], body["data"]["kind"],
                                                      body["data"]["severity"]), body
        assert body["data"]["id"] == alert["id"]
    for i in (S1, S2, S3):
        status, body = await top.login(i).call("POST", "/v1/challenges", {"user": ALICE})
        assert_error(status, body, 403, "suspended")
    steps["3 not me"] = time.monotonic() - t

    # -- 4. the per-user rate limit is one count across the three processes --------------------------------
    t = time.monotonic()
    status, lifted = await top.admin(S2).call("POST", f"/v1/users/{ALICE}/unlock", {"what": "suspension"})
    assert (status, lifted["was_suspended"]) == (200, True), lifted
    assert (await top.admin(S3).user(ALICE))["suspended"] is False
    # The unlock started the push-bombing count again (a lifted user signs in at once). Processes counting
    # for themselves would each allow more; one shared count allows exactly BOMB_MAX in all, round robin.
    allowed = []
    for n in range(BOMB_MAX):
        allowed.append((await top.login(n).create(ALICE))["id"])
    refused = []
    for n in range(BOMB_MAX, BOMB_MAX + 3):  # the next prompt on each of the three servers
        async with top.http.post(top.urls[n % 3] + "/v1/challenges", json={"user": ALICE},
                                 headers=top.login(n).headers) as resp:
            body = await resp.json()
            assert_error(resp.status, body, 429, "rate_limited")
            refused.append(int(resp.headers["Retry-After"]))
    assert all(1 <= r <= 300 for r in refused), refused
    # The per-application limit is one count across the processes too: BATCH_QUOTA calls in all, round
    # robin, then each server refuses the next with 429 and Retry-After. (Per-address limits are shared the
    # same way: tests/test_rate_limits.py.)
    batch = []
    for n in range(BATCH_QUOTA + 3):
        async with top.http.get(top.urls[n % 3] + "/v1/challenges/none",
                                headers={"Authorization": f"Bearer {OTHER_API_KEY}"}) as resp:
            batch.append((resp.status, resp.headers.get("Retry-After", "").isdigit()))
    assert batch == [(404, False)] * BATCH_QUOTA + [(429, True)] * 3, batch
    for n, pending in enumerate(allowed):  # the prompts that were sent reached both phones once; cancel
        await top.push(fcm_token, pending)
        await top.push(apns_token, pending)
        status, body = await top.login(n + 1).call("DELETE", f"/v1/challenges/{pending}")
        assert (status, body["status"]) == (200, "cancelled"), body
    [alert] = await top.admin(S3).alerts(user=ALICE)
    assert alert["evidence"]["kinds"]["push_bombing"] == 3, alert  # one incident: no new page
    steps["4 rate limit"] = time.monotonic() - t

    # -- 5. fifty users at once, spread over the servers ---------------------------------------------------
    t = time.monotonic()
    users = [f"user{i:02}@nhs.net" for i in range(USERS)]
    tokens = [f"fcm-{i}-{secrets.token_hex(8)}" if i % 2 == 0 else secrets.token_hex(32)
              for i in range(USERS)]

    async def enroll(i: int) -> Phone:
        return await Phone.enroll(await top.login(i).enroll_uri(users[i]), session=top.http,
                                  server_override=top.urls[(i + 1) % 3],
                                  platform="android" if i % 2 == 0 else "ios",
                                  push_provider="fcm" if i % 2 == 0 else "apns", push_token=tokens[i])

    phones = await asyncio.gather(*(enroll(i) for i in range(USERS)))

    async def sign_in(i: int) -> tuple[str, dict[str, Any], str]:
        c = await top.login(i).create(users[i], context={"ip": f"203.0.113.{i}"})
        waiting = asyncio.create_task(top.login(i + 1).status(c["id"], wait=20))
        pushed = await top.push(tokens[i], c["id"], within_s=30)
        ch = await top.phone(phones[i], i + 2).fetch(pushed["challenge_id"])
        answer = await top.phone(phones[i], i).approve(ch, number=c["number"])
        return answer, await waiting, c["id"]

    outcomes = await asyncio.gather(*(sign_in(i) for i in range(USERS)), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, f"{len(errors)} of {USERS} sign-ins failed: {errors[:3]}"
    for i, outcome in enumerate(outcomes):
        assert not isinstance(outcome, BaseException)
        answer, seen, cid = outcome
        assert (answer, seen["status"]) == ("approved", "approved"), seen
        assert verify_assertion(seen["assertion"], jwks)["sub"] == users[i]
    raised = [a for a in await top.admin(S2).alerts() if a["user"] in users]
    assert not raised, f"normal sign-ins raised alerts: {raised}"
    steps["5 fifty users"] = time.monotonic() - t

    # -- 6. ready everywhere; every push once; SIGTERM: every process exits 0 without a traceback ----------
    t = time.monotonic()
    # Ivy's prompts expired unanswered: settled by the expiry worker, the alert delivered by an alert worker.
    await asyncio.sleep(max(0.0, ignored_at + IGNORED_TTL_S - time.monotonic()))

    async def ivys_alert() -> dict[str, Any] | None:
        found = await top.admin(S3).alerts(user=IVY)
        return found[0] if found else None

    alert = await eventually(ivys_alert, 10, "the ignored_prompts alert, raised by the expiry worker")
    assert (alert["kind"], alert["severity"]) == ("ignored_prompts", "medium"), alert
    assert {e["challenge_id"] for e in alert["evidence"]["events"][-1]["ignored"]} == set(ignored), alert
    ids[f"msg_{alert['id']}_v1_{SINK}"] = ("alert.created", "ignored_prompts", "medium")
    await eventually(delivered, 10, f"webhook deliveries {sorted(ids)}")
    await until_ready(top, within_s=5)
    for token, cids in top.expected_pushes.items():
        got = [p["challenge_id"] for p in top.prompts(token)]
        assert sorted(got) == sorted(cids), f"{token}: pushed {got}, expected each of {cids} once"
    expected = sum(len(cids) for cids in top.expected_pushes.values())
    expected += 1  # the notice to the Android phone that the iPhone was added (step 1)
    assert len(top.fakes.fcm.requests) + len(top.fakes.apns.requests) == expected, "pushes nobody expected"
    # What the two push workers counted adds up to what the fakes received, and both took part
    sent: dict[str, float] = {}
    timed: dict[str, float] = {}  # pushauth_push_send_seconds observes every send, whatever its outcome
    for name, url in top.metrics.items():
        text = await scrape(top.http, url)
        sent[name] = sum(sample(text, "pushauth_push_sends_total", provider=provider, result="sent")
                         for provider in ("fcm", "apns"))
        timed[name] = sum(sample(text, "pushauth_push_send_seconds_count", provider=provider)
                          for provider in ("fcm", "apns"))
    assert sum(sent.values()) == expected, sent
    assert timed == sent, (timed, sent)  # every send here succeeded
    assert all(sent.values()), f"one push worker did all the work: {sent}"
    assert not top.receiver.errors, top.receiver.errors
    assert sorted(r.headers["webhook-id"] for r in top.receiver.requests) == sorted(ids), \
        "each alert version once per webhook-id"
    assert (why := crashed(top)) is None, why
    for proc in top.procs.values():
        proc.signal(signal.SIGTERM)
    codes = dict(zip(top.procs, await asyncio.gather(*(p.exited(40) for p in top.procs.values())),
                     strict=True))
    for name, proc in top.procs.items():
        log = proc.log_text()
        assert codes[name] == 0, f"{name} exited with {codes[name]}:\n{log[-3000:]}"
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-3000:]}"
    for i in (S1, S2, S3):  # every server process took part
        assert top.procs[f"serve-{i + 1}"].log_text().count('"event":"request"') >= 20
    steps["6 ready, stop"] = time.monotonic() - t
    print("topology:", ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()),
          f"(walk {time.monotonic() - began:.1f} s); pushes sent per worker: {sent}")
