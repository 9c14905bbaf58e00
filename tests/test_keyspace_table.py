"""Every key pushauth leaves in Redis is in the key table (`pushauth.store.keyspace.KEYS`), with the type the
table says, and every field of every hash is in the field table (`HASH_FIELDS`): issue 15, item 2.

One full run on a real Redis, with a prefix of its own: a server (in this process) and every worker as its
own OS process (push in the sandbox against the fake FCM and APNs, alerts to a webhook receiver, expiry);
then a phone enrolled, a further phone approved from it, a third vouched for by the security team (a notice
pushed to the first), an approved sign-in (pushed,
remembered browser, new network), "not me" (an alert, delivered), an access code issued and used, an
authenticator app (offline codes) enrolled, activated and used, a prompt
left to expire (settled by the expiry worker), a console sign-in; then SCAN.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pyotp
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec
from oidc_support import REDIRECT, Browser, auth_params, sign_in_and_approve
from support import (
    ADMIN_TOKEN,
    AdminClient,
    LoginFlow,
    RunningServer,
    add_phone,
    eventually,
    free_port,
    make_settings,
    start_server,
)

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from pushauth.store.keyspace import HASH_FIELDS, KEYS, KeySpec, describe, field_spec
from testkit.fakes import sandbox
from testkit.fakes.apns import FakeAPNs, write_p8
from testkit.fakes.fcm import FakeFCM
from testkit.fakes.keycloak import FakeKeycloak
from testkit.fakes.receivers import HttpReceiver, standard_webhooks_check
from testkit.fakes.sandbox import PrivateHosts, TestCA
from testkit.processes import Child
from testkit.radius_clients import MESSAGE_AUTHENTICATOR, radclient

if (why := sandbox.available()) is not None:
    pytest.skip(why, allow_module_level=True)

PREFIX = "kt-1"  # not the default: nothing may assume "pa"
ALICE, BOB = "alice@nhs.net", "bob@nhs.net"
BOB_TOKEN = "b0b" * 21 + "b"  # an APNs device token: 64 hex digits
SECRET = "whsec_" + base64.b64encode(b"pushauth-keyspace-table-secret!!").decode()
SINK = "soc"
KEY_ID, TEAM_ID, TOPIC = "KEYS123456", "TEAMKEYS12", "org.pushauth.app"
WORKERS = {"push": "push-1", "alerts": "alerts-1", "expiry": "expiry-1", "radius": "radius-1"}
RADIUS_SECRET = "keyspace-table-radius-secret-01"
OIDC_SECRET = "keyspace-table-oidc-secret-0001"
# Rows a short run cannot be expected to leave a key of: retries, dead letters, a sink disabled by a 410, a
# pub/sub channel (never a key), sets and lists emptied by the run itself. Every other row must turn up, so
# the run stays a full one.
NOT_EXPECTED = {"<prefix>:{alerts}:delayed", "<prefix>:{alerts}:dead", "<prefix>:{alerts}:disabled",
                "<prefix>:{push}:delayed", "<prefix>:{push}:dead", "<prefix>:events",
                "<prefix>:{<uid>}:ndevs",  # emptied when the further phone is approved
                "<prefix>:{<uid>}:aout",  # emptied as the alert worker handles each version
                "<prefix>:{<uid>}:acode",  # deleted when used
                "<prefix>:{<uid>}:notices:<did>",  # deleted when the phone reads them (checked below)
                "<prefix>:rl:a:<application id>",  # applications are metered only with a quota
                "<prefix>:rl:r:<RADIUS client name>"}  # one request's bucket expires within milliseconds


@dataclass
class Deployment:
    server: RunningServer
    http: aiohttp.ClientSession
    fcm: FakeFCM
    apns: FakeAPNs
    receiver: HttpReceiver
    workers: dict[str, Child]
    redis_url: str
    radius_port: int
    realm: FakeKeycloak


@pytest.fixture
async def deployment(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Deployment]:
    folder = tmp_path / "push-sandbox"
    ca = TestCA.create(folder)
    hosts = PrivateHosts.create(folder, ca)
    key = ec.generate_private_key(ec.SECP256R1())
    p8 = write_p8(folder / f"AuthKey_{KEY_ID}.p8", key)
    apns_fake = FakeAPNs(ca, topic=TOPIC, key_id=KEY_ID, team_id=TEAM_ID, public_key=key.public_key(),
                         host=hosts.apns_addr)
    async with FakeFCM(ca, host=hosts.fcm_addr) as fcm, apns_fake as apns, \
            HttpReceiver(check=standard_webhooks_check(SECRET)) as receiver, FakeKeycloak() as realm:
        service_account = fcm.write_service_account(folder / "service-account.json")
        push: dict[str, Any] = {
            "fcm": {"enabled": True, "service_account_file": str(service_account)},
            "apns": {"enabled": True, "key_file": str(p8), "key_id": KEY_ID, "team_id": TEAM_ID,
                     "topic": TOPIC, "sandbox": True}}
        sink = {"name": SINK, "kind": "webhook", "url": receiver.url + "/hook", "secret": SECRET,
                "timeout_s": 2.0}
        config = tmp_path / "workers.toml"
        radius_secret = tmp_path / "radius.secret"
        radius_secret.write_text(RADIUS_SECRET + "\n")
        radius_port = free_port()
        radius = {"listen": ["127.0.0.1"], "port": radius_port,
                  "clients": [{"name": "vpn", "address": "127.0.0.1/32", "secret_file": str(radius_secret),
                               "application": "webmail", "mode": "challenge", "primary": "none"}]}
        oidc = {"enabled": True, "code_ttl_s": 600,
                "clients": [{"client_id": "wiki", "name": "Staff wiki", "application": "webmail",
                             "secret_sha256": [sha256_hex(OIDC_SECRET)], "redirect_uris": [REDIRECT],
                             "first_factor": "passwordless", "ciba": "poll"}],
                "keycloak": {"enabled": True, "realms": [{"issuer": realm.issuer, "application": "webmail"}]}}
        settings = make_settings(redis_url, free_port(), store={"prefix": PREFIX}, push=push,
                                 alerts={"sinks": [sink], "sweep_interval_s": 1.0}, radius=radius, oidc=oidc)
        config.write_text(f"""
[server]
base_url = "{settings.server.base_url}"
[store]
redis_url = "{redis_url}"
prefix = "{PREFIX}"
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
[alerts]
sweep_interval_s = 1.0
[[alerts.sinks]]
name = "{SINK}"
kind = "webhook"
url = "{receiver.url}/hook"
secret = "{SECRET}"
timeout_s = 2.0
[logging]
format = "json"
[keys]
ephemeral = true
# as the server's (support.QUIET_DETECTION): Alice signs in more often than a person would
[detection]
push_bombing_max = 1000
[containment]
suspend_on_not_me = false
lockout_after_failures = 0
[[applications]]
id = "webmail"
name = "NHSmail webmail"
api_key_sha256 = ["{sha256_hex('radius-process-has-no-use-for-it')}"]
[radius]
listen = ["127.0.0.1"]
port = {radius_port}
[[radius.clients]]
name = "vpn"
address = "127.0.0.1/32"
secret_file = "{radius_secret}"
application = "webmail"
mode = "challenge"
primary = "none"
""")
        workers = {name: Child.python(["-m", f"workers.{kind}", "-c", str(config), "--name", name],
                                      tmp_path / f"{name}.log", hosts=hosts if kind == "push" else None)
                   for kind, name in WORKERS.items()}
        server = await start_server(settings, keyring)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            yield Deployment(server, http, fcm, apns, receiver, workers, redis_url, radius_port, realm)
        finally:
            await http.close()
            await server.close()
            for worker in workers.values():
                if worker.returncode is None:
                    worker.kill9()


async def oidc_code(browser: Browser, phone: Phone) -> str:
    """Alice signs in to the relying party "wiki" (passwordless) and her phone approves: the code."""
    location = await sign_in_and_approve(browser, "/oidc/authorize?" + urlencode(auth_params()), ALICE, phone)
    return parse_qs(urlsplit(location).query)["code"][0]


async def all_keys(redis_url: str) -> dict[str, tuple[str, list[str]]]:
    """Every key: its type and, for a hash, its field names."""
    out = {}
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
        async for key in client.scan_iter(count=1000):
            kind = str(await client.type(key))
            fields = [str(f) for f in await client.hkeys(key)] if kind == "hash" else []
            out[str(key)] = (kind, fields)
    return out


@pytest.mark.timeout(90)
async def test_every_key_a_full_run_writes_is_in_the_table(deployment: Deployment) -> None:
    d = deployment
    began = time.monotonic()
    login, admin = LoginFlow(d.http, d.server.url), AdminClient(d.http, d.server.url)

    # Bob's phone (APNs) gets a prompt he never answers: only the expiry worker settles it.
    await Phone.enroll(await login.enroll_uri(BOB), session=d.http, platform="ios", push_provider="apns",
                       push_token=BOB_TOKEN)
    ignored = await login.create(BOB, ttl_s=10)
    expires = time.monotonic() + 10

    # Alice: an Android phone (FCM), then a further phone her login flow adds, approved on the first one
    # (an alert: a second phone; a notice to the first phone, pushed).
    android = await Phone.enroll(await login.enroll_uri(ALICE), session=d.http, platform="android",
                                 push_provider="fcm", push_token="fcm-alice")
    second = await add_phone(login, android, ALICE, d.http)
    # and a third the security team vouches for: active at once, and the phones that did not approve it
    # are told by a push (a notice)
    await Phone.enroll(await admin.enroll_uri(ALICE), session=d.http)

    # "Not me": the alert is raised to critical and delivered (and remembered browsers are
    # forgotten: so before the approval that remembers one).
    denied = await login.create(ALICE)
    assert await second.deny(denied["id"], reason="not_me") == "denied"

    # An approved sign-in, pushed, from a network and a browser to remember.
    created = await login.create(ALICE, context={"ip": "198.51.100.7", "location": "Leeds, GB"},
                                 browser_id="browser-of-alice-0001")

    async def pushed(token: str, cid: str) -> bool | None:
        return True if any(r.data.get("challenge_id") == cid for r in d.fcm.sends_to(token)) else None

    await eventually(lambda: pushed("fcm-alice", created["id"]), 20, "the prompt pushed to FCM")
    assert await android.approve(created["id"], number=created["number"]) == "approved"
    seen = await login.status(created["id"])
    assert (seen["status"], "remember_token" in seen) == ("approved", True), seen

    # An access code issued by the security team and used in a login flow.
    status, issued = await admin.call("POST", f"/v1/users/{ALICE}/access-codes")
    assert status == 201, issued
    status, verified = await login.call("POST", "/v1/access-codes/verify", {"user": ALICE,
                                                                             "code": issued["code"]})
    assert (status, verified.get("valid")) == (200, True), verified

    # An authenticator app enrolled for Alice (offline codes), activated with one code and used with the next.
    status, method = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods", {"name": "app"})
    assert status == 201, method
    otp_app = pyotp.parse_uri(method["uri"])
    assert isinstance(otp_app, pyotp.TOTP)
    status, _ = await admin.call("POST", f"/v1/users/{ALICE}/otp-methods/{method['id']}/activate",
                                 {"code": otp_app.now()})
    assert status == 200
    status, verified = await login.call("POST", "/v1/codes/verify",
                                        {"user": ALICE, "code": otp_app.at(int(time.time()) + 30)})
    assert (status, verified.get("valid")) == (200, True), verified

    # OpenID Connect: one sign-in exchanged for tokens (an access token, and the used code kept to catch a
    # replay), one left at its code, one left at the sign-in page.
    basic = base64.b64encode(f"wiki:{OIDC_SECRET}".encode()).decode()
    for exchange in (True, False):
        browser = Browser(d.server.url)
        try:
            code = await oidc_code(browser, android)
            if exchange:
                form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
                async with d.http.post(d.server.url + "/oidc/token", data=form,
                                       headers={"Authorization": f"Basic {basic}"}) as resp:
                    assert resp.status == 200, await resp.text()
        finally:
            await browser.close()
    browser = Browser(d.server.url)
    try:
        status, _, _ = await browser.authorize(**auth_params())
        assert status == 200
    finally:
        await browser.close()

    # A backchannel (CIBA) request left waiting for Alice's phone.
    async with d.http.post(d.server.url + "/oidc/bc-authorize", data={"scope": "openid", "login_hint": ALICE},
                           headers={"Authorization": f"Basic {basic}"}) as resp:
        assert resp.status == 200, await resp.text()

    # Keycloak's CIBA through its authentication channel, left waiting for Alice's phone.
    token, _ = d.realm.bearer("alice-keycloak-id")
    status, answer = await d.realm.request_authentication(
        d.server.url + "/keycloak/authentication-channel", token, d.realm.channel_request(ALICE))
    assert status == 201, answer

    # A RADIUS sign-in through `pushauth radius` (python -m workers.radius) in challenge mode, left at the
    # Access-Challenge: its State waits in Redis, and the client's rate bucket counted it.
    # (radclient's own retransmits cover the process still starting: one request, one prompt.)
    reply = await radclient(d.radius_port, RADIUS_SECRET, {"User-Name": ALICE, "User-Password": "-",
                                                          "Message-Authenticator": MESSAGE_AUTHENTICATOR},
                            retries=10, timeout_s=1)
    assert reply.code == "Access-Challenge", reply.output

    # A console sign-in (the session lives in Redis).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as console, \
            console.post(d.server.url + "/console/login",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 204, await resp.text()

    # The workers' work: the alert at the webhook, the notice pushed to the first phone (which
    # reads it), Bob's prompt settled as ignored by the expiry worker, every worker's heartbeat.
    [alert] = await admin.alerts(user=ALICE)
    assert alert["severity"] == "critical", alert
    want = {f"msg_{alert['id']}_v{alert['version']}_{SINK}"}  # the alert as it stands now

    async def delivered() -> bool | None:
        return True if want <= {r.headers.get("webhook-id") for r in d.receiver.requests} else None

    try:
        await eventually(delivered, 20, f"webhook delivery {sorted(want)}")
    except AssertionError:
        got = [r.headers.get("webhook-id") for r in d.receiver.requests]
        raise AssertionError(f"{sorted(want)} not delivered; got {got}; alert worker log:\n"
                             f"{d.workers['alerts-1'].log_text()[-3000:]}") from None

    async def noticed() -> bool | None:
        return True if any(r.data.get("type") == "notice" for r in d.fcm.sends_to("fcm-alice")) else None

    await eventually(noticed, 20, "the notice pushed to the first phone")
    assert {n["type"] for n in await android.notices()} == {"device_added"}
    assert d.apns.seen(BOB_TOKEN), "no push to Bob's iPhone"
    await asyncio.sleep(max(0.0, expires - time.monotonic()))

    async def settled() -> bool | None:
        status, body = await admin.call("GET", f"/v1/users/{BOB}")
        assert status == 200, body
        return True if [c["status"] for c in body.get("recent_challenges", [])] == ["expired"] and \
            await _ignored(d.redis_url, ignored["id"]) else None

    await eventually(settled, 15, "Bob's prompt settled by the expiry worker")

    async def all_alive() -> bool | None:
        async with d.http.get(d.server.url + "/readyz") as resp:
            body = await resp.json()
        return True if body.get("workers") == {k: [v] for k, v in WORKERS.items()} else None

    await eventually(all_alive, 10, "every worker's heartbeat")
    for name, worker in d.workers.items():
        assert worker.returncode is None, f"{name} exited:\n{worker.log_text()[-3000:]}"
    assert not d.receiver.errors, d.receiver.errors

    # What is left waiting: a prompt, and an enrollment code nobody used.
    await login.create(ALICE)
    await login.enroll_uri("carol@nhs.net")
    # ... and a console sign-in with Bob's phone (his console account, set by an owner) left waiting.
    status, body = await admin.call("PUT", f"/v1/console-accounts/{BOB}", {"role": "viewer"})
    assert status == 200, body
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as console, \
            console.post(d.server.url + "/console/login/push", json={"user": BOB}) as resp:
        assert resp.status == 201, await resp.text()

    # -- every key, its type, its fields -------------------------------------------------------------------
    keys = await all_keys(d.redis_url)
    problems = []
    rows: set[str] = set()
    for key, (kind, fields) in sorted(keys.items()):
        spec: KeySpec | None = describe(key)
        if spec is None:
            problems.append(f"{key} ({kind}): in no row of pushauth.store.keyspace.KEYS")
            continue
        rows.add(spec.pattern)
        if not key.startswith(PREFIX + ":"):
            problems.append(f"{key}: not under the configured prefix {PREFIX!r}")
        if kind != spec.type:
            problems.append(f"{key}: a {kind}, the table says {spec.type} ({spec.pattern})")
        if spec.fields is not None:
            problems.extend(f"{key}: field {f!r} is not in HASH_FIELDS[{spec.fields!r}]" for f in fields
                            if field_spec(spec.fields, f) is None)
    assert not problems, "\n".join(problems)
    missing = {spec.pattern for spec in KEYS} - rows - NOT_EXPECTED
    assert not missing, f"the run left no key of these rows (is it still a full run?): {sorted(missing)}"
    for worker in d.workers.values():
        assert await worker.stop_async() == 0, worker.log_text()[-3000:]
    print(f"keyspace table: {len(keys)} keys in {len(rows)} rows, {len(HASH_FIELDS)} hash kinds; "
          f"{time.monotonic() - began:.1f} s")


async def _ignored(redis_url: str, cid: str) -> bool:
    """Whether the expiry worker settled the challenge as an ignored prompt."""
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as client:
        async for key in client.scan_iter(match=f"{PREFIX}:*:ch:{cid}"):
            return await client.hget(key, "ign") == "1"
    return False
