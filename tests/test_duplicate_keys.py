"""JSON objects that name a key twice are refused (issue 14, item 6): request bodies with 400 bad_json,
JWS headers and payloads as malformed tokens (401 bad_signature). A proxy that keeps the first copy must
never see a different request from the one pushauth acted on (msgspec keeps the last).

Unit tests of pushauth/strictjson.py, then the attacks over HTTP against a real server and Redis, each
showing that nothing in Redis changed (the device-request attacks are in tests/test_attacks.py).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey
from support import API_KEY, LoginFlow, RunningServer, assert_error, redis_snapshot

from pushauth import strictjson
from pushauth.crypto import device_auth, jws
from pushauth.errors import BadRequest
from pushauth.phone import Phone, parse_enroll_uri
from pushauth.web import io
from pushauth.web.schemas import CreateChallenge

USER = "alice@nhs.net"


# -- strictjson ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    b'{"alg":"none","alg":"ES256"}',
    b'{"a":1,"b":{"c":1,"c":2}}',                              # nested
    b'{"a":[{"x":1},{"y":1,"y":1}]}',                          # in an array
    b'[[[{"deep":{"deeper":{"k":1,"k":1}}}]]]',
    b'{"\\u0061lg":"none","alg":"ES256"}',                     # the same key, escaped
    b'{"ip":"2001:db8::1","ip":"192.0.2.1"}',                  # colons in values: the slow path
    b'{"a":"x:y","a":"x:y"}',
    b'{"user" : "a" , "user" : "b"}',                          # white space
])
def test_a_key_twice_is_refused(text: bytes) -> None:
    with pytest.raises(strictjson.DuplicateKey, match="duplicate key"):
        strictjson.decode(text)


@pytest.mark.parametrize("text", [
    b'{"alg":"ES256","typ":"pushauth-req+jwt","kid":"dk3nq7xv2mdt5ra4wp6ye3zqbn5lc2hwf"}',
    b'{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}',              # one name in different objects
    b'{"ip":"2001:db8::1","ts":"12:00:00","k\\u003a":"v"}',      # colons, but every key once
    b'{"\\u0061":1,"b":1}',
    b'[]', b'{}', b'"a:b"', b'1', b'[{"a":1},{"a":1}]',
])
def test_keys_once_are_accepted(text: bytes) -> None:
    assert strictjson.decode(text) == json.loads(text)


@pytest.mark.parametrize("text", [b"", b"{", b'{"a":1,}', b'{"a":"\xff"}', b"[" * 5000 + b"]" * 5000,
                                  b"NaN", b'{"a":NaN}'])
def test_not_json_is_not_json(text: bytes) -> None:
    with pytest.raises(strictjson.NOT_JSON):
        strictjson.decode(text)


# Keys drawn from a small alphabet so that objects often repeat one; values with colons to take both paths.
_keys = st.text(alphabet="ab:\\é", max_size=2)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet="x:é\"\\", max_size=3),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.lists(st.tuples(_keys, inner), max_size=4), max_leaves=12)


def _render(value: Any) -> str:
    """JSON text of `value`, where a list of pairs is an object written with exactly those members."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return json.dumps(value)


def _has_duplicate(value: Any) -> bool:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        keys = [k for k, _ in value]
        return len(set(keys)) != len(keys) or any(_has_duplicate(v) for _, v in value)
    if isinstance(value, list):
        return any(_has_duplicate(v) for v in value)
    return False


@settings(max_examples=1500, deadline=None)
@given(_json)
def test_refused_exactly_when_an_object_has_a_key_twice(value: Any) -> None:
    text = _render(value).encode()
    if _has_duplicate(value):
        with pytest.raises(strictjson.DuplicateKey):
            strictjson.decode(text)
    else:
        assert strictjson.decode(text) == json.loads(text)


def test_request_bodies() -> None:
    with pytest.raises(BadRequest) as refused:
        io.decode(b'{"user":"a","user":"b"}', CreateChallenge)
    assert (refused.value.code, refused.value.message) == (
        "bad_json", 'body is not valid JSON: duplicate key "user" in a JSON object')
    # a duplicate is refused before the fields are judged: 400, not 422 for an unknown or mistyped copy
    for body in (b'{"user":"a","user":1}', b'{"user":"a","nope":1,"nope":2}'):
        with pytest.raises(BadRequest):
            io.decode(body, CreateChallenge)
    assert io.decode(b'{"user":"a","context":{"ip":"2001:db8::1"}}', CreateChallenge).user == "a"
    # the enrollment code, read before the body is validated
    with pytest.raises(BadRequest, match="duplicate key"):
        io.peek_str(b'{"code":"one","code":"two"}', "code")
    assert io.peek_str(b'{"code":"one"}', "code") == "one"
    assert io.peek_str(b"not json", "code") is None


def test_jws_header_and_payload() -> None:
    key = ECKey.generate_key("P-256")
    header = b'{"alg":"none","typ":"pushauth-req+jwt","kid":"d1","alg":"ES256"}'
    claims = b'{"htm":"GET","htu":"/a","htu":"/b","iat":1,"jti":"0123456789abcdef"}'
    good_header = b'{"alg":"ES256","typ":"pushauth-req+jwt","kid":"d1"}'
    with pytest.raises(jws.InvalidJWS, match="duplicate key") as refused:
        jws.read_header(_signed(header, b"{}", key), typ=device_auth.REQUEST_TYP)
    assert (refused.value.status, refused.value.code) == (401, "bad_signature")
    token = _signed(good_header, claims, key)
    jws.read_header(token, typ=device_auth.REQUEST_TYP)
    with pytest.raises(jws.InvalidJWS, match="duplicate key") as refused:
        jws.verify(token, key)
    assert refused.value.code == "bad_signature"


def _signed(header: bytes, payload: bytes, key: ECKey) -> str:
    """A compact JWS over exactly these bytes (no dict can hold a key twice), ES256 by `cryptography`."""
    signing_input = f"{jws.b64url_encode(header)}.{jws.b64url_encode(payload)}"
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{jws.b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# -- over HTTP: nothing changes in Redis ---------------------------------------------------------------------


async def post(http: aiohttp.ClientSession, url: str, body: bytes, *, api_key: str | None = None
               ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("body", [
    b'{"user":"alice@nhs.net","user":"bob@nhs.net"}',
    b'{"user":"bob@nhs.net","user":"alice@nhs.net"}',
    b'{"user":"alice@nhs.net","ttl_s":10,"ttl_s":600}',
    b'{"user":"alice@nhs.net","context":{"ip":"192.0.2.1","ip":"2001:db8::1"}}',
    b'{"user":"alice@nhs.net","context":{"location":"Leeds","location":"Lagos"}}',
    b'{"\\u0075ser":"bob@nhs.net","user":"alice@nhs.net"}',
])
async def test_a_challenge_with_a_key_twice_is_refused_and_creates_nothing(
        server: RunningServer, phone: Phone, http: aiohttp.ClientSession, redis_url: str,
        body: bytes) -> None:
    before = await redis_snapshot(redis_url)
    status, answer = await post(http, server.url + "/v1/challenges", body, api_key=API_KEY)
    assert_error(status, answer, 400, "bad_json")
    assert "duplicate key" in answer["message"]
    assert await redis_snapshot(redis_url) == before
    assert await phone.pending() == []


async def test_an_enrollment_with_the_code_twice_spends_no_code(
        server: RunningServer, login: LoginFlow, http: aiohttp.ClientSession, redis_url: str) -> None:
    """The code is spent before the body is validated (by contract): a body with two codes is refused
    before either is, and the real phone enrolls with the same QR code afterwards."""
    uri = await login.enroll_uri(USER)
    code = parse_enroll_uri(uri).code
    before = await redis_snapshot(redis_url)
    rest = b'"name":"x","platform":"other","push":{"provider":"none"}}'
    for body in (b'{"code":"%s","code":"another-code",' + rest, b'{"code":"another-code","code":"%s",' + rest,
                 b'{"code":"%s",' + rest.replace(b'"none"', b'"none","provider":"fcm"')):
        raw = body.replace(b"%s", code.encode())
        status, answer = await post(http, server.url + "/v1/devices", raw)
        assert_error(status, answer, 400, "bad_json")
        assert "duplicate key" in answer["message"]
    assert await redis_snapshot(redis_url) == before
    assert (await Phone.enroll(uri, session=http)).user == USER


async def test_an_answer_with_the_decision_twice_is_refused_and_the_challenge_stays_pending(
        login: LoginFlow, phone: Phone, redis_url: str) -> None:
    created = await login.create(USER)
    challenge = await phone.fetch(created["id"])
    path = f"/v1/device/challenges/{created['id']}/response"
    before = await redis_snapshot(redis_url)
    for raw in (b'{"nonce":"%s","decision":"deny","decision":"approve","number":"%s"}',
                b'{"nonce":"%s","decision":"approve","number":"00","number":"%s"}'):
        body = raw.replace(b"%s", challenge.nonce.encode(), 1).replace(b"%s", created["number"].encode(), 1)
        status, answer = await phone.signed_request("POST", path, raw_body=body)  # signed, bh matches
        assert_error(status, answer, 400, "bad_json")
    assert await redis_snapshot(redis_url) == before
    assert (await login.status(created["id"]))["status"] == "pending"
    assert await phone.approve(created["id"], number=created["number"]) == "approved"
