"""Enrollment over real HTTP: the QR-code URI, who may ask for one, the one-time code (single use, expiry,
consumed even by a failed registration), proof of possession of the new device key, and the device's own
management calls (push token, unenroll)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import msgspec
import pytest
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey
from support import ADMIN_TOKEN, OTHER_API_KEY, LoginFlow, RunningServer, assert_error

from pushauth.crypto import device_auth, jws
from pushauth.phone import Phone, PhoneError, ServerRejected

USER = "alice@nhs.net"
REQ_TYP = device_auth.REQUEST_TYP


# -- helpers ------------------------------------------------------------------------------------------------


def rfc7638(jwk: dict[str, Any]) -> str:
    """Independent RFC 7638 thumbprint: required EC members, sorted, no white space, SHA-256, base64url."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def b64(data: bytes) -> str:
    return jws.b64url_encode(data)


def public_jwk(key: ECKey) -> dict[str, str]:
    pub = key.as_dict(private=False)
    return {"kty": "EC", "crv": str(pub["crv"]), "x": str(pub["x"]), "y": str(pub["y"])}


def jti() -> str:
    return secrets.token_urlsafe(18)


def forge(header: dict[str, Any], claims: dict[str, Any], key: ECKey) -> str:
    """A compact JWS with any header, ECDSA-SHA256-signed by `key` with `cryptography` directly."""
    signing_input = f"{b64(msgspec.json.encode(header))}.{b64(msgspec.json.encode(claims))}"
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    size = (private.curve.key_size + 7) // 8
    return f"{signing_input}.{b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def registration_body(code: str, **overrides: Any) -> bytes:
    body: dict[str, Any] = {"code": code, "name": "Alice's Pixel", "platform": "android",
                            "push": {"provider": "none"}, **overrides}
    return msgspec.json.encode(body)


def registration_claims(raw: bytes, *, htu: str = "/v1/devices", iat: int | None = None) -> dict[str, Any]:
    return {"htm": "POST", "htu": htu, "iat": int(time.time()) if iat is None else iat, "jti": jti(),
            "bh": device_auth.body_hash(raw)}


async def post(http: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None,
               data: bytes | None = None, method: str = "POST") -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, data=data) as resp:
        raw = await resp.read()
        status = resp.status
    assert b"Traceback" not in raw
    return status, msgspec.json.decode(raw) if raw else None


async def register(http: aiohttp.ClientSession, server: RunningServer, raw: bytes,
                   token: str) -> tuple[int, Any]:
    return await post(http, f"{server.url}/v1/devices", data=raw,
                      headers={"Authorization": f"PushAuth {token}", "Content-Type": "application/json"})


async def new_code(login: LoginFlow, user: str = USER) -> tuple[str, str]:
    status, body = await login.call("POST", "/v1/enrollments", {"user": user})
    assert status == 201, body
    return str(body["uri"]), str(body["code"])


def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def enrollment_key(code: str) -> str:
    return f"pa:enr:{hashlib.sha256(code.encode()).hexdigest()}"


async def assert_code_spent(uri: str, http: aiohttp.ClientSession) -> None:
    """A correct registration with the code now fails: the code is gone."""
    with pytest.raises(ServerRejected) as exc:
        await Phone.enroll(uri, session=http)
    assert (exc.value.status, exc.value.error) == (401, "invalid_code")


# -- the enrollment URI -------------------------------------------------------------------------------------


async def test_enrollment_uri_format(server: RunningServer, http: aiohttp.ClientSession,
                                     login: LoginFlow) -> None:
    before = time.time()
    status, body = await login.call("POST", "/v1/enrollments", {"user": "  Alice@NHS.net "})
    assert status == 201, body
    assert set(body) == {"id", "user", "code", "uri", "expires_at", "activation"}
    assert body["activation"] == "immediate"  # the user's first phone
    assert body["user"] == USER
    assert isinstance(body["id"], str)
    assert body["id"]
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert before + 599 <= expires <= time.time() + 601  # default life 10 min

    code = body["code"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", code), code  # token_urlsafe(32)
    assert len(base64.urlsafe_b64decode(code + "=")) * 8 >= 128

    uri = body["uri"]
    assert uri.startswith("pushauth://enroll?")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("pushauth", "enroll", "", "")
    query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    assert [k for k, _ in query] == ["v", "server", "code", "jkt"]
    q = dict(query)
    assert q["v"] == "1"
    assert q["server"] == server.url
    assert q["code"] == code

    status, jwks = await post(http, f"{server.url}/.well-known/jwks.json", method="GET")
    assert status == 200
    current = jwks["keys"][0]  # the current key comes first
    assert q["jkt"] == rfc7638(current) == current["kid"]

    # every enrollment gets its own code
    status, again = await login.call("POST", "/v1/enrollments", {"user": USER})
    assert status == 201
    assert again["code"] != code
    assert again["id"] != body["id"]


async def test_who_may_create_enrollments(server: RunningServer, http: aiohttp.ClientSession,
                                          login: LoginFlow) -> None:
    url = f"{server.url}/v1/enrollments"
    raw = msgspec.json.encode({"user": USER})
    ctype = {"Content-Type": "application/json"}
    uris = []
    for token in (ADMIN_TOKEN, OTHER_API_KEY, login.headers["Authorization"].split()[1]):
        status, body = await post(http, url, headers={**ctype, "Authorization": f"Bearer {token}"}, data=raw)
        assert status == 201, body
        uris.append(body["uri"])
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": ADMIN_TOKEN}):
        status, body = await post(http, url, headers={**ctype, **headers}, data=raw)
        assert_error(status, body, 401)
    # a code made with the admin token enrolls like any other
    phone = await Phone.enroll(uris[0], session=http)
    assert phone.user == USER


@pytest.mark.parametrize(("raw", "status"), [
    (b"{", 400), (b"", 400), (b"{}", 422), (b'{"user": ""}', 422), (b'{"user": "   "}', 422),
    (b'{"user": 7}', 422), (b'{"user": "a@b", "role": "admin"}', 422), (b"[]", 422),
])
async def test_enrollment_request_validation(server: RunningServer, http: aiohttp.ClientSession,
                                             login: LoginFlow, raw: bytes, status: int) -> None:
    got, body = await post(http, f"{server.url}/v1/enrollments",
                           headers={**login.headers, "Content-Type": "application/json"}, data=raw)
    assert_error(got, body, status)


# -- the one-time code --------------------------------------------------------------------------------------


async def test_code_is_single_use(login: LoginFlow, http: aiohttp.ClientSession) -> None:
    uri, _ = await new_code(login)
    phone = await Phone.enroll(uri, session=http)
    assert phone.user == USER
    await assert_code_spent(uri, http)


async def test_code_is_single_use_under_concurrency(login: LoginFlow, http: aiohttp.ClientSession) -> None:
    uri, _ = await new_code(login)
    results = await asyncio.gather(*(Phone.enroll(uri, session=http) for _ in range(10)),
                                   return_exceptions=True)
    phones = [r for r in results if isinstance(r, Phone)]
    refused = [r for r in results if isinstance(r, ServerRejected)]
    assert len(phones) == 1, results
    assert len(refused) == 9
    assert all((r.status, r.error) == (401, "invalid_code") for r in refused)


async def test_expired_code_by_its_exp_field(login: LoginFlow, http: aiohttp.ClientSession,
                                             redis_url: str) -> None:
    """The stored expiry is checked, not only the Redis TTL (a key whose TTL was lost must not live on)."""
    uri, code = await new_code(login)
    with redis_client(redis_url) as r:
        assert r.exists(enrollment_key(code)) == 1
        r.hset(enrollment_key(code), "exp", int(time.time()) - 1)
    await assert_code_spent(uri, http)


async def test_expired_code_by_ttl(login: LoginFlow, http: aiohttp.ClientSession, redis_url: str) -> None:
    uri, code = await new_code(login)
    with redis_client(redis_url) as r:
        ttl = r.ttl(enrollment_key(code))
        assert isinstance(ttl, int)
        assert 590 <= ttl <= 600
        r.pexpire(enrollment_key(code), 1)
    await asyncio.sleep(0.05)
    await assert_code_spent(uri, http)


async def test_unknown_code(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow) -> None:
    uri, code = await new_code(login)
    key = ECKey.generate_key("P-256", private=True)
    for wrong in (code[:-1] + ("A" if code[-1] != "A" else "B"), code.upper(), "x"):
        raw = registration_body(wrong)
        token = forge({"alg": "ES256", "typ": REQ_TYP, "jwk": public_jwk(key)}, registration_claims(raw), key)
        status, body = await register(http, server, raw, token)
        assert_error(status, body, 401, "invalid_code")
    # guessing wrong codes did not spend the real one
    assert (await Phone.enroll(uri, session=http)).user == USER


def _bad_registration(kind: str, raw: bytes, key: ECKey) -> str:
    """A registration token, wrong in exactly one respect."""
    good_header = {"alg": "ES256", "typ": REQ_TYP, "jwk": public_jwk(key)}
    claims = registration_claims(raw)
    if kind == "bad_signature":
        head, payload, sig = forge(good_header, claims, key).split(".")
        flipped = bytearray(jws.b64url_decode(sig))
        flipped[5] ^= 0x01
        return f"{head}.{payload}.{b64(bytes(flipped))}"
    if kind == "kid_instead_of_jwk":
        return forge({"alg": "ES256", "typ": REQ_TYP, "kid": "d" + "a" * 32}, claims, key)
    if kind == "kid_and_jwk":
        return forge({**good_header, "kid": "d" + "a" * 32}, claims, key)
    if kind == "no_key":
        return forge({"alg": "ES256", "typ": REQ_TYP}, claims, key)
    if kind == "private_jwk":
        return forge({**good_header, "jwk": {**public_jwk(key), "d": str(key.as_dict(private=True)["d"])}},
                     claims, key)
    if kind == "p384_jwk":
        p384 = ECKey.generate_key("P-384", private=True)
        return forge({**good_header, "jwk": public_jwk(p384)}, claims, p384)
    if kind == "okp_jwk":
        okp = {"kty": "OKP", "crv": "Ed25519", "x": b64(bytes(32))}
        return forge({**good_header, "jwk": okp}, claims, key)
    if kind == "point_not_on_curve":
        jwk = public_jwk(key)
        return forge({**good_header, "jwk": {**jwk, "y": jwk["x"]}}, claims, key)
    if kind == "jwk_of_a_signed_by_b":
        other = ECKey.generate_key("P-256", private=True)
        return forge(good_header, claims, other)
    if kind == "extra_jwk_member":
        extended = {**public_jwk(key), "x5u": "https://attacker.example/"}
        return forge({**good_header, "jwk": extended}, claims, key)
    if kind in BAD_JWKS:
        return forge({**good_header, "jwk": BAD_JWKS[kind](public_jwk(key))}, claims, key)
    if kind == "jku_header":
        return forge({**good_header, "jku": "https://attacker.example/jwks.json"}, claims, key)
    if kind == "alg_none":
        signing_input = (f"{b64(msgspec.json.encode({**good_header, 'alg': 'none'}))}."
                         f"{b64(msgspec.json.encode(claims))}")
        return signing_input + "."
    if kind == "wrong_typ":
        return forge({**good_header, "typ": "JWT"}, claims, key)
    if kind == "stale_iat":
        return forge(good_header, {**claims, "iat": int(time.time()) - 120}, key)
    if kind == "wrong_htu":
        return forge(good_header, {**claims, "htu": "/v1/devices?x=1"}, key)
    if kind == "wrong_htm":
        return forge(good_header, {**claims, "htm": "PUT"}, key)
    if kind == "wrong_bh":
        return forge(good_header, {**claims, "bh": device_auth.body_hash(raw + b" ")}, key)
    raise AssertionError(kind)


BAD_JWKS: dict[str, Any] = {
    "jwk_null": lambda jwk: None,
    "jwk_string": lambda jwk: "EC P-256",
    "jwk_list": lambda jwk: [jwk],
    "jwk_empty": lambda jwk: {},
    "jwk_int_coordinates": lambda jwk: {**jwk, "x": 1, "y": 2},
    "jwk_short_x": lambda jwk: {**jwk, "x": jwk["x"][:10]},
    "jwk_empty_x": lambda jwk: {**jwk, "x": ""},
    "jwk_bad_base64": lambda jwk: {**jwk, "x": "!!!!" + jwk["x"][4:]},
    "jwk_missing_y": lambda jwk: {k: v for k, v in jwk.items() if k != "y"},
    "jwk_rsa": lambda jwk: {"kty": "RSA", "n": jwk["x"], "e": "AQAB"},
    "jwk_oct": lambda jwk: {"kty": "oct", "k": jwk["x"]},
    "jwk_wrong_crv_name": lambda jwk: {**jwk, "crv": "secp256k1"},
}

BAD_REGISTRATIONS = [*BAD_JWKS, "bad_signature", "kid_instead_of_jwk", "kid_and_jwk", "no_key", "private_jwk",
                     "p384_jwk", "okp_jwk", "point_not_on_curve", "jwk_of_a_signed_by_b", "extra_jwk_member",
                     "jku_header",
                     "alg_none", "wrong_typ", "stale_iat", "wrong_htu", "wrong_htm", "wrong_bh"]


@pytest.mark.parametrize("kind", BAD_REGISTRATIONS)
async def test_bad_registration_is_refused_and_spends_the_code(server: RunningServer,
                                                               http: aiohttp.ClientSession, login: LoginFlow,
                                                               kind: str) -> None:
    uri, code = await new_code(login)
    key = ECKey.generate_key("P-256", private=True)
    raw = registration_body(code)
    status, body = await register(http, server, raw, _bad_registration(kind, raw, key))
    assert_error(status, body, 401)
    # no device was registered for the user ...
    status, body = await login.call("POST", "/v1/challenges", {"user": USER})
    assert_error(status, body, 403, "not_enrolled")
    # ... and the code is gone even though the request failed
    await assert_code_spent(uri, http)


async def test_deeply_nested_registration_header_is_401_not_500(server: RunningServer,
                                                                http: aiohttp.ClientSession,
                                                                login: LoginFlow) -> None:
    uri, code = await new_code(login)
    key = ECKey.generate_key("P-256", private=True)
    raw = registration_body(code)
    header = msgspec.json.encode({"alg": "ES256", "typ": REQ_TYP, "jwk": public_jwk(key)})
    header = header[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    signing_input = f"{b64(header)}.{b64(msgspec.json.encode(registration_claims(raw)))}"
    status, body = await register(http, server, raw, f"{signing_input}.{b64(b'x' * 64)}")
    assert_error(status, body, 401)
    await assert_code_spent(uri, http)


async def test_control_hand_built_registration_is_accepted(server: RunningServer, http: aiohttp.ClientSession,
                                                           login: LoginFlow) -> None:
    """The same builder with nothing wrong works, and the phone's pin holds: the server keys in the answer
    contain the key whose thumbprint is the URI's jkt."""
    uri, code = await new_code(login)
    jkt = dict(parse_qsl(urlsplit(uri).query))["jkt"]
    key = ECKey.generate_key("P-256", private=True)
    raw = registration_body(code, push={"provider": "fcm", "token": "fcm-token-123"}, platform="ios")
    token = forge({"alg": "ES256", "typ": REQ_TYP, "jwk": public_jwk(key)}, registration_claims(raw), key)
    status, body = await register(http, server, raw, token)
    assert status == 201, body
    assert set(body) == {"device_id", "user", "server_keys", "status"}
    assert body["status"] == "active"  # the user's first phone
    assert body["user"] == USER
    assert re.fullmatch(r"d[a-z2-7]{32}", body["device_id"]), body["device_id"]
    keys = body["server_keys"]["keys"]
    assert [k for k in keys if k["kid"] == jkt and rfc7638(k) == jkt]
    for k in keys:
        assert "d" not in k
        assert (k["kty"], k["crv"], k["use"], k["alg"]) == ("EC", "P-256", "sig", "ES256")

    # the device registered with that key works
    phone = Phone(device_id=body["device_id"], user=body["user"], server=server.url, key=key,
                  server_keys={k["kid"]: jws.import_public_jwk(k) for k in keys}, session=http)
    created = await login.create(USER)
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
    await assert_code_spent(uri, http)


async def test_phone_enroll_checks_the_pin(server: RunningServer, http: aiohttp.ClientSession,
                                           login: LoginFlow) -> None:
    uri, _ = await new_code(login)
    jkt = dict(parse_qsl(urlsplit(uri).query))["jkt"]
    phone = await Phone.enroll(uri, session=http)
    status, jwks = await post(http, f"{server.url}/.well-known/jwks.json", method="GET")
    assert status == 200
    assert jkt in [rfc7638(k) for k in jwks["keys"]]
    assert phone.device_id
    assert phone.user == USER


async def test_phone_sends_no_code_to_a_server_without_the_pinned_key(
        server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow) -> None:
    """A QR code naming a key the server does not hold (a look-alike server): the phone checks the JWKS
    before it sends the code, so the code is still unspent for the real enrollment."""
    uri, _ = await new_code(login)
    jkt = dict(parse_qsl(urlsplit(uri).query))["jkt"]
    forged = uri.replace(jkt, ("A" if jkt[0] != "A" else "B") + jkt[1:])
    with pytest.raises(PhoneError, match="was not sent"):
        await Phone.enroll(forged, session=http)
    phone = await Phone.enroll(uri, session=http)  # the code was never spent
    assert phone.device_id


@pytest.mark.parametrize(("overrides", "field"), [
    ({"platform": "windows"}, "platform"),
    ({"push": {"provider": "fcm"}}, "token"),
    ({"push": {"provider": "apns"}}, "token"),
    ({"push": {"provider": "fcm", "token": ""}}, "token"),
    ({"push": {"provider": "pigeon"}}, "provider"),
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": 5}, "name"),
    ({"colour": "blue"}, "colour"),
])
async def test_registration_validation(server: RunningServer, http: aiohttp.ClientSession, login: LoginFlow,
                                       overrides: dict[str, Any], field: str) -> None:
    uri, code = await new_code(login)
    key = ECKey.generate_key("P-256", private=True)
    raw = registration_body(code, **overrides)
    token = forge({"alg": "ES256", "typ": REQ_TYP, "jwk": public_jwk(key)}, registration_claims(raw), key)
    status, body = await register(http, server, raw, token)
    assert_error(status, body, 422)
    assert field in body["message"], body
    status, body = await login.call("POST", "/v1/challenges", {"user": USER})
    assert_error(status, body, 403, "not_enrolled")
    # the contract: the code is consumed even if the request carrying it fails
    await assert_code_spent(uri, http)


async def test_registration_without_authorization(server: RunningServer, http: aiohttp.ClientSession,
                                                  login: LoginFlow) -> None:
    for headers in ({}, {"Authorization": "Bearer x.y.z"}):
        uri, code = await new_code(login)
        raw = registration_body(code)
        status, body = await post(http, f"{server.url}/v1/devices", data=raw,
                                  headers={**headers, "Content-Type": "application/json"})
        assert_error(status, body, 401)
        await assert_code_spent(uri, http)


# -- devices and their challenges ---------------------------------------------------------------------------


async def test_each_user_gets_only_their_own_challenges(login: LoginFlow,
                                                        http: aiohttp.ClientSession) -> None:
    alice = await Phone.enroll((await new_code(login, USER))[0], session=http)
    bob = await Phone.enroll((await new_code(login, "bob@nhs.net"))[0], session=http)
    assert alice.user == USER
    assert bob.user == "bob@nhs.net"
    assert alice.device_id != bob.device_id
    for_alice = await login.create(USER)
    for_bob = await login.create("BOB@nhs.net")
    assert [c.id for c in await alice.pending()] == [for_alice["id"]]
    assert [c.id for c in await bob.pending()] == [for_bob["id"]]
    with pytest.raises(ServerRejected) as exc:
        await bob.fetch(for_alice["id"])
    assert exc.value.status == 404
    assert await bob.approve(for_bob["id"], number=for_bob["number"]) == "approved"
    assert (await login.status(for_alice["id"]))["status"] == "pending"
    assert await alice.deny(for_alice["id"]) == "denied"


async def test_unenroll(login: LoginFlow, phone: Phone, http: aiohttp.ClientSession) -> None:
    assert await phone.signed_request("DELETE", "/v1/device") == (200, {"status": "revoked"})
    for method, path in (("GET", "/v1/device/challenges"), ("DELETE", "/v1/device")):
        status, body = await phone.signed_request(method, path)
        assert_error(status, body, 401, "device_revoked")
    status, body = await phone.signed_request("PUT", "/v1/device/push-token", {"provider": "none"})
    assert_error(status, body, 401, "device_revoked")
    # the user has no active phone now
    status, body = await login.call("POST", "/v1/challenges", {"user": USER})
    assert_error(status, body, 403, "not_enrolled")
    # enrolling again works and gets a new device id
    again = await Phone.enroll(await login.enroll_uri(USER), session=http)
    assert again.device_id != phone.device_id
    created = await login.create(USER)
    assert [c.id for c in await again.pending()] == [created["id"]]


async def test_push_token_update(login: LoginFlow, phone: Phone) -> None:
    for body in ({"provider": "fcm", "token": "new-fcm-token"}, {"provider": "apns", "token": "a" * 64},
                 {"provider": "none"}):
        status, got = await phone.signed_request("PUT", "/v1/device/push-token", body)
        assert (status, got) == (200, {"status": "updated"})
    invalid: list[dict[str, Any]] = [{"provider": "fcm"}, {"provider": "apns", "token": ""},
                                     {"provider": "gcm", "token": "x"}, {"token": "x"},
                                     {"provider": "fcm", "token": "x", "extra": 1}]
    for bad in invalid:
        status, got = await phone.signed_request("PUT", "/v1/device/push-token", bad)
        assert_error(status, got, 422)
    # the device keeps working as before
    created = await login.create(USER)
    assert [c.id for c in await phone.pending()] == [created["id"]]
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
