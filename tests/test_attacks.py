"""Attacks on the device API: forged, replayed, stale, wrong-key, wrong-request and wrong-challenge
signatures, and the classic JWS header tricks.

Each attack targets a pending challenge and must be refused with a 4xx in the contract's error shape; the
challenge must then still be `pending` for the login flow and the real phone must still be able to approve
it (the refusal left no trace in the state: no decision, no spent nonce, no locked challenge).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey
from support import LoginFlow, RunningServer, add_phone, assert_error, redis_snapshot

from pushauth.crypto import device_auth, jws
from pushauth.phone import Challenge, Phone, ServerRejected

USER = "alice@nhs.net"
REQ_TYP = device_auth.REQUEST_TYP


# -- helpers ------------------------------------------------------------------------------------------------


def jti() -> str:
    return secrets.token_urlsafe(18)


def b64(data: bytes) -> str:
    return jws.b64url_encode(data)


def response_path(cid: str) -> str:
    return f"/v1/device/challenges/{cid}/response"


def device_key(phone: Phone) -> ECKey:
    """The phone's private key: the attacker model here is "everything but this key", and the tests need
    it to build requests that differ from a legitimate one in exactly one respect."""
    return phone._key


def public_jwk(key: ECKey) -> dict[str, str]:
    pub = key.as_dict(private=False)
    return {"kty": "EC", "crv": str(pub["crv"]), "x": str(pub["x"]), "y": str(pub["y"])}


def request_claims(method: str, path_qs: str, body: bytes = b"", *, iat: int | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"htm": method, "htu": path_qs, "iat": int(time.time()) if iat is None else iat,
                              "jti": jti()}
    if body:
        claims["bh"] = device_auth.body_hash(body)
    return claims


def sign(key: ECKey, method: str, path_qs: str, body: bytes = b"", *, kid: str | None,
         jwk: dict[str, str] | None = None, iat: int | None = None) -> str:
    """A device request token exactly as a phone makes it (fresh jti, current time unless `iat`)."""
    return device_auth.sign_request(key, method=method, path_qs=path_qs, body=body, jti=jti(),
                                    iat=int(time.time()) if iat is None else iat, kid=kid, jwk=jwk)


def ecdsa_sign(key: ECKey, signing_input: bytes) -> bytes:
    """A raw r||s ECDSA-SHA256 signature (the JWS form), made with `cryptography` directly."""
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    size = (private.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def forge_raw(header: bytes, claims: bytes, key: ECKey | None) -> str:
    """A compact JWS over exactly these header and payload bytes, ES256-signed by `key` (or unsigned)."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    signature = ecdsa_sign(key, signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64(signature)}"


def forge(header: dict[str, Any], claims: dict[str, Any], key: ECKey | None) -> str:
    """A compact JWS with any header we like, validly ES256-signed by `key` (or unsigned if None)."""
    return forge_raw(msgspec.json.encode(header), msgspec.json.encode(claims), key)


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(msgspec.json.encode(header))}.{b64(msgspec.json.encode(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def answer_body(ch: Challenge, created: dict[str, Any], decision: str = "approve") -> bytes:
    body: dict[str, Any] = {"nonce": ch.nonce, "decision": decision}
    if decision == "approve":
        body["number"] = created["number"]
    return msgspec.json.encode(body)


async def send(phone: Phone, method: str, path_qs: str, token: str,
               body: bytes | None = None) -> tuple[int, Any]:
    """Send a pre-built device request token (and exactly these body bytes)."""
    return await phone.signed_request(method, path_qs, raw_body=body, token=token)


async def send_raw(http: aiohttp.ClientSession, server: RunningServer, method: str, path_qs: str,
                   headers: dict[str, str], body: bytes | None = None) -> tuple[int, Any]:
    async with http.request(method, server.url + path_qs, headers=headers, data=body) as resp:
        raw = await resp.read()
        status = resp.status
    assert b"Traceback" not in raw
    return status, msgspec.json.decode(raw) if raw else None


async def still_pending_then_approvable(login: LoginFlow, phone: Phone, created: dict[str, Any]) -> None:
    """The attack changed nothing: pending for the login flow, and the real phone can still approve."""
    seen = await login.status(created["id"])
    assert seen["status"] == "pending", seen
    assert "assertion" not in seen
    assert "reason" not in seen
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
    seen = await login.status(created["id"])
    assert (seen["status"], seen["device"]) == ("approved", phone.device_id)


@pytest.fixture
async def target(login: LoginFlow, phone: Phone) -> tuple[dict[str, Any], Challenge]:
    """A pending challenge for alice, and the phone's verified view of it (nonce included)."""
    created = await login.create(USER)
    return created, await phone.fetch(created["id"])


Target = tuple[dict[str, Any], Challenge]


# -- controls: the building blocks work when nothing is wrong -----------------------------------------------


async def test_control_hand_built_requests_are_accepted(login: LoginFlow, phone: Phone,
                                                        target: Target) -> None:
    """Proves the helpers below build valid requests, so each refusal is caused by the one thing changed."""
    created, ch = target
    path = f"/v1/device/challenges/{ch.id}"
    header = {"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id}
    token = forge(header, request_claims("GET", path), device_key(phone))
    status, body = await send(phone, "GET", path, token)
    assert status == 200, body
    # a clock 30 s off is inside the allowed skew
    status, body = await send(phone, "GET", path, forge(header, request_claims("GET", path,
                                                                               iat=int(time.time()) - 30),
                                                        device_key(phone)))
    assert status == 200, body
    raw = answer_body(ch, created)
    token = forge(header, request_claims("POST", response_path(ch.id), raw), device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert (status, body) == (200, {"status": "approved"})


# -- signatures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip_first_bit", "flip_last_byte", "truncate", "swap_r_s", "zero"])
async def test_forged_signature(login: LoginFlow, phone: Phone, target: Target, how: str) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    token = sign(device_key(phone), "POST", response_path(ch.id), raw, kid=phone.device_id)
    head, claims, sig_b64 = token.split(".")
    sig = bytearray(jws.b64url_decode(sig_b64))
    if how == "flip_first_bit":
        sig[0] ^= 0x80
    elif how == "flip_last_byte":
        sig[-1] ^= 0xFF
    elif how == "truncate":
        sig = sig[:-1]
    elif how == "swap_r_s":
        sig = sig[32:] + sig[:32]
    else:
        sig = bytearray(64)
    status, body = await send(phone, "POST", response_path(ch.id), f"{head}.{claims}.{b64(bytes(sig))}", raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_forged_payload_under_a_valid_signature(login: LoginFlow, phone: Phone, target: Target) -> None:
    """Take a signed GET and graft a POST payload onto its header and signature."""
    created, ch = target
    raw = answer_body(ch, created)
    get_token = sign(device_key(phone), "GET", f"/v1/device/challenges/{ch.id}", kid=phone.device_id)
    head, _, sig = get_token.split(".")
    claims = b64(msgspec.json.encode(request_claims("POST", response_path(ch.id), raw)))
    status, body = await send(phone, "POST", response_path(ch.id), f"{head}.{claims}.{sig}", raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_wrong_device_key(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    attacker = ECKey.generate_key("P-256", private=True)
    token = sign(attacker, "POST", response_path(ch.id), raw, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_another_devices_key(login: LoginFlow, phone: Phone, http: aiohttp.ClientSession,
                                   target: Target) -> None:
    """Bob's real device key, claiming to be alice's phone."""
    created, ch = target
    bob = await Phone.enroll(await login.enroll_uri("bob@nhs.net"), session=http)
    raw = answer_body(ch, created)
    token = sign(device_key(bob), "POST", response_path(ch.id), raw, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


# -- the wrong challenge ------------------------------------------------------------------------------------


async def test_signature_made_for_another_challenge(login: LoginFlow, phone: Phone) -> None:
    a = await login.create(USER)
    b = await login.create(USER)
    ch_a, ch_b = await phone.fetch(a["id"]), await phone.fetch(b["id"])

    # signed for B's response path, sent to A's
    raw = answer_body(ch_a, a)
    token = sign(device_key(phone), "POST", response_path(ch_b.id), raw, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch_a.id), token, raw)
    assert_error(status, body, 401)

    # properly signed for A's path, but carrying B's nonce
    status, body = await phone.signed_request(
        "POST", response_path(ch_a.id), {"nonce": ch_b.nonce, "decision": "approve", "number": a["number"]})
    assert_error(status, body, 422, "bad_nonce")
    status, body = await phone.signed_request(
        "POST", response_path(ch_a.id), {"nonce": ch_b.nonce, "decision": "deny", "reason": "not_me"})
    assert_error(status, body, 422, "bad_nonce")

    # neither challenge moved
    assert (await login.status(b["id"]))["status"] == "pending"
    await still_pending_then_approvable(login, phone, a)
    await still_pending_then_approvable(login, phone, b)


@pytest.mark.parametrize("nonce", ["", "x", "A" * 22, "A" * 129])
async def test_made_up_nonce(login: LoginFlow, phone: Phone, target: Target, nonce: str) -> None:
    created, ch = target
    status, body = await phone.signed_request(
        "POST", response_path(ch.id), {"nonce": nonce, "decision": "approve", "number": created["number"]})
    assert_error(status, body, 422)
    await still_pending_then_approvable(login, phone, created)


# -- replays ------------------------------------------------------------------------------------------------


async def test_replayed_get(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    for path in (f"/v1/device/challenges/{ch.id}", "/v1/device/challenges"):
        token = sign(device_key(phone), "GET", path, kid=phone.device_id)
        status, body = await send(phone, "GET", path, token)
        assert status == 200, body
        status, body = await send(phone, "GET", path, token)
        assert_error(status, body, 401, "replayed")
    await still_pending_then_approvable(login, phone, created)


async def test_replay_of_a_refused_answer_is_still_a_replay(login: LoginFlow, phone: Phone,
                                                            target: Target) -> None:
    created, ch = target
    raw = msgspec.json.encode({"nonce": "W" * 22, "decision": "approve", "number": created["number"]})
    token = sign(device_key(phone), "POST", response_path(ch.id), raw, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 422, "bad_nonce")
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401, "replayed")
    await still_pending_then_approvable(login, phone, created)


async def test_jti_reused_with_a_new_signature_is_a_replay(login: LoginFlow, phone: Phone,
                                                           target: Target) -> None:
    """Same jti, freshly signed over a different request: the jti alone is the replay key."""
    created, ch = target
    used = jti()
    status, _ = await phone.signed_request("GET", f"/v1/device/challenges/{ch.id}", jti=used)
    assert status == 200
    status, body = await phone.signed_request("POST", response_path(ch.id), raw_body=answer_body(ch, created),
                                              jti=used)
    assert_error(status, body, 401, "replayed")
    await still_pending_then_approvable(login, phone, created)


async def test_replayed_approval_is_refused_as_replay(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    token = sign(device_key(phone), "POST", response_path(ch.id), raw, kid=phone.device_id)
    assert await send(phone, "POST", response_path(ch.id), token, raw) == (200, {"status": "approved"})
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401, "replayed")
    assert (await login.status(created["id"]))["status"] == "approved"


@pytest.mark.parametrize("bad_jti", ["short", "a" * 65, "has space in it!!", "ünïcödé-ünïcödé-ü",
                                     12345678901234567])
async def test_malformed_jti(login: LoginFlow, phone: Phone, target: Target, bad_jti: Any) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    claims = {**request_claims("POST", response_path(ch.id), raw), "jti": bad_jti}
    token = forge({"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id}, claims, device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_missing_jti(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    claims = request_claims("POST", response_path(ch.id), raw)
    del claims["jti"]
    token = forge({"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id}, claims, device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


# -- request binding: time, method, path, body --------------------------------------------------------------


@pytest.mark.parametrize("offset", [-120, 120, -61, 61])
async def test_stale_or_future_iat(login: LoginFlow, phone: Phone, target: Target, offset: int) -> None:
    created, ch = target
    status, body = await phone.signed_request("POST", response_path(ch.id), raw_body=answer_body(ch, created),
                                              iat=int(time.time()) + offset)
    assert_error(status, body, 401, "stale_request")
    await still_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("kind", ["string", "float", "bool", "null", "missing"])
async def test_non_integer_iat(login: LoginFlow, phone: Phone, target: Target, kind: str) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    claims = request_claims("POST", response_path(ch.id), raw)
    values: dict[str, Any] = {"string": str(claims["iat"]), "float": time.time(), "bool": True, "null": None}
    if kind == "missing":
        del claims["iat"]
    else:
        claims["iat"] = values[kind]
    token = forge({"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id}, claims, device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("signed_htu", [
    "{path}?x=1",                          # same path, different query
    "{path}/",
    "/v1/device/challenges/{cid}",         # another endpoint
    "/v1/device/challenges",
    "{base}{path}",                        # absolute URL instead of the path
    "{upper}",
    "",
])
async def test_wrong_htu(login: LoginFlow, phone: Phone, server: RunningServer, target: Target,
                         signed_htu: str) -> None:
    created, ch = target
    path = response_path(ch.id)
    htu = signed_htu.format(path=path, cid=ch.id, base=server.url, upper=path.upper())
    raw = answer_body(ch, created)
    token = sign(device_key(phone), "POST", htu, raw, kid=phone.device_id)
    status, body = await send(phone, "POST", path, token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_query_added_to_a_signed_path(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    path = response_path(ch.id)
    raw = answer_body(ch, created)
    token = sign(device_key(phone), "POST", path, raw, kid=phone.device_id)
    status, body = await send(phone, "POST", f"{path}?x=1", token, raw)
    assert_error(status, body, 401)
    # and for a read: the signed path without query, sent with one
    get_path = f"/v1/device/challenges/{ch.id}"
    token = sign(device_key(phone), "GET", get_path, kid=phone.device_id)
    status, body = await send(phone, "GET", f"{get_path}?a=b", token)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("signed_method", ["GET", "PUT", "DELETE", "post", ""])
async def test_wrong_htm(login: LoginFlow, phone: Phone, target: Target, signed_method: str) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    token = sign(device_key(phone), signed_method, response_path(ch.id), raw, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_body_does_not_match_bh(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    signed = answer_body(ch, created, "deny")
    sent = answer_body(ch, created, "approve")
    token = sign(device_key(phone), "POST", response_path(ch.id), signed, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, sent)
    assert_error(status, body, 401)
    # the same JSON with one byte of white space more is a different body
    token = sign(device_key(phone), "POST", response_path(ch.id), sent, kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, sent + b" ")
    assert_error(status, body, 401)
    # signed with no body (so no bh at all), sent with one
    token = sign(device_key(phone), "POST", response_path(ch.id), kid=phone.device_id)
    status, body = await send(phone, "POST", response_path(ch.id), token, sent)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


# -- JWS header attacks -------------------------------------------------------------------------------------


async def test_alg_none(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    for alg in ("none", "None", "NONE"):
        claims = request_claims("POST", response_path(ch.id), raw)
        unsigned = forge({"alg": alg, "typ": REQ_TYP, "kid": phone.device_id}, claims, None)
        assert unsigned.endswith(".")
        for token in (unsigned, unsigned + "AAAA"):  # empty signature, and a junk one
            status, body = await send(phone, "POST", response_path(ch.id), token, raw)
            assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_hs256_keyed_with_the_public_key(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    key = device_key(phone)
    pub = public_jwk(key)
    secrets_to_try = [
        key.as_pem(private=False),
        msgspec.json.encode(pub),
        msgspec.json.encode({k: pub[k] for k in sorted(pub)}),
        msgspec.json.encode({**pub, "kid": phone.device_id}),
        jws.b64url_decode(pub["x"]) + jws.b64url_decode(pub["y"]),
    ]
    for alg in ("HS256", "hs256"):
        for secret in secrets_to_try:
            claims = request_claims("POST", response_path(ch.id), raw)
            token = hs256({"alg": alg, "typ": REQ_TYP, "kid": phone.device_id}, claims, secret)
            status, body = await send(phone, "POST", response_path(ch.id), token, raw)
            assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA", "ES256K", ""])
async def test_other_algorithms(login: LoginFlow, phone: Phone, target: Target, alg: str) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    token = forge({"alg": alg, "typ": REQ_TYP, "kid": phone.device_id},
                  request_claims("POST", response_path(ch.id), raw), device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_jwk_header_on_a_device_call(login: LoginFlow, phone: Phone, target: Target) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    key = device_key(phone)
    attacker = ECKey.generate_key("P-256", private=True)
    for signer, kid in ((key, None), (key, phone.device_id), (attacker, None), (attacker, phone.device_id)):
        token = sign(signer, "POST", response_path(ch.id), raw, kid=kid, jwk=public_jwk(signer))
        status, body = await send(phone, "POST", response_path(ch.id), token, raw)
        assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


@pytest.mark.parametrize("extra", [
    {"jku": "https://attacker.example/jwks.json"},
    {"x5u": "https://attacker.example/cert.pem"},
    {"x5c": ["MIIB"]},
    {"crit": ["exp"], "exp": 1},
    {"crit": ["b64"], "b64": False},
    {"cty": "JWT"},
    {"zip": "DEF"},
])
async def test_forbidden_header_fields(login: LoginFlow, phone: Phone, target: Target,
                                       extra: dict[str, Any]) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    header = {"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id, **extra}
    token = forge(header, request_claims("POST", response_path(ch.id), raw), device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def refused_leaving_no_trace(login: LoginFlow, phone: Phone, created: dict[str, Any], redis_url: str,
                                   token: str, raw: bytes) -> None:
    """The answer `raw` sent with `token` is 401 bad_signature, and Redis holds exactly what it held."""
    before = await redis_snapshot(redis_url)
    status, body = await send(phone, "POST", response_path(created["id"]), token, raw)
    assert_error(status, body, 401, "bad_signature")
    assert await redis_snapshot(redis_url) == before
    await still_pending_then_approvable(login, phone, created)


# A key twice, each copy what one kind of parser keeps: the first (a proxy, a firewall) or the last
# (msgspec, Python's json). Validly signed by the phone's own key, so only the duplicate can refuse them.
DUPLICATED_HEADERS = {
    "alg none first": b'{"alg":"none","typ":"%(typ)s","kid":"%(kid)s","alg":"ES256"}',
    "alg none last": b'{"alg":"ES256","typ":"%(typ)s","kid":"%(kid)s","alg":"none"}',
    "alg escaped": b'{"\\u0061lg":"HS256","typ":"%(typ)s","kid":"%(kid)s","alg":"ES256"}',
    "kid twice": b'{"alg":"ES256","typ":"%(typ)s","kid":"dunknowndevice0000000000000","kid":"%(kid)s"}',
    "typ twice": b'{"alg":"ES256","typ":"pushauth-challenge+jwt","typ":"%(typ)s","kid":"%(kid)s"}',
}


@pytest.mark.parametrize("header", DUPLICATED_HEADERS.values(), ids=DUPLICATED_HEADERS.keys())
async def test_a_header_with_a_key_twice(login: LoginFlow, phone: Phone, target: Target, redis_url: str,
                                         header: bytes) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    claims = msgspec.json.encode(request_claims("POST", response_path(ch.id), raw))
    header = header % {b"typ": REQ_TYP.encode(), b"kid": phone.device_id.encode()}
    token = forge_raw(header, claims, device_key(phone))
    await refused_leaving_no_trace(login, phone, created, redis_url, token, raw)


@pytest.mark.parametrize("claim", ["htu", "bh", "jti", "htm"])
async def test_a_payload_with_a_key_twice(login: LoginFlow, phone: Phone, target: Target, redis_url: str,
                                          claim: str) -> None:
    """The phone's own signature over claims that name one twice: the last copy is the request's (which a
    last-wins parser would accept), the first another's."""
    created, ch = target
    raw = answer_body(ch, created)
    real = request_claims("POST", response_path(ch.id), raw)
    other = {"htu": response_path("c" + "x" * 42), "bh": device_auth.body_hash(b"{}"), "jti": jti(),
             "htm": "PUT"}[claim]
    claims = msgspec.json.encode({**real, claim: other})[:-1] + b',"%s":' % claim.encode() + \
        msgspec.json.encode(real[claim]) + b"}"
    header = msgspec.json.encode({"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id})
    token = forge_raw(header, claims, device_key(phone))
    await refused_leaving_no_trace(login, phone, created, redis_url, token, raw)


@pytest.mark.parametrize("typ", ["pushauth-challenge+jwt", "pushauth-assertion+jwt", "JWT", "dpop+jwt",
                                 "PUSHAUTH-REQ+JWT", None])
async def test_wrong_typ(login: LoginFlow, phone: Phone, target: Target, typ: str | None) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    header: dict[str, Any] = {"alg": "ES256", "kid": phone.device_id}
    if typ is not None:
        header["typ"] = typ
    token = forge(header, request_claims("POST", response_path(ch.id), raw), device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


# -- key identity and the Authorization header -------------------------------------------------------------


@pytest.mark.parametrize("kid", ["unknown", "malformed", "other_uid", "empty", "int", "null", "traversal"])
async def test_unknown_or_malformed_kid(login: LoginFlow, phone: Phone, target: Target, kid: str) -> None:
    created, ch = target
    did = phone.device_id
    kids: dict[str, Any] = {
        "unknown": did[:17] + "a" * 16,                    # the user's uid, a device that does not exist
        "malformed": "not-a-device-id",
        "other_uid": "d" + "b" * 32,
        "empty": "",
        "int": 12345,
        "null": None,
        "traversal": f"{did}/../{did}",
    }
    raw = answer_body(ch, created)
    token = forge({"alg": "ES256", "typ": REQ_TYP, "kid": kids[kid]},
                  request_claims("POST", response_path(ch.id), raw), device_key(phone))
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_authorization_header_forms(login: LoginFlow, phone: Phone, server: RunningServer,
                                          http: aiohttp.ClientSession, target: Target) -> None:
    created, ch = target
    path = response_path(ch.id)
    raw = answer_body(ch, created)
    ctype = {"Content-Type": "application/json"}
    for make_header in (
        lambda t: {},
        lambda t: {"Authorization": f"Bearer {t}"},
        lambda t: {"Authorization": f"DPoP {t}"},
        lambda t: {"Authorization": "PushAuth"},
        lambda t: {"Authorization": "PushAuth "},
        lambda t: {"Authorization": t},
        lambda t: {"Authorization": f"PushAuth {t}.extra"},
        lambda t: {"Authorization": f"PushAuth {'A' * 8000}.{'A' * 10}.{'A' * 10}"},
    ):
        token = sign(device_key(phone), "POST", path, raw, kid=phone.device_id)
        status, body = await send_raw(http, server, "POST", path, {**ctype, **make_header(token)}, raw)
        assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_revoked_device(login: LoginFlow, phone: Phone, http: aiohttp.ClientSession) -> None:
    second = await add_phone(login, phone, USER, http)
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    await phone.unenroll()

    for decision in ("approve", "deny"):
        status, body = await phone.signed_request("POST", response_path(ch.id),
                                                  raw_body=answer_body(ch, created, decision))
        assert_error(status, body, 401, "device_revoked")
    with pytest.raises(ServerRejected) as exc:
        await phone.fetch(created["id"])
    assert (exc.value.status, exc.value.error) == (401, "device_revoked")
    with pytest.raises(ServerRejected) as exc:
        await phone.pending()
    assert (exc.value.status, exc.value.error) == (401, "device_revoked")

    await still_pending_then_approvable(login, second, created)


async def test_server_signed_tokens_are_not_device_tokens(login: LoginFlow, phone: Phone,
                                                          target: Target) -> None:
    """A challenge JWS (signed by the server for this very device) replayed as a request token."""
    created, ch = target
    raw = answer_body(ch, created)
    status, body = await send(phone, "POST", response_path(ch.id), ch.token, raw)
    assert_error(status, body, 401)
    status, body = await send(phone, "GET", f"/v1/device/challenges/{ch.id}", ch.token)
    assert_error(status, body, 401)

    # an assertion from another, approved challenge
    other = await login.create(USER)
    assert await phone.approve(other["id"], number=other["number"]) == "approved"
    assertion = (await login.status(other["id"]))["assertion"]
    status, body = await send(phone, "POST", response_path(ch.id), assertion, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)


async def test_phone_not_targeted_by_the_challenge(login: LoginFlow, phone: Phone,
                                                   http: aiohttp.ClientSession, target: Target) -> None:
    """A phone of the same user enrolled after the challenge was sent is not one of its targets: even
    knowing the nonce it cannot answer."""
    created, ch = target
    later = await add_phone(login, phone, USER, http)
    for raw in (answer_body(ch, created), answer_body(ch, created, "deny")):
        status, body = await later.signed_request("POST", response_path(ch.id), raw_body=raw)
        assert_error(status, body, 404)
    status, body = await later.signed_request("GET", f"/v1/device/challenges/{ch.id}")
    assert_error(status, body, 404)
    await still_pending_then_approvable(login, phone, created)


DEEP = 2000  # nesting depth past the JSON decoders' recursion limit (both msgspec and json stop near 1000)


@pytest.mark.parametrize("where", ["header", "payload"])
async def test_deeply_nested_token_json_is_401_not_500(login: LoginFlow, phone: Phone, target: Target,
                                                       where: str) -> None:
    created, ch = target
    raw = answer_body(ch, created)
    deep = b'"x":' + b"[" * DEEP + b"]" * DEEP
    header = msgspec.json.encode({"alg": "ES256", "typ": REQ_TYP, "kid": phone.device_id})
    claims = msgspec.json.encode(request_claims("POST", response_path(ch.id), raw))
    if where == "header":
        header = header[:-1] + b"," + deep + b"}"
    else:
        claims = claims[:-1] + b"," + deep + b"}"
    token = forge_raw(header, claims, device_key(phone))
    assert len(token) < 8000  # fits in one HTTP header line
    status, body = await send(phone, "POST", response_path(ch.id), token, raw)
    assert_error(status, body, 401)
    await still_pending_then_approvable(login, phone, created)
