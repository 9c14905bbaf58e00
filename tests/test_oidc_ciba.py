"""OpenID CIBA (Client-Initiated Backchannel Authentication Core 1.0) in pushauth's provider: a login flow
with no browser to redirect (a service desk, a kiosk) asks for the user's approval; the phone is prompted
with number matching and the number goes back to the client to show on its side. Poll mode (the token
endpoint's authorization_pending, slow_down, access_denied, expired_token) and ping mode (a notification
receiver on loopback gets the auth_req_id with the client's bearer), and the request's refusals.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto import jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyRing
from pushauth.crypto.secrets import sha256_hex
from pushauth.oidc import outbox
from pushauth.phone import Phone
from testkit.openid_client import RpClient, missing_node_rp, rp_ciba

USER = "erin@nhs.net"
UPSTREAM = "https://idp.example.org"
UPSTREAM_KEY = RSAKey.generate_key(2048, parameters={"kid": "upstream-1"})
SECRET = "service-desk-secret-" + "c" * 24
PING_TOKEN = "ping-bearer-" + "p" * 30


@dataclass
class Env:
    op: RunningServer
    keyring: KeyRingHolder
    http: aiohttp.ClientSession
    phone: Phone
    pings: list[dict[str, Any]]
    ping_times: list[float]  # time.monotonic() of each ping's arrival
    # What the notification receiver answers next, in order: (status, headers), or "hang" (it answers
    # nothing for 2 s); 204 once these are used up.
    answers: list[tuple[int, dict[str, str]] | str]


@pytest.fixture
async def env(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[Env]:
    pings: list[dict[str, Any]] = []
    ping_times: list[float] = []
    answers: list[tuple[int, dict[str, str]] | str] = []

    async def notified(request: web.Request) -> web.Response:
        pings.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        ping_times.append(time.monotonic())
        answer = answers.pop(0) if answers else (204, {})
        if isinstance(answer, str):  # "hang"
            await asyncio.sleep(2)
            answer = (204, {})
        status, headers = answer
        return web.Response(status=status, headers=headers)

    async def upstream_keys(_request: web.Request) -> web.Response:
        return web.json_response({"keys": [UPSTREAM_KEY.as_dict(private=False)]})

    receiver = web.Application()
    receiver.router.add_post("/ciba/notify", notified)
    receiver.router.add_get("/upstream/jwks", upstream_keys)  # an upstream IdP's keys, for id_token_hint
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = {"application": "webmail", "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [
        "http://127.0.0.1:9/unused"], "first_factor": "passwordless"}
    desk = {k: v for k, v in base.items() if k != "redirect_uris"}  # CIBA only: no browser comes back
    clients = [{**desk, "client_id": "desk", "name": "Service desk", "ciba": "poll",
                "upstream_issuer": UPSTREAM, "upstream_jwks_url": f"http://127.0.0.1:{port}/upstream/jwks"},
               {**base, "client_id": "kiosk", "name": "Ward kiosk", "ciba": "ping",
                "ciba_notification_endpoint": f"http://127.0.0.1:{port}/ciba/notify"},
               {**base, "client_id": "web", "name": "Web app"}]
    op = await start_server(make_settings(redis_url, free_port(), quiet_detection=False,
                                          oidc={"enabled": True, "clients": clients}), keyring)
    try:
        async with aiohttp.ClientSession() as http:
            phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
            yield Env(op, keyring, http, phone, pings, ping_times, answers)
    finally:
        await op.close()
        await runner.cleanup()


def basic(client_id: str, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def post(env: Env, path: str, form: dict[str, str], client_id: str = "desk",
               secret: str = SECRET) -> tuple[int, dict[str, Any]]:
    async with env.http.post(env.op.url + path, data=form, headers=basic(client_id, secret)) as resp:
        return resp.status, await resp.json()


async def initiate(env: Env, client_id: str = "desk", **extra: str) -> tuple[int, dict[str, Any]]:
    return await post(env, "/oidc/bc-authorize", {"scope": "openid", "login_hint": USER, **extra}, client_id)


async def poll(env: Env, auth_req_id: str, client_id: str = "desk") -> tuple[int, dict[str, Any]]:
    return await post(env, "/oidc/token", {"grant_type": "urn:openid:params:grant-type:ciba",
                                           "auth_req_id": auth_req_id}, client_id)


async def test_discovery_lists_ciba(env: Env) -> None:
    async with env.http.get(env.op.url + "/.well-known/openid-configuration") as resp:
        meta = await resp.json()
    assert meta["backchannel_authentication_endpoint"] == env.op.url + "/oidc/bc-authorize"
    assert meta["backchannel_token_delivery_modes_supported"] == ["poll", "ping"]
    assert "urn:openid:params:grant-type:ciba" in meta["grant_types_supported"]
    # CIBA Core 4: user codes are not supported, and no setting turns them on (a user_code is refused).
    assert meta["backchannel_user_code_parameter_supported"] is False


async def test_poll_mode_pending_slow_down_then_the_tokens(env: Env) -> None:
    status, started = await initiate(env)
    assert status == 200, started
    assert started["interval"] == 2
    number = started["pushauth_number"]
    assert number.isdigit()  # for the service desk's screen: the caller types it on the phone
    status, body = await poll(env, started["auth_req_id"])
    assert (status, body["error"]) == (400, "authorization_pending")
    status, body = await poll(env, started["auth_req_id"])  # at once: too fast
    assert (status, body["error"]) == (400, "slow_down")
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=number) == "approved"
    await asyncio.sleep(7.1)  # the interval, raised by 5 s after the slow_down
    status, tokens = await poll(env, started["auth_req_id"])
    assert status == 200, tokens
    async with env.http.get(env.op.url + "/.well-known/jwks.json") as resp:
        keys = KeySet.import_key_set(await resp.json())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["ES256"]).claims
    assert (claims["sub"], claims["aud"], claims["amr"]) == (USER, "desk", ["pop", "swk"])
    status, again = await poll(env, started["auth_req_id"])
    assert (status, again["error"]) == (400, "invalid_grant")  # single use


async def test_a_binding_message_is_shown_on_the_phone_beside_the_number(env: Env) -> None:
    status, started = await initiate(env, binding_message="Service desk: ticket INC-4821")
    assert status == 200, started
    assert started["pushauth_binding_message"] == "Service desk: ticket INC-4821"
    [pending] = await env.phone.pending()
    assert pending.number_matching is True  # the number is still the binding the user types
    assert pending.context == {"binding_message": "Service desk: ticket INC-4821"}
    assert await env.phone.approve(pending, number=started["pushauth_number"]) == "approved"


def own_id_token(env: Env, **claims: Any) -> str:
    """An ID token as the provider signs them (ES256, the server's current key), for the hint tests."""
    now = int(time.time())
    current = env.keyring.ring.current
    return jws.sign({"iss": env.op.url, "sub": USER, "aud": "desk", "iat": now, "exp": now + 300, **claims},
                    current.key, typ="JWT", kid=current.kid)


def upstream_id_token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": "upstream-1"}, {
        "iss": UPSTREAM, "aud": "desk", "preferred_username": USER, "sub": "u-77", "iat": now,
        "exp": now + 300, **claims}, UPSTREAM_KEY, algorithms=["RS256"])


async def test_an_id_token_we_issued_names_the_user(env: Env) -> None:
    """CIBA Core 7.1: the client sends back an ID token it got from us. The real one, from a sign-in."""
    _, started = await initiate(env)
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=started["pushauth_number"]) == "approved"
    status, tokens = await poll(env, started["auth_req_id"])
    assert status == 200, tokens
    form = {"scope": "openid", "id_token_hint": tokens["id_token"]}
    status, again = await post(env, "/oidc/bc-authorize", form)
    assert status == 200, again
    [_prompt] = await env.phone.pending()  # one prompt, for the hint's user (the phone is USER's)
    # An expired one still names the user (the phone decides), when it is recent enough.
    status, body = await post(env, "/oidc/bc-authorize", {"scope": "openid", "id_token_hint": own_id_token(
        env, iat=int(time.time()) - 3600, exp=int(time.time()) - 3300)})
    assert status == 200, body


async def test_an_upstream_id_token_names_the_user(env: Env) -> None:
    status, body = await post(env, "/oidc/bc-authorize", {"scope": "openid",
                                                          "id_token_hint": upstream_id_token()})
    assert status == 200, body
    [_prompt] = await env.phone.pending()  # one prompt, for the hint's user (the phone is USER's)


@pytest.mark.parametrize("make_hint", [
    lambda env: own_id_token(env, aud="kiosk"),  # issued to another client
    lambda env: own_id_token(env, iss="https://elsewhere.example.org"),
    lambda env: own_id_token(env, iat=int(time.time()) - 2 * 86400),  # too old
    lambda env: jws.sign({"iss": env.op.url, "sub": USER, "aud": "desk", "iat": int(time.time())},
                         KeyRing.ephemeral().current.key, typ="JWT",
                         kid=env.keyring.ring.current.kid),  # our kid, another key
    lambda env: upstream_id_token(aud="someone-else"),
    lambda env: upstream_id_token(iat=int(time.time()) - 3600),  # older than upstream_max_age_s
    lambda env: jwt.encode({"alg": "RS256", "kid": "upstream-1"}, {
        "iss": UPSTREAM, "aud": "desk", "preferred_username": USER, "iat": int(time.time()),
        "exp": int(time.time()) + 60}, RSAKey.generate_key(2048), algorithms=["RS256"]),  # unpublished key
    lambda env: "not-a-jwt",
])
async def test_a_bad_id_token_hint_prompts_no_one(env: Env, make_hint: Any) -> None:
    status, body = await post(env, "/oidc/bc-authorize", {"scope": "openid", "id_token_hint": make_hint(env)})
    assert (status, body["error"]) == (400, "invalid_request"), body
    assert await env.phone.pending() == []


async def test_a_denial_is_access_denied(env: Env) -> None:
    _, started = await initiate(env)
    [pending] = await env.phone.pending()
    await env.phone.deny(pending, "mistake")
    status, body = await poll(env, started["auth_req_id"])
    assert (status, body["error"]) == (400, "access_denied")


async def test_not_me_is_access_denied_raises_the_alert_and_suspends_prompts(env: Env) -> None:
    """A CIBA prompt is a prompt like any other: "not me" is the critical alert and containment, and the
    client's next request for the user is refused as the REST path refuses it (403 suspended there,
    CIBA Core 13's 403 access_denied here) before the phone is prompted again."""
    _, started = await initiate(env)
    [pending] = await env.phone.pending()
    assert await env.phone.deny(pending, "not_me") == "denied"
    status, body = await poll(env, started["auth_req_id"])
    assert (status, body["error"]) == (400, "access_denied")
    alerts = await AdminClient(env.http, env.op.url).alerts()
    assert [(a["kind"], a["severity"], a["user"]) for a in alerts] == [("denied_not_me", "critical", USER)]
    status, refused = await initiate(env)
    assert (status, refused["error"]) == (403, "access_denied"), refused
    assert "blocked" in refused["error_description"]
    assert await env.phone.pending() == []
    status, rest = await LoginFlow(env.http, env.op.url).call("POST", "/v1/challenges", {"user": USER})
    assert (status, rest["error"]) == (403, "suspended")  # the same state, as the REST path words it


async def test_a_locked_user_is_refused(env: Env) -> None:
    status, body = await AdminClient(env.http, env.op.url).call("POST", f"/v1/users/{USER}/lock")
    assert status == 200, body
    status, refused = await initiate(env)
    assert (status, refused["error"]) == (403, "access_denied"), refused
    assert await env.phone.pending() == []


async def test_push_bombing_over_ciba_counts_with_the_rest_paths_prompts(env: Env) -> None:
    """One count per user, whichever door the prompts came through: three from the REST API and two over
    CIBA reach the default limit (5 in 5 minutes); the next is refused on both, and it is one incident."""
    rest = LoginFlow(env.http, env.op.url)
    for _ in range(3):
        await rest.create(USER)
    for _ in range(2):
        status, started = await initiate(env)
        assert status == 200, started
    form = {"scope": "openid", "login_hint": USER}
    async with env.http.post(env.op.url + "/oidc/bc-authorize", data=form, headers=basic("desk")) as resp:
        refused = await resp.json()
        assert (resp.status, refused["error"]) == (403, "access_denied"), refused
        assert 1 <= int(resp.headers["Retry-After"]) <= 300  # as the REST path tells its callers
    assert "Too many" in refused["error_description"]
    status, body = await rest.call("POST", "/v1/challenges", {"user": USER})
    assert (status, body["error"]) == (429, "rate_limited")
    [alert] = await AdminClient(env.http, env.op.url).alerts()
    assert (alert["kind"], alert["severity"]) == ("push_bombing", "high")
    assert alert["evidence"]["event_count"] == 2
    assert len(await env.phone.pending()) == 5  # the refused prompts never reached the phone


async def test_no_answer_is_expired_token(env: Env) -> None:
    _, started = await initiate(env, requested_expiry="10")
    assert started["expires_in"] <= 10
    await asyncio.sleep(11)
    status, body = await poll(env, started["auth_req_id"])
    assert (status, body["error"]) == (400, "expired_token")


async def test_ping_mode_notifies_the_client(env: Env) -> None:
    status, started = await initiate(env, "kiosk", client_notification_token=PING_TOKEN)
    assert status == 200, started
    assert "interval" not in started
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=started["pushauth_number"]) == "approved"
    for _ in range(100):
        if env.pings:
            break
        await asyncio.sleep(0.05)
    assert env.pings == [{"auth": f"Bearer {PING_TOKEN}", "body": {"auth_req_id": started["auth_req_id"]}}]
    status, tokens = await poll(env, started["auth_req_id"], "kiosk")
    assert status == 200, tokens
    assert "id_token" in tokens


def settled(kind: str, result: str) -> float:
    labels = {"kind": kind, "result": result}
    return REGISTRY.get_sample_value("pushauth_oidc_notifications_total", labels) or 0.0


async def pinged(env: Env, count: int, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if len(env.pings) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(env.pings)} pings within {within_s} s, not {count}")


async def approved_ping_request(env: Env) -> dict[str, Any]:
    status, started = await initiate(env, "kiosk", client_notification_token=PING_TOKEN)
    assert status == 200, started
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=started["pushauth_number"]) == "approved"
    return started


async def test_a_ping_the_receiver_cannot_take_yet_is_retried_until_taken(env: Env) -> None:
    env.answers.append((503, {}))
    taken = settled("ping", "taken")
    started = await approved_ping_request(env)
    await pinged(env, 2)
    want = {"auth": f"Bearer {PING_TOKEN}", "body": {"auth_req_id": started["auth_req_id"]}}
    assert env.pings == [want, want]  # the 503, then the 204
    assert 0.9 <= env.ping_times[1] - env.ping_times[0] < 3  # the schedule's first step: 1 s
    await asyncio.sleep(5.5)  # past the next step: taken means no more
    assert len(env.pings) == 2
    assert settled("ping", "taken") == taken + 1
    status, tokens = await poll(env, started["auth_req_id"], "kiosk")
    assert status == 200, tokens


async def test_a_ping_waits_as_long_as_the_receivers_retry_after(env: Env) -> None:
    """As the alert webhooks do: a 429 is tried again, after the receiver's Retry-After when that is longer
    than the schedule's step (1 s here)."""
    env.answers.append((429, {"Retry-After": "3"}))
    await approved_ping_request(env)
    await pinged(env, 2)
    assert 2.9 <= env.ping_times[1] - env.ping_times[0] < 4.5


async def test_a_ping_nobody_takes_ends_counted_and_logged(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RETRY_SCHEDULE_S", (0.2, 0.2))
    monkeypatch.setattr(outbox, "POST_TIMEOUT_S", 0.5)  # read when the outbox opens its session: first POST
    env.answers.extend(["hang"] * 3)
    failed = settled("ping", "failed")
    with capture_logs() as logs:
        await approved_ping_request(env)
        for _ in range(200):
            if settled("ping", "failed") > failed:
                break
            await asyncio.sleep(0.05)
    assert settled("ping", "failed") == failed + 1
    assert len(env.pings) == 3  # the first try and both retries, each timed out
    [gave_up] = [e for e in logs if e["event"] == "notification_failed"]
    assert gave_up["log_level"] == "warning"
    assert (gave_up["kind"], gave_up["sender"], gave_up["reason"], gave_up["attempts"]) == (
        "ping", "kiosk", "timeout", 3)
    assert PING_TOKEN not in repr(logs)


async def test_a_ping_survives_a_restart_of_the_server(env: Env) -> None:
    """The ping waits in Redis (the outbox), not only in the process that took the request: the server
    stops before the phone answers, the next one on the same Redis pings."""
    status, started = await initiate(env, "kiosk", client_notification_token=PING_TOKEN)
    assert status == 200, started
    [pending] = await env.phone.pending()
    await env.op.close()
    second = await start_server(env.op.settings, env.keyring)  # the same address and Redis
    try:
        assert await env.phone.approve(pending, number=started["pushauth_number"]) == "approved"
        for _ in range(200):
            if env.pings:
                break
            await asyncio.sleep(0.05)
        want = {"auth": f"Bearer {PING_TOKEN}", "body": {"auth_req_id": started["auth_req_id"]}}
        assert env.pings == [want]
        status, tokens = await poll(env, started["auth_req_id"], "kiosk")
        assert status == 200, tokens
    finally:
        await second.close()


@pytest.mark.parametrize(("client_id", "secret", "extra", "error"), [
    ("desk", SECRET, {"binding_message": "Call\n0113 496 0000"}, "invalid_binding_message"),
    ("desk", SECRET, {"binding_message": "x" * 65}, "invalid_binding_message"),
    ("desk", SECRET, {"login_hint": "nobody@nhs.net"}, "unknown_user_id"),
    ("desk", SECRET, {"user_code": "1234"}, "invalid_user_code"),
    ("desk", SECRET, {"scope": "profile"}, "invalid_scope"),
    ("desk", SECRET, {"requested_expiry": "86400"}, "invalid_request"),
    ("kiosk", SECRET, {}, "invalid_request"),  # ping without client_notification_token
    ("web", SECRET, {}, "unauthorized_client"),
    ("desk", "not-the-secret", {}, "invalid_client"),
])
async def test_requests_refused(env: Env, client_id: str, secret: str, extra: dict[str, str],
                                error: str) -> None:
    form = {"scope": "openid", "login_hint": USER, **extra}
    status, body = await post(env, "/oidc/bc-authorize", form, client_id, secret)
    assert body["error"] == error, body
    assert status in (400, 401)
    assert await env.phone.pending() == []


async def test_openid_client_signs_in_through_ciba(env: Env) -> None:
    """openid-client v6 (npm; the certified RP library) runs CIBA poll mode: it initiates, polls (honouring
    interval and slow_down), and validates the ID token against our JWKS itself."""
    if (why := missing_node_rp()) is not None:
        pytest.skip(why)
    rp = RpClient(env.op.url, "desk", "http://127.0.0.1:9/unused", client_secret=SECRET)
    run = await rp_ciba(rp, USER)
    assert run.initiation["pushauth_number"].isdigit()
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=run.initiation["pushauth_number"]) == "approved"
    result = await run.result()
    assert result.ok, (result.error, result.message)
    assert result.claims is not None
    assert (result.claims["sub"], result.claims["aud"]) == (USER, "desk")
    assert result.claims["iss"] == env.op.url


async def test_openid_client_is_told_access_denied(env: Env) -> None:
    if (why := missing_node_rp()) is not None:
        pytest.skip(why)
    rp = RpClient(env.op.url, "desk", "http://127.0.0.1:9/unused", client_secret=SECRET)
    run = await rp_ciba(rp, USER)
    [pending] = await env.phone.pending()
    await env.phone.deny(pending, "mistake")
    result = await run.result()
    assert not result.ok
    assert result.oauth_error == "access_denied", result


async def test_openid_client_in_ping_mode(env: Env) -> None:
    """openid-client sends its client_notification_token; the phone approves; our notification receiver
    gets the ping with that bearer and hands it to openid-client, which then makes the CIBA grant request
    and validates the ID token."""
    if (why := missing_node_rp()) is not None:
        pytest.skip(why)
    rp = RpClient(env.op.url, "kiosk", "http://127.0.0.1:9/unused", client_secret=SECRET)
    run = await rp_ciba(rp, USER, client_notification_token=PING_TOKEN)
    assert "interval" not in run.initiation  # ping mode: nothing to poll
    [pending] = await env.phone.pending()
    assert await env.phone.approve(pending, number=run.initiation["pushauth_number"]) == "approved"
    await pinged(env, 1)
    [ping] = env.pings
    assert ping == {"auth": f"Bearer {PING_TOKEN}", "body": {"auth_req_id": run.initiation["auth_req_id"]}}
    await run.notify(ping["body"])
    result = await run.result()
    assert result.ok, (result.error, result.message)
    assert result.claims is not None
    assert (result.claims["sub"], result.claims["aud"], result.claims["iss"]) == (USER, "kiosk", env.op.url)
    status, again = await poll(env, run.initiation["auth_req_id"], "kiosk")
    assert (status, again["error"]) == (400, "invalid_grant")  # openid-client took the tokens, once


async def test_openid_client_is_told_expired_token(env: Env) -> None:
    """Nobody answers a request that lives 10 s: openid-client, polling a little past that, is told
    expired_token by the provider (by default it would stop at expires_in on its own timeout)."""
    if (why := missing_node_rp()) is not None:
        pytest.skip(why)
    rp = RpClient(env.op.url, "desk", "http://127.0.0.1:9/unused", client_secret=SECRET)
    run = await rp_ciba(rp, USER, requested_expiry=10, poll_timeout_s=25)
    assert run.initiation["expires_in"] <= 10
    [_pending] = await env.phone.pending()
    result = await run.result(timeout_s=40)
    assert not result.ok
    assert (result.oauth_error, result.status) == ("expired_token", 400), result
    assert 10 <= result.elapsed_s < 25  # the provider's verdict, not openid-client giving up


async def desk_only(redis_url: str, keyring: KeyRingHolder, **sections: Any) -> RunningServer:
    """A server whose one OpenID client is the service desk's CIBA poll client, with `sections` set."""
    desk = {"client_id": "desk", "name": "Service desk", "application": "webmail", "ciba": "poll",
            "secret_sha256": [sha256_hex(SECRET)], "first_factor": "passwordless"}
    return await start_server(make_settings(redis_url, free_port(), oidc={"enabled": True, "clients": [desk]},
                                            **sections), keyring)


async def test_a_bad_client_secret_counts_once_at_both_ciba_endpoints(redis_url: str,
                                                                      keyring: KeyRingHolder) -> None:
    """A wrong secret in an Authorization header is counted by the rate_limit middleware; the CIBA handlers
    once counted it again, blocking a client with a stale secret at half the auth-failure limit."""
    op = await desk_only(redis_url, keyring, rate_limits={"auth_failures": 4})
    try:
        async with aiohttp.ClientSession() as http:
            env = Env(op, keyring, http, None, [], [], [])  # type: ignore[arg-type]  # no phone needed
            refused = [await post(env, "/oidc/bc-authorize", {"scope": "openid", "login_hint": USER},
                                  secret="stale") for _ in range(2)]
            refused += [await post(env, "/oidc/token", {"grant_type": "urn:openid:params:grant-type:ciba",
                                                        "auth_req_id": "x" * 43}, secret="stale")
                        for _ in range(1)]
            assert [(status, body["error"]) for status, body in refused] == [(401, "invalid_client")] * 3
            status, body = await post(env, "/oidc/bc-authorize", {"scope": "openid", "login_hint": USER})
            assert (status, body.get("error")) != (429, "rate_limited"), body  # 3 failures of 4: not blocked
            await post(env, "/oidc/token", {"grant_type": "urn:openid:params:grant-type:ciba",
                                            "auth_req_id": "x" * 43}, secret="stale")  # the 4th
            status, body = await post(env, "/oidc/bc-authorize", {"scope": "openid", "login_hint": USER})
            assert (status, body["error"]) == (429, "rate_limited"), body
    finally:
        await op.close()


async def test_requested_expiry_is_bounded_by_the_deployments_longest_prompt(redis_url: str,
                                                                           keyring: KeyRingHolder) -> None:
    """With challenges.max_ttl_s below CIBA's own 600 s, a longer requested_expiry is a malformed request
    (invalid_request, no prompt), not a refusal of the user (access_denied); the default fits the bound."""
    op = await desk_only(redis_url, keyring, challenges={"max_ttl_s": 120})
    try:
        async with aiohttp.ClientSession() as http:
            phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
            env = Env(op, keyring, http, phone, [], [], [])
            status, body = await initiate(env, requested_expiry="300")
            assert (status, body["error"]) == (400, "invalid_request"), body
            assert "10..120" in body["error_description"]
            assert await phone.pending() == []
            status, body = await initiate(env)
            assert status == 200, body
            assert 0 < body["expires_in"] <= 120
    finally:
        await op.close()
