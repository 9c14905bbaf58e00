"""Rate limits per client address and per application, and the auth-failure block
(pushauth/ratelimit/limiter.py,
pushauth/web/limits.py), against real servers on the shared real Redis.

Quotas here are tiny so that a handful of requests reaches them, and the clock is frozen (`clock.freeze`)
so that windows and Retry-After values are exact; time moves by `clock.advance`, never by sleeping. A
second client address is a second loopback address (a client bound to 127.0.0.2), so nothing but the
TCP peer tells the server who is asking. The defaults are never changed for these tests' sake; each test
says the quotas it needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from support import (
    ADMIN_TOKEN,
    API_KEY,
    OTHER_API_KEY,
    AdminClient,
    Clock,
    LoginFlow,
    RunningServer,
    assert_error,
    free_port,
    make_settings,
    start_server,
)

from pushauth.config import Settings, from_mapping
from pushauth.crypto import device_auth, jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.errors import ConfigError
from pushauth.netaddr import TrustedProxies
from pushauth.phone import Phone, ServerRejected
from pushauth.ratelimit.limiter import address_bucket
from testkit.redis_server import RedisServer

USER = "alice@nhs.net"
BAD_KEY = "not-an-api-key-of-this-server-but-long-enough-000"
JWKS = "/.well-known/jwks.json"
Serve = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def serve(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[Serve]:
    """Start servers on the shared Redis: `await serve(rate_limits={...}, server={...})` or
    `await serve(settings)`; all are closed at the end."""
    running: list[RunningServer] = []

    async def start(settings: Settings | None = None, **sections: Any) -> RunningServer:
        server = await start_server(settings or make_settings(redis_url, free_port(), **sections), keyring)
        running.append(server)
        return server

    yield start
    for server in running:
        await server.close()


@pytest.fixture
async def elsewhere() -> AsyncIterator[aiohttp.ClientSession]:
    """A client on another address of its own (127.0.0.2)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as http:
        yield http


async def call(http: aiohttp.ClientSession, url: str, method: str = "GET", path: str = JWKS, *,
               token: str | None = None, headers: dict[str, str] | None = None,
               json: Any = None) -> tuple[int, dict[str, str], Any]:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url + path, headers=headers, json=json) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def refused(answer: tuple[int, dict[str, str], Any]) -> int:
    """The contract's 429: `rate_limited` in the `{error, message}` shape with an integer Retry-After >= 1,
    which it returns."""
    status, headers, body = answer
    assert_error(status, body, 429, "rate_limited")
    retry_after = headers.get("Retry-After", "")
    assert retry_after.isdigit(), headers
    assert int(retry_after) >= 1, headers
    return int(retry_after)


def limited_total(scope: str) -> float:
    return REGISTRY.get_sample_value("pushauth_rate_limited_total", {"scope": scope}) or 0.0


def signed_get(signer: Phone, path: str, jti: str, *, iat: int, kid: str | None = None) -> dict[str, str]:
    """Headers of a device GET signed with `signer`'s key (under another phone's `kid`, if given)."""
    token = device_auth.sign_request(signer._key, method="GET", path_qs=path, body=b"", jti=jti, iat=iat,
                                     kid=kid or signer.device_id)
    return {"Authorization": f"PushAuth {token}"}


async def statuses(n: int, http: aiohttp.ClientSession, url: str, *args: Any, **kwargs: Any) -> list[int]:
    return [(await call(http, url, *args, **kwargs))[0] for _ in range(n)]


# -- per client address -----------------------------------------------------------------------------------


async def test_a_flood_from_one_address_is_refused_then_let_through_again(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 5, "window_s": 60})
    before = limited_total("ip")
    assert await statuses(5, http, server.url) == [200] * 5
    with capture_logs() as logs:
        answer = await call(http, server.url)
    # GCRA: the 6th would conform one emission interval (60 s / 5) after the burst
    assert refused(answer) == 12
    assert "too many requests from this address" in answer[2]["message"]
    assert limited_total("ip") == before + 1
    [line] = [e for e in logs if e["event"] == "rate_limited"]
    assert (line["scope"], line["ip"], line["retry_after_s"], line["log_level"]) == (
        "ip", "127.0.0.1", 12, "warning")
    # Refused requests are not counted: a flood that goes on does not push the end further away.
    for _ in range(20):
        assert refused(await call(http, server.url)) == 12
    # No boundary where twice the quota passes: one interval later, exactly one more request.
    clock.advance(12)
    assert await statuses(2, http, server.url) == [200, 429]
    # A whole window later, the whole quota again.
    clock.advance(60)
    assert await statuses(6, http, server.url) == [200] * 5 + [429]


async def test_addresses_are_counted_apart(serve: Serve, http: aiohttp.ClientSession,
                                           elsewhere: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 3})
    assert await statuses(4, http, server.url) == [200, 200, 200, 429]
    assert await statuses(4, elsewhere, server.url) == [200, 200, 200, 429]


async def test_application_calls_are_not_limited_per_address(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    """An identity provider sends a whole organisation's sign-ins from a few addresses."""
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 3, "application_requests": 1000})
    assert await statuses(3, http, server.url) == [200] * 3
    refused(await call(http, server.url))  # the address is spent ...
    # ... and its application calls are not refused for it
    assert set(await statuses(20, http, server.url, "GET", "/v1/challenges/x", token=API_KEY)) == {404}


# -- per application --------------------------------------------------------------------------------------


async def test_one_applications_flood_limits_neither_the_other_nor_the_phones(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"application_requests": 5})
    webmail, other = LoginFlow(http, server.url), LoginFlow(http, server.url, api_key=OTHER_API_KEY)
    phone = await Phone.enroll(await webmail.enroll_uri(USER), session=http)
    clock.advance(60)  # a fresh window: the enrollment above spent one of webmail's five
    before = limited_total("application")
    for _ in range(5):
        await webmail.create(USER)
    with capture_logs() as logs:
        answer = await call(http, server.url, "POST", "/v1/challenges", token=API_KEY, json={"user": USER})
    refused(answer)
    assert "too many requests for this application" in answer[2]["message"]
    refused(await call(http, server.url, "GET", "/v1/challenges/anything", token=API_KEY))
    assert limited_total("application") == before + 2
    [line] = [e for e in logs if e["event"] == "rate_limited"]
    assert (line["scope"], line["app"]) == ("application", "webmail")
    assert API_KEY not in repr(logs)
    # The other application and the phone are untouched by webmail's flood.
    created = await other.create(USER)
    assert await phone.approve(await phone.fetch(created["id"]), created["number"]) == "approved"
    assert (await other.status(created["id"]))["status"] == "approved"


async def test_an_applications_own_rate_limit_replaces_the_default(
        serve: Serve, redis_url: str, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    base = make_settings(redis_url, free_port(), rate_limits={"application_requests": 10})
    quotas = {"webmail": 0, "other": 3}  # webmail: not limited at all
    apps = [msgspec.structs.replace(a, rate_limit=quotas[a.id]) for a in base.applications]
    server = await serve(msgspec.structs.replace(base, applications=apps))
    assert await statuses(4, http, server.url, "GET", "/v1/challenges/x", token=OTHER_API_KEY) == [
        404, 404, 404, 429]
    assert set(await statuses(30, http, server.url, "GET", "/v1/challenges/x", token=API_KEY)) == {404}


# -- who the client is ------------------------------------------------------------------------------------


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
        serve: Serve, http: aiohttp.ClientSession, elsewhere: aiohttp.ClientSession, clock: Clock) -> None:
    """Behind the proxy (127.0.0.1) each forwarded client has its own quota; anyone else's
    X-Forwarded-For is ignored, so rotating it gains nothing."""
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 3}, server={"trusted_proxies": ["127.0.0.1/32"]})

    def via_proxy(chain: str) -> dict[str, str]:
        return {"X-Forwarded-For": chain}

    assert await statuses(3, http, server.url, headers=via_proxy("203.0.113.5")) == [200] * 3
    refused(await call(http, server.url, headers=via_proxy("203.0.113.5")))
    # What the client wrote to the left of the proxy's entry proves nothing: still 203.0.113.5.
    refused(await call(http, server.url, headers=via_proxy("198.51.100.1, 203.0.113.5")))
    # Another client behind the same proxy.
    assert (await call(http, server.url, headers=via_proxy("198.51.100.1, 203.0.113.6")))[0] == 200
    # 127.0.0.2 is no proxy of ours: its header is ignored, it is counted as itself.
    spoofed = [(await call(elsewhere, server.url, headers=via_proxy(f"192.0.2.{i}")))[0] for i in range(4)]
    assert spoofed == [200, 200, 200, 429]


async def test_without_trusted_proxies_forwarded_for_is_ignored(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 3})
    spoofed = [(await call(http, server.url, headers={"X-Forwarded-For": f"192.0.2.{i}"}))[0]
               for i in range(4)]
    assert spoofed == [200, 200, 200, 429]


async def test_the_phones_address_in_evidence_is_the_forwarded_one(serve: Serve) -> None:
    """client_ip() is what the phone's answer records, through a trusted proxy and past a spoofer."""
    server = await serve(server={"trusted_proxies": ["127.0.0.1/32"]})
    for headers, connector, expected in (
            ({"X-Forwarded-For": "203.0.113.77"}, aiohttp.TCPConnector(), "203.0.113.77"),
            ({"X-Forwarded-For": "203.0.113.78"},
             aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)), "127.0.0.2")):
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            login, admin = LoginFlow(http, server.url), AdminClient(http, server.url)
            user = f"phone-at-{expected}@nhs.net"
            phone = await Phone.enroll(await login.enroll_uri(user), session=http)
            created = await login.create(user)
            assert await phone.deny(created["id"], reason="mistake") == "denied"
            [alert] = await admin.alerts(user=user)
            assert alert["evidence"]["events"][-1]["phone_ip"] == expected


@pytest.mark.parametrize(("trusted", "peer", "forwarded", "client"), [
    ([], "198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # nobody trusted: the header is ignored
    (["10.0.0.0/8"], "198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # peer not trusted
    (["10.0.0.0/8"], "10.0.0.2", [], "10.0.0.2"),  # a trusted peer that forwards nothing
    (["10.0.0.0/8"], "10.0.0.2", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
    (["10.0.0.0/8"], "10.0.0.2", ["203.0.113.9, 10.0.0.7"], "203.0.113.9"),  # two proxies
    (["10.0.0.0/8"], "10.0.0.2", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),  # headers in order
    (["10.0.0.0/8"], "10.0.0.2", ["10.1.1.1, 10.0.0.7"], "10.1.1.1"),  # all trusted: the left-most
    (["10.0.0.0/8"], "10.0.0.2", ["203.0.113.9:51234"], "203.0.113.9"),  # with a port
    (["10.0.0.0/8"], "10.0.0.2", ["[2001:db8::9]:443"], "2001:db8::9"),
    (["10.0.0.0/8"], "10.0.0.2", ["2001:DB8::9"], "2001:db8::9"),
    (["10.0.0.0/8"], "10.0.0.2", ["203.0.113.9, unknown"], "10.0.0.2"),  # unreadable: the proxy stands
    (["10.0.0.0/8"], "10.0.0.2", ["garbage, 10.0.0.7"], "10.0.0.7"),
    (["10.0.0.0/8"], "::ffff:10.0.0.2", ["203.0.113.9"], "203.0.113.9"),  # a dual-stack socket
    (["fd00::/8"], "fd00::1", ["::ffff:203.0.113.9"], "203.0.113.9"),
    (["10.0.0.0/8"], None, ["203.0.113.9"], None),  # no TCP peer
])
def test_client_address(trusted: list[str], peer: str | None, forwarded: list[str],
                        client: str | None) -> None:
    assert TrustedProxies(trusted).client(peer, forwarded) == client


def test_address_buckets() -> None:
    """IPv6 is counted per /64, so one host cannot rotate through its own addresses."""
    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("192.0.2.7") == address_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_bucket(None) == address_bucket("") == "unknown"


# -- failed authentications -------------------------------------------------------------------------------


async def test_failed_authentications_block_the_address_for_the_rest_of_the_window(
        serve: Serve, http: aiohttp.ClientSession, elsewhere: aiohttp.ClientSession, clock: Clock) -> None:
    """Credential stuffing from 127.0.0.2: after 5 bad keys everything it sends is refused, its admin
    token included, until the window the first failure opened closes; 127.0.0.1 goes on working."""
    clock.freeze()
    server = await serve(rate_limits={"auth_failures": 5, "auth_failures_window_s": 300})
    login = LoginFlow(http, server.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=elsewhere)  # a phone at 127.0.0.2
    before = limited_total("auth_failures")
    with capture_logs() as logs:
        for i in range(5):
            status, _, body = await call(elsewhere, server.url, "POST", "/v1/challenges",
                                         token=f"{BAD_KEY}{i}", json={"user": USER})
            assert_error(status, body, 401, "unauthorized")
            clock.advance(10)
        answer = await call(elsewhere, server.url, "POST", "/v1/challenges", token=BAD_KEY,
                            json={"user": USER})
    assert refused(answer) == 300 - 50
    assert "too many failed authentications" in answer[2]["message"]
    for path, token in ((JWKS, None), ("/v1/alerts", ADMIN_TOKEN), ("/v1/alerts", BAD_KEY)):
        assert refused(await call(elsewhere, server.url, "GET", path, token=token)) == 250
    with pytest.raises(ServerRejected) as rejected:
        await phone.pending()
    assert rejected.value.status == 429
    assert limited_total("auth_failures") == before + 5
    blocked = [e for e in logs if e["event"] == "auth_failures_blocked"]
    assert [(e["ip"], e["failures"]) for e in blocked] == [("127.0.0.2", 5)]
    assert {e["scope"] for e in logs if e["event"] == "rate_limited"} == {"auth_failures"}
    assert BAD_KEY not in repr(logs)
    # Another address is not affected, and the stuffer's address is not blocked for calls made with a
    # valid API key (an identity provider with one misconfigured node must not lose every sign-in).
    assert (await call(http, server.url, "GET", "/v1/alerts", token=ADMIN_TOKEN))[0] == 200
    assert (await call(elsewhere, server.url, "POST", "/v1/challenges", token=API_KEY,
                       json={"user": USER, "ttl_s": 600}))[0] == 201
    clock.advance(249)
    refused(await call(elsewhere, server.url))
    clock.advance(1)
    assert (await call(elsewhere, server.url, "GET", "/v1/alerts", token=ADMIN_TOKEN))[0] == 200
    assert len(await phone.pending()) == 1


async def test_bad_signatures_are_refused_before_they_are_verified(
        serve: Serve, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await serve(rate_limits={"auth_failures": 3})
    login = LoginFlow(http, server.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    impostor = await Phone.enroll(await login.enroll_uri("mallory@nhs.net"), session=http)
    verified = 0
    real_verify = jws.verify

    def counting_verify(*args: Any, **kwargs: Any) -> Any:
        nonlocal verified
        verified += 1
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(jws, "verify", counting_verify)
    path = "/v1/device/challenges"
    answers = []
    for i in range(10):  # signed by another phone's key under this phone's kid
        forged = signed_get(impostor, path, f"forged-request-{i:04d}", iat=int(time.time()),
                            kid=phone.device_id)
        answers.append(await call(http, server.url, "GET", path, headers=forged))
    assert [a[2]["error"] for a in answers] == ["bad_signature"] * 3 + ["rate_limited"] * 7
    assert verified == 3


async def test_only_guesses_count_as_failed_authentications(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    """A phone with a wrong clock, a revoked phone still polling, calls without credentials: none is a guess
    at a credential, so none blocks the address (behind one NAT, a few such phones must not block every
    phone of a hospital). Two wrong API keys then do."""
    clock.freeze()
    server = await serve(rate_limits={"auth_failures": 2})
    login = LoginFlow(http, server.url)
    slow = await Phone.enroll(await login.enroll_uri(USER), session=http)
    gone = await Phone.enroll(await login.enroll_uri("bob@nhs.net"), session=http)
    await gone.unenroll()
    path = "/v1/device/challenges"
    for i in range(5):
        stale = signed_get(slow, path, f"stale-clock-{i:06d}", iat=clock.now() - 3600)
        status, _, body = await call(http, server.url, "GET", path, headers=stale)
        assert_error(status, body, 401, "stale_request")
        with pytest.raises(ServerRejected) as revoked:
            await gone.pending()
        assert (revoked.value.status, revoked.value.error) == (401, "device_revoked")
        status, _, body = await call(http, server.url, "GET", "/v1/alerts")
        assert_error(status, body, 401, "unauthorized")
    assert await slow.pending() == []
    for _ in range(2):
        assert (await call(http, server.url, "GET", "/v1/alerts", token=BAD_KEY))[0] == 401
    refused(await call(http, server.url, "GET", "/v1/alerts", token=ADMIN_TOKEN))


async def test_a_bad_admin_token_at_the_console_sign_in_counts(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    """The console answers a bad token with a page of its own (no exception), which counts too."""
    clock.freeze()
    server = await serve(rate_limits={"auth_failures": 2})
    headers = {"Authorization": f"Bearer {BAD_KEY}", "Sec-Fetch-Site": "same-origin"}
    for _ in range(2):
        async with http.post(server.url + "/console/login", headers=headers) as resp:
            assert resp.status == 401
    async with http.post(server.url + "/console/login", headers=headers) as resp:
        # refused: a console page answers a page in words (web/console/__init__.py), not the JSON
        assert (resp.status, resp.content_type) == (429, "text/html")
        assert int(resp.headers["Retry-After"]) >= 1
    refused(await call(http, server.url, "GET", "/v1/alerts"))  # the address is blocked for the API too


# -- what is never limited, what a refusal leaves, where the counts live ----------------------------------


async def test_health_checks_and_metrics_are_never_limited(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 2, "auth_failures": 1})
    assert (await call(http, server.url, "GET", "/v1/alerts", token=BAD_KEY))[0] == 401
    refused(await call(http, server.url))  # the address is blocked ...
    for path in ("/healthz", "/readyz", "/metrics"):  # ... and a balancer's checks still pass
        for _ in range(30):
            async with http.get(server.url + path) as resp:
                assert resp.status == 200, path


async def test_a_refused_challenge_creation_creates_nothing(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"application_requests": 3})
    login, admin = LoginFlow(http, server.url), AdminClient(http, server.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    clock.advance(60)
    created = [(await login.create(USER))["id"] for _ in range(3)]
    refused(await call(http, server.url, "POST", "/v1/challenges", token=API_KEY, json={"user": USER}))
    assert sorted(c["id"] for c in (await admin.user(USER))["recent_challenges"]) == sorted(created)
    assert sorted(c.id for c in await phone.pending()) == sorted(created)


async def test_a_refused_phone_answer_leaves_the_challenge_pending(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 10})
    login = LoginFlow(http, server.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)  # 2 of the 10
    created = await login.create(USER, ttl_s=600)
    challenge = await phone.fetch(created["id"])  # 3
    assert await statuses(8, http, server.url) == [200] * 7 + [429]
    with pytest.raises(ServerRejected) as rejected:
        await phone.approve(challenge, created["number"])
    assert (rejected.value.status, rejected.value.error) == (429, "rate_limited")
    assert (await login.status(created["id"]))["status"] == "pending"
    clock.advance(60)
    assert await phone.approve(challenge, created["number"]) == "approved"
    assert "assertion" in await login.status(created["id"])


async def test_a_refused_registration_does_not_spend_the_enrollment_code(
        serve: Serve, http: aiohttp.ClientSession, clock: Clock) -> None:
    """A refused request is answered before it is read: the code in it is not even looked at."""
    clock.freeze()
    server = await serve(rate_limits={"ip_requests": 3})
    uri = await LoginFlow(http, server.url).enroll_uri(USER)
    assert await statuses(2, http, server.url) == [200, 200]
    with pytest.raises(ServerRejected) as rejected:  # its key check takes the last request, then 429
        await Phone.enroll(uri, session=http)
    assert rejected.value.status == 429
    clock.advance(60)
    assert (await Phone.enroll(uri, session=http)).user == USER


async def test_two_instances_share_the_counts(serve: Serve, http: aiohttp.ClientSession,
                                              clock: Clock) -> None:
    clock.freeze()
    limits = {"ip_requests": 6, "application_requests": 4}
    a, b = await serve(rate_limits=limits), await serve(rate_limits=limits)
    assert await statuses(3, http, a.url) + await statuses(3, http, b.url) == [200] * 6
    refused(await call(http, a.url))
    refused(await call(http, b.url))
    app_calls = [(await call(http, server.url, "GET", "/v1/challenges/x", token=API_KEY))[0]
                 for server in (a, b, a, b, a, b)]
    assert app_calls == [404] * 4 + [429] * 2


async def test_the_check_is_one_round_trip(serve: Serve, redis_url: str, http: aiohttp.ClientSession) -> None:
    """GET /.well-known/jwks.json needs no Redis of its own: what it costs is the limit check, one script
    call (EVALSHA, and the commands it runs inside Redis); with every limit off it costs nothing."""
    on = await serve()
    off = await serve(rate_limits={"ip_requests": 0, "application_requests": 0, "auth_failures": 0})
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:

        async def commands_for(server: RunningServer) -> dict[str, int]:
            before = await r.info("commandstats")
            await call(http, server.url)
            after = await r.info("commandstats")
            calls = {k.removeprefix("cmdstat_"): v["calls"] - before.get(k, {"calls": 0})["calls"]
                     for k, v in after.items() if k != "cmdstat_info"}
            return {k: n for k, n in calls.items() if n}

        await call(http, on.url)  # loads the script (EVALSHA, NOSCRIPT, EVAL) once
        assert await commands_for(on) == {"evalsha": 1, "hmget": 1, "hset": 1, "expire": 1}
        assert await commands_for(off) == {}


async def test_redis_down_fails_closed(private_redis: RedisServer, keyring: KeyRingHolder,
                                       http: aiohttp.ClientSession) -> None:
    """A check that cannot be made refuses the request (503), even one that needs no Redis itself."""
    server = await start_server(make_settings(private_redis.url, free_port()), keyring)
    try:
        assert (await call(http, server.url))[0] == 200
        private_redis.stop()
        status, headers, body = await call(http, server.url)
        assert_error(status, body, 503, "unavailable")
        assert headers["Retry-After"] == "2"
        async with http.get(server.url + "/healthz") as resp:  # not limited, so no Redis: still alive
            assert resp.status == 200
    finally:
        await server.close()


async def test_the_embedded_store_runs_the_same_limits(keyring: KeyRingHolder, http: aiohttp.ClientSession,
                                                       clock: Clock) -> None:
    clock.freeze()
    server = await start_server(make_settings("", free_port(), rate_limits={"ip_requests": 3}), keyring)
    try:
        assert await statuses(4, http, server.url) == [200, 200, 200, 429]
    finally:
        await server.close()


# -- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "values", "named"), [
    ("rate_limits", {"window_s": 0}, "window_s"),
    ("rate_limits", {"ip_requests": -1}, "ip_requests"),
    ("rate_limits", {"application_requests": 10_000_001}, "application_requests"),
    ("rate_limits", {"auth_failures": -1}, "auth_failures"),
    ("rate_limits", {"auth_failures_window_s": 5}, "auth_failures_window_s"),
    ("server", {"trusted_proxies": ["10.0.0.1/8"]}, "host bits set"),
    ("server", {"trusted_proxies": ["proxy.internal"]}, "trusted_proxies"),
])
def test_settings_out_of_range_are_refused(section: str, values: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as error:
        from_mapping({section: values})
    assert section in str(error.value)


def test_an_applications_rate_limit_is_validated() -> None:
    settings = make_settings("", 8080)
    apps = [msgspec.to_builtins(a) for a in settings.applications]
    apps[0]["rate_limit"] = -5
    with pytest.raises(ConfigError, match=r"applications\[0\].*rate_limit must be 0"):
        from_mapping({"applications": apps})


# -- the batched path at its configured rate (issue 22) ----------------------------------------------------

FLOOD_QUOTA = 4000  # per 60 s: leases of up to 20 requests (1/200 of the quota), so batching is exercised


async def _admitted(n: int, servers: list[RunningServer], http: aiohttp.ClientSession, scope: str) -> int:
    """Send `n` requests, 50 at a time, spread over `servers`; how many were let through (the rest must be
    429s)."""
    path, token = (JWKS, None) if scope == "ip" else ("/v1/challenges/x", API_KEY)
    ok = 200 if scope == "ip" else 404
    passed = 0
    for start in range(0, n, 50):
        answers = await asyncio.gather(*(call(http, servers[i % len(servers)].url, "GET", path, token=token)
                                         for i in range(start, min(n, start + 50))))
        codes = [status for status, _, _ in answers]
        assert set(codes) <= {ok, 429}, codes
        passed += codes.count(ok)
    return passed


@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("scope", ["ip", "application"])
async def test_a_flood_is_refused_at_the_configured_rate(serve: Serve, http: aiohttp.ClientSession,
                                                         clock: Clock, scope: str, instances: int) -> None:
    """The burst (the whole quota) and then the sustained rate (quota per window) within 5 %, through the
    leased path, on one instance and on two sharing the bucket."""
    clock.freeze()
    limits = {"ip_requests": FLOOD_QUOTA, "application_requests": FLOOD_QUOTA, "window_s": 60}
    servers = [await serve(rate_limits=limits) for _ in range(instances)]
    burst = await _admitted(FLOOD_QUOTA + 400, servers, http, scope)
    assert FLOOD_QUOTA * 0.95 <= burst <= FLOOD_QUOTA, burst
    # sustained: 10 s of flood, one second at a time, at ~3x the rate the quota allows (66.7/s)
    sustained = 0
    for _ in range(10):
        clock.advance(1)
        sustained += await _admitted(200, servers, http, scope)
    expected = FLOOD_QUOTA / 60 * 10
    print(f"\n{scope} x{instances}: burst {burst} of {FLOOD_QUOTA}, "
          f"then {sustained} in 10 s of {expected:.0f}")
    assert expected * 0.95 <= sustained <= expected * 1.05, (sustained, expected)
