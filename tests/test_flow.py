"""The challenge lifecycle over real HTTP: create -> phone answers / login flow cancels / time runs out, and
everything the login flow can get wrong on the way (auth, ids, bodies, query parameters).

Every refused device answer is followed by a check that the challenge is still `pending` for the login
flow and can still be approved legitimately: a refusal must leave the state exactly as it was.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
from joserfc.jwk import ECKey
from support import ADMIN_TOKEN, OTHER_API_KEY, LoginFlow, RunningServer, add_phone, assert_error

from pushauth.crypto import jws
from pushauth.phone import Phone, ServerRejected
from pushauth.web.app import EVENTS

USER = "alice@nhs.net"
ASSERTION_TYP = "pushauth-assertion+jwt"


# -- helpers ------------------------------------------------------------------------------------------------


async def call(http: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str] | None = None,
               data: bytes | None = None, json: Any = None) -> tuple[int, Any]:
    """One raw HTTP call; the body must be JSON and must never carry a stack trace."""
    async with http.request(method, url, headers=headers, data=data, json=json) as resp:
        raw = await resp.read()
        status = resp.status
    assert b"Traceback" not in raw, raw[:500]
    return status, (msgspec.json.decode(raw) if raw else None)


def parse_rfc3339_z(text: str) -> float:
    assert isinstance(text, str), text
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def payload(token: str) -> dict[str, Any]:
    """The (unverified) payload of a compact JWS."""
    claims = msgspec.json.decode(jws.b64url_decode(token.split(".")[1]))
    assert isinstance(claims, dict)
    return claims


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in leaves(v)]
    return [value]


def other_number(number: str) -> str:
    return f"{(int(number) + 1) % 10 ** len(number):0{len(number)}d}"


def response_path(cid: str) -> str:
    return f"/v1/device/challenges/{cid}/response"


async def until_waiting(server: RunningServer, count: int) -> None:
    """Until `count` login flows are parked on the server (their long-poll GET is in flight)."""
    deadline = time.monotonic() + 3
    while server.app[EVENTS].waiting < count:
        assert time.monotonic() < deadline, "the long-poll never reached the server"
        await asyncio.sleep(0.01)


async def assert_pending_then_approvable(login: LoginFlow, phone: Phone, created: dict[str, Any]) -> None:
    """The refusal left the challenge untouched: still pending, and the real user can still approve it."""
    seen = await login.status(created["id"])
    assert seen["status"] == "pending", seen
    assert "assertion" not in seen
    assert await phone.approve(created["id"], number=created.get("number")) == "approved"
    seen = await login.status(created["id"])
    assert seen["status"] == "approved", seen
    assert seen["device"] == phone.device_id


# -- approve ------------------------------------------------------------------------------------------------


async def test_approve_end_to_end(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                  phone: Phone) -> None:
    before = time.time()
    status, created = await call(http, "POST", f"{server.url}/v1/challenges", headers=login.headers,
                                 json={"user": USER, "context": {"ip": "203.0.113.7", "location": "Leeds"}})
    assert status == 201, created
    assert set(created) == {"id", "status", "expires_at", "number"}
    assert created["status"] == "pending"
    number = created["number"]
    assert isinstance(number, str)
    assert len(number) == 2
    assert number.isascii()
    assert number.isdigit()
    # default life 60 s; the string is whole seconds, so allow a second either side
    assert before + 59 <= parse_rfc3339_z(created["expires_at"]) <= time.time() + 61
    cid = created["id"]

    listed = await phone.pending()
    assert [c.id for c in listed] == [cid]
    ch = listed[0]
    assert (ch.user, ch.app, ch.number_matching) == (USER, "NHSmail webmail", True)
    assert ch.context == {"ip": "203.0.113.7", "location": "Leeds"}

    waiter = asyncio.create_task(login.status(cid, wait=10))
    await until_waiting(server, 1)
    assert not waiter.done()

    assert await phone.approve(ch, number=number) == "approved"
    answered = time.monotonic()
    seen = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - answered < 2, "the long-poll did not return promptly on approval"

    assert seen["status"] == "approved"
    assert (seen["id"], seen["user"], seen["device"]) == (cid, USER, phone.device_id)
    assert seen["expires_at"] == created["expires_at"]
    assertion = seen["assertion"]
    assert isinstance(assertion, str)

    status, jwks = await call(http, "GET", f"{server.url}/.well-known/jwks.json")
    assert status == 200
    header = jws.read_header(assertion, typ=ASSERTION_TYP)
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims = jws.verify(assertion, jws.import_public_jwk(jwk))
    assert claims["iss"] == server.url
    assert claims["aud"] == "webmail"
    assert claims["sub"] == USER
    assert claims["jti"] == cid
    assert claims["result"] == "approved"
    assert claims["device"] == phone.device_id
    assert isinstance(claims["iat"], int)
    assert abs(claims["iat"] - time.time()) < 5

    # the assertion does not verify with some other P-256 key
    with pytest.raises(jws.InvalidJWS):
        jws.verify(assertion, ECKey.generate_key("P-256", private=True))

    # decided: the phone no longer lists it, and a second approval is a conflict
    assert await phone.pending() == []
    with pytest.raises(ServerRejected) as exc:
        await phone.approve(ch, number=number)
    assert exc.value.status == 409


@pytest.mark.parametrize(("sent", "expected"), [("not_me", "not_me"), ("mistake", "mistake"),
                                                (None, "mistake")])
async def test_deny_with_reason(login: LoginFlow, phone: Phone, sent: str | None, expected: str) -> None:
    created = await login.create(USER)
    assert await phone.deny(created["id"], reason=sent) == "denied"
    seen = await login.status(created["id"])
    assert seen["status"] == "denied"
    assert seen["reason"] == expected
    assert seen["device"] == phone.device_id
    assert "assertion" not in seen
    assert await phone.pending() == []


async def test_wrong_number_denies(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    assert await phone.approve(ch, number=other_number(created["number"])) == "denied"
    seen = await login.status(created["id"])
    assert seen["status"] == "denied"
    assert seen["reason"] == "wrong_number"
    assert "assertion" not in seen
    # it is decided: the right number afterwards does not turn it around
    with pytest.raises(ServerRejected) as exc:
        await phone.approve(ch, number=created["number"])
    assert exc.value.status == 409
    seen = await login.status(created["id"])
    assert (seen["status"], seen["reason"]) == ("denied", "wrong_number")


async def test_approve_without_number_is_refused(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    status, body = await phone.signed_request("POST", response_path(ch.id),
                                              {"nonce": ch.nonce, "decision": "approve"})
    assert_error(status, body, 422, "number_required")
    await assert_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("answer", [
    {"decision": "approve", "number": "00", "reason": "not_me"},   # a reason is only for deny
    {"decision": "deny", "reason": "wrong_number"},                # only the server decides wrong_number
    {"decision": "deny", "reason": "because"},
    {"decision": "maybe"},
    {"decision": "approve", "number": 42},
])
async def test_malformed_answers_are_refused(login: LoginFlow, phone: Phone, answer: dict[str, Any]) -> None:
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    status, body = await phone.signed_request("POST", response_path(ch.id), {"nonce": ch.nonce, **answer})
    assert_error(status, body, 422)
    await assert_pending_then_approvable(login, phone, created)


async def test_phone_never_sees_the_number(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER, context={"ip": "198.51.100.1", "user_agent": "Firefox",
                                                "location": "York"})
    number = created["number"]
    fetched = await phone.fetch(created["id"])
    [listed] = await phone.pending()
    for token in (fetched.token, listed.token):
        claims = payload(token)
        assert "number" not in claims
        assert claims["number_matching"] is True
        assert claims["jti"] == created["id"]
        assert number not in [str(v) for v in leaves(claims)], claims
    await assert_pending_then_approvable(login, phone, created)


async def test_challenge_jws_shape(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                  phone: Phone) -> None:
    safari = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.1 Safari/605.1.15")
    created = await login.create(USER, context={"ip": "192.0.2.1", "user_agent": safari})
    ch = await phone.fetch(created["id"])
    status, jwks = await call(http, "GET", f"{server.url}/.well-known/jwks.json")
    assert status == 200
    header = msgspec.json.decode(jws.b64url_decode(ch.token.split(".")[0]))
    assert header == {"alg": "ES256", "typ": "pushauth-challenge+jwt", "kid": jwks["keys"][0]["kid"]}
    claims = payload(ch.token)
    assert set(claims) == {"iss", "aud", "sub", "jti", "nonce", "iat", "exp", "app", "ctx", "number_matching",
                           "number_length"}
    assert claims["number_length"] == 2  # how many digits to ask for, never the digits
    assert (claims["iss"], claims["aud"], claims["sub"], claims["jti"]) == (server.url, phone.device_id, USER,
                                                                            created["id"])
    assert claims["app"] == "NHSmail webmail"
    # never the login flow's text as it came: a summary in a fixed vocabulary (pushauth/challenges/context.py)
    assert claims["ctx"] == {"ip": "192.0.2.1", "user_agent": "Safari on macOS"}
    assert claims["exp"] == int(parse_rfc3339_z(created["expires_at"]))
    assert claims["iat"] <= time.time() + 1
    assert len(jws.b64url_decode(claims["nonce"])) * 8 >= 128
    # a second challenge gets a different nonce
    other = await phone.fetch((await login.create(USER))["id"])
    assert other.nonce != ch.nonce


# -- waiting and expiry -------------------------------------------------------------------------------------


async def test_expired_challenge(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                 phone: Phone) -> None:
    """The one test that waits for a real expiry (ttl_s=10 is the minimum)."""
    created = await login.create(USER, ttl_s=10)
    exp = parse_rfc3339_z(created["expires_at"])
    assert 9 <= exp - time.time() <= 11
    ch = await phone.fetch(created["id"])  # the phone got the challenge while it was valid
    assert ch.exp == int(exp)

    # a login flow long-polling across the expiry is told `expired` at the expiry, not after its `wait`
    seen = await login.status(created["id"], wait=30)
    assert seen["status"] == "expired", seen
    assert exp - 0.05 <= time.time() <= exp + 1.5
    await asyncio.sleep(max(0.0, exp + 0.05 - time.time()))

    status, body = await phone.signed_request(
        "POST", response_path(ch.id), {"nonce": ch.nonce, "decision": "approve", "number": created["number"]})
    assert_error(status, body, 409, "expired")
    seen = await login.status(created["id"])
    assert seen["status"] == "expired"
    assert "assertion" not in seen

    start = time.monotonic()
    seen = await login.status(created["id"], wait=10)
    assert time.monotonic() - start < 1, "wait= on an expired challenge must return at once"
    assert seen["status"] == "expired"

    assert await phone.pending() == []
    with pytest.raises(ServerRejected) as exc:
        await phone.fetch(created["id"])
    assert (exc.value.status, exc.value.error) == (409, "expired")
    status, body = await call(http, "DELETE", f"{server.url}/v1/challenges/{created['id']}",
                              headers=login.headers)
    assert_error(status, body, 409)
    assert (await login.status(created["id"]))["status"] == "expired"


async def test_pending_wait_returns_pending_after_the_wait(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    start = time.monotonic()
    seen = await login.status(created["id"], wait=2)
    elapsed = time.monotonic() - start
    assert seen["status"] == "pending"
    assert 1.8 <= elapsed < 4, elapsed
    await assert_pending_then_approvable(login, phone, created)


# -- cancel -------------------------------------------------------------------------------------------------


async def test_cancel(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                      phone: Phone) -> None:
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    waiter = asyncio.create_task(login.status(created["id"], wait=10))
    await until_waiting(server, 1)

    url = f"{server.url}/v1/challenges/{created['id']}"
    status, body = await call(http, "DELETE", url, headers=login.headers)
    assert (status, body) == (200, {"status": "cancelled"})
    seen = await asyncio.wait_for(waiter, 3)  # the waiting login flow is woken by the cancel
    assert seen["status"] == "cancelled"

    status, body = await phone.signed_request(
        "POST", response_path(ch.id), {"nonce": ch.nonce, "decision": "approve", "number": created["number"]})
    assert_error(status, body, 409)
    assert (await login.status(created["id"]))["status"] == "cancelled"
    assert await phone.pending() == []

    status, body = await call(http, "DELETE", url, headers=login.headers)
    assert_error(status, body, 409)


async def test_cancel_after_decision_is_a_conflict(server: RunningServer, http: aiohttp.ClientSession,
                                                  login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    assert await phone.deny(created["id"]) == "denied"
    status, body = await call(http, "DELETE", f"{server.url}/v1/challenges/{created['id']}",
                              headers=login.headers)
    assert_error(status, body, 409)
    assert (await login.status(created["id"]))["status"] == "denied"


# -- visibility and login-flow auth -------------------------------------------------------------------------


async def test_other_application_gets_404(server: RunningServer, http: aiohttp.ClientSession,
                                          login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    other = {"Authorization": f"Bearer {OTHER_API_KEY}"}
    url = f"{server.url}/v1/challenges/{created['id']}"
    for wait in (0, 5):
        start = time.monotonic()
        status, body = await call(http, "GET", f"{url}?wait={wait}", headers=other)
        assert_error(status, body, 404)
        assert time.monotonic() - start < 1
    status, body = await call(http, "DELETE", url, headers=other)
    assert_error(status, body, 404)
    # the same answer as for an id that never existed: nothing tells the other application it exists
    status, missing = await call(http, "GET", f"{server.url}/v1/challenges/c{'a' * 42}", headers=other)
    assert_error(status, missing, 404)
    assert body["error"] == missing["error"]
    await assert_pending_then_approvable(login, phone, created)
    # and once decided, still invisible to the other application
    status, body = await call(http, "GET", url, headers=other)
    assert_error(status, body, 404)


@pytest.mark.parametrize("cid", [
    "nope",
    "c" + "a" * 42,                  # well-formed, never created
    "c" + "A" * 42,
    "c" + "a" * 43,
    "d" + "a" * 32,                  # a device id shape
    "c%00",
    "c%2F..%2Fx",
    "x" * 600,
])
async def test_unknown_challenge_ids_are_404(server: RunningServer, http: aiohttp.ClientSession,
                                             login: LoginFlow, phone: Phone, cid: str) -> None:
    url = f"{server.url}/v1/challenges/{cid}"
    for method, query in (("GET", ""), ("GET", "?wait=3"), ("DELETE", "")):
        start = time.monotonic()
        status, body = await call(http, method, url + query, headers=login.headers)
        assert_error(status, body, 404)
        assert time.monotonic() - start < 1


async def test_login_flow_auth(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                               phone: Phone) -> None:
    created = await login.create(USER)
    url = f"{server.url}/v1/challenges"
    one = f"{url}/{created['id']}"
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {login.headers['Authorization'].split()[1]}"},
        {"Authorization": login.headers["Authorization"].split()[1]},
    ]
    for headers in bad_headers:
        for method, target, body in (("POST", url, {"user": USER}), ("GET", one, None), ("DELETE", one, None),
                                     ("POST", f"{server.url}/v1/enrollments", {"user": USER})):
            status, got = await call(http, method, target, headers=headers, json=body)
            assert_error(status, got, 401)

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for method, target, body in (("POST", url, {"user": USER}), ("GET", one, None), ("DELETE", one, None)):
        status, got = await call(http, method, target, headers=admin, json=body)
        assert_error(status, got, 403)
    await assert_pending_then_approvable(login, phone, created)


# -- users --------------------------------------------------------------------------------------------------


async def test_not_enrolled_user(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                 phone: Phone) -> None:
    status, body = await call(http, "POST", f"{server.url}/v1/challenges", headers=login.headers,
                              json={"user": "bob@nhs.net"})
    assert_error(status, body, 403, "not_enrolled")


@pytest.mark.parametrize("spelling", ["  ALICE@nhs.NET ", "Alice@NHS.net", "\tａｌｉｃｅ@ｎｈｓ.ｎｅｔ\n"])
async def test_user_names_are_canonicalised(login: LoginFlow, phone: Phone, spelling: str) -> None:
    created = await login.create(spelling)
    [ch] = await phone.pending()
    assert ch.id == created["id"]
    assert payload(ch.token)["sub"] == USER
    assert (await login.status(created["id"]))["user"] == USER
    assert await phone.approve(ch, number=created["number"]) == "approved"


# -- input validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status", "field"), [
    (b"{", 400, None),
    (b"not json", 400, None),
    (b"", 400, None),
    (b"\xff\xfe{}", 400, None),
    (b"[]", 422, None),
    (b"null", 422, None),
    (b"{}", 422, "user"),
    (b'{"user": 5}', 422, "user"),
    (b'{"user": null}', 422, "user"),
    (b'{"user": "alice@nhs.net", "colour": "red"}', 422, "colour"),
    (b'{"user": "alice@nhs.net", "ttl_s": "30"}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 30.5}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 5}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 9}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 601}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": -1}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": true}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 100000000000000000000000000}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "ttl_s": 1e2}', 422, "ttl_s"),
    (b'{"user": "alice@nhs.net", "context": {"ip": 5}}', 422, "ip"),
    (b'{"user": "alice@nhs.net", "context": {"browser": "x"}}', 422, "browser"),
    (b'{"user": "alice@nhs.net", "context": "x"}', 422, "context"),
    (b'{"user": "   "}', 422, "user"),
    (b'{"user": "alice@nhs.net\\u0000"}', 422, "user"),
])
async def test_create_validation(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                 phone: Phone, raw: bytes, status: int, field: str | None) -> None:
    got_status, body = await call(http, "POST", f"{server.url}/v1/challenges",
                                  headers={**login.headers, "Content-Type": "application/json"}, data=raw)
    assert_error(got_status, body, status)
    if field is not None:
        assert field in body["message"], body
    assert await phone.pending() == []  # nothing was created


@pytest.mark.parametrize("ttl", [10, 600])
async def test_ttl_bounds_are_inclusive(login: LoginFlow, phone: Phone, ttl: int) -> None:
    created = await login.create(USER, ttl_s=ttl)
    assert abs(parse_rfc3339_z(created["expires_at"]) - time.time() - ttl) <= 2


async def test_oversized_body_is_413(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                     phone: Phone) -> None:
    raw = msgspec.json.encode({"user": USER, "context": {"location": "x" * 200}, "pad": "y" * 17_000})
    assert len(raw) > 16 * 1024
    status, body = await call(http, "POST", f"{server.url}/v1/challenges",
                              headers={**login.headers, "Content-Type": "application/json"}, data=raw)
    assert_error(status, body, 413)
    assert await phone.pending() == []


@pytest.mark.parametrize("wait", ["31", "abc", "-1", "1.5", "", "1e1", "99999999999999999999"])
async def test_bad_wait_is_400(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                               phone: Phone, wait: str) -> None:
    created = await login.create(USER)
    status, body = await call(http, "GET", f"{server.url}/v1/challenges/{created['id']}?wait={wait}",
                              headers=login.headers)
    assert_error(status, body, 400)
    await assert_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("wait", ["%C2%B2", "%E2%91%A0"])  # '²' (superscript two), '①' (circled one)
async def test_unicode_digit_wait_is_400_not_500(server: RunningServer, http: aiohttp.ClientSession,
                                                 login: LoginFlow, phone: Phone, wait: str) -> None:
    created = await login.create(USER)
    status, body = await call(http, "GET", f"{server.url}/v1/challenges/{created['id']}?wait={wait}",
                              headers=login.headers)
    assert_error(status, body, 400)


# -- what the phone sees ------------------------------------------------------------------------------------


async def test_polling_lists_only_pending_unexpired_challenges_for_this_phone(
        login: LoginFlow, phone: Phone, http: aiohttp.ClientSession, server: RunningServer) -> None:
    c1, c2, c3 = [await login.create(USER) for _ in range(3)]
    assert {c.id for c in await phone.pending()} == {c1["id"], c2["id"], c3["id"]}

    assert await phone.approve(c1["id"], number=c1["number"]) == "approved"
    assert {c.id for c in await phone.pending()} == {c2["id"], c3["id"]}
    assert await phone.deny(c2["id"]) == "denied"
    status, _ = await call(http, "DELETE", f"{server.url}/v1/challenges/{c3['id']}", headers=login.headers)
    assert status == 200
    assert await phone.pending() == []

    # a phone enrolled later is not a target of challenges created before it existed
    c4 = await login.create(USER)
    later = await add_phone(login, phone, USER, http)
    assert [c.id for c in await later.pending()] == []
    with pytest.raises(ServerRejected) as exc:
        await later.fetch(c4["id"])
    assert exc.value.status == 404
    c5 = await login.create(USER)
    assert [c.id for c in await later.pending()] == [c5["id"]]
    assert {c.id for c in await phone.pending()} == {c4["id"], c5["id"]}


async def test_two_phones_first_answer_wins(login: LoginFlow, phone: Phone,
                                            http: aiohttp.ClientSession) -> None:
    second = await add_phone(login, phone, USER, http)
    created = await login.create(USER)
    [on_first] = await phone.pending()
    [on_second] = await second.pending()
    assert on_first.id == on_second.id == created["id"]
    assert payload(on_first.token)["aud"] == phone.device_id
    assert payload(on_second.token)["aud"] == second.device_id

    assert await phone.approve(on_first, number=created["number"]) == "approved"
    with pytest.raises(ServerRejected) as exc:
        await second.approve(on_second, number=created["number"])
    assert exc.value.status == 409
    with pytest.raises(ServerRejected) as exc:
        await second.deny(on_second)
    assert exc.value.status == 409
    seen = await login.status(created["id"])
    assert (seen["status"], seen["device"]) == ("approved", phone.device_id)
    assert await second.pending() == []


async def test_another_users_phone_cannot_fetch_or_answer(login: LoginFlow, phone: Phone,
                                                          http: aiohttp.ClientSession) -> None:
    bob = await Phone.enroll(await login.enroll_uri("bob@nhs.net"), session=http)
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])  # bob's phone even knows the nonce
    with pytest.raises(ServerRejected) as exc:
        await bob.fetch(created["id"])
    assert exc.value.status == 404
    for answer in ({"decision": "approve", "number": created["number"]}, {"decision": "deny"}):
        status, body = await bob.signed_request("POST", response_path(ch.id), {"nonce": ch.nonce, **answer})
        assert_error(status, body, 404)
    assert await bob.pending() == []
    await assert_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nothing-here", 404),
    ("GET", "/", 404),
    ("PATCH", "/v1/challenges", 405),
    ("PUT", "/v1/challenges/c" + "a" * 42, 405),
    ("POST", "/.well-known/jwks.json", 405),
    ("GET", "/v1/device/challenges/x/response", 405),
])
async def test_unknown_routes_and_methods_use_the_error_shape(server: RunningServer,
                                                              http: aiohttp.ClientSession, login: LoginFlow,
                                                              method: str, path: str, status: int) -> None:
    got, body = await call(http, method, server.url + path, headers=login.headers)
    assert_error(got, body, status)
