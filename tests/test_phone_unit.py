"""Unit tests of the phone simulator that need no server: enrollment URI parsing, the state file, request
signing, and challenge verification against a locally generated "server" key."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from joserfc.jwk import ECKey

from pushauth.crypto import device_auth, jws
from pushauth.crypto.keys import KeyRing
from pushauth.phone import CHALLENGE_TYP, Challenge, Phone, PhoneError, ServerRejected, _ok, parse_enroll_uri

SERVER = "https://auth.example.com"
DEVICE = "dabcdefghijklmnopqrstuvwxyz234567"
JKT = "A" * 43


def uri(**overrides: str | None) -> str:
    params: dict[str, str | None] = {"v": "1", "server": SERVER, "code": "c0de-SECRET_value", "jkt": JKT}
    params.update(overrides)
    return "pushauth://enroll?" + urlencode({k: v for k, v in params.items() if v is not None})


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.ephemeral()


@pytest.fixture
async def phone(ring: KeyRing) -> Any:
    server_key = jws.import_public_jwk(ring.current.public_jwk())
    p = Phone(device_id=DEVICE, user="alice", server=SERVER, key=ECKey.generate_key("P-256", private=True),
              server_keys={ring.current.kid: server_key})
    yield p
    await p.close()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": SERVER, "aud": DEVICE, "sub": "alice", "jti": "c" + "a" * 42,
                           "nonce": "n" * 22, "iat": now, "exp": now + 60, "app": "Demo",
                           "ctx": {"ip": "192.0.2.1", "location": "Berlin"}, "number_matching": True}
    for k, v in overrides.items():
        if v is ...:
            out.pop(k)
        else:
            out[k] = v
    return out


def challenge_token(ring: KeyRing, **overrides: Any) -> str:
    return jws.sign(claims(**overrides), ring.current.key, typ=CHALLENGE_TYP, kid=ring.current.kid)


# -- enrollment URI ----------------------------------------------------------------------------------------


def test_parse_good_uri() -> None:
    parsed = parse_enroll_uri(uri())
    assert (parsed.server, parsed.code, parsed.jkt) == (SERVER, "c0de-SECRET_value", JKT)
    assert "c0de" not in repr(parsed)
    assert parse_enroll_uri(uri(server="http://127.0.0.1:8080/pushauth")).server == "http://127.0.0.1:8080/pushauth"


@pytest.mark.parametrize("bad", [
    uri().replace("pushauth://", "https://"),
    uri().replace("pushauth://enroll", "pushauth://enrol"),
    uri().replace("pushauth://enroll", "pushauth://enroll/x"),
    uri() + "#frag",
    uri(v="2"),
    uri(v=None),
    uri(server=None),
    uri(server="ftp://auth.example.com"),
    uri(server="https://auth.example.com/"),
    uri(server="https://auth.example.com?x=1"),
    uri(server="auth.example.com"),
    uri(code=None),
    uri(code=""),
    uri(jkt=None),
    uri(jkt="short"),
    uri() + "&code=again",
    "pushauth://enroll",
    "not a uri at all",
    "",
])
async def test_bad_uri_is_refused_before_any_request(bad: str) -> None:
    with pytest.raises(PhoneError):
        parse_enroll_uri(bad)
    with pytest.raises(PhoneError):
        await Phone.enroll(bad)


async def test_bad_server_override_is_refused() -> None:
    with pytest.raises(PhoneError):
        await Phone.enroll(uri(), server_override="file:///etc/passwd")


# -- state file ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, phone: Phone) -> None:
    path = tmp_path / "phone.json"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    phone.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["phone.json"]  # no temp file left behind
    loaded = Phone.load(path)  # no session is created until the first request
    assert loaded.to_dict() == phone.to_dict()
    assert (loaded.device_id, loaded.user, loaded.server) == (DEVICE, "alice", SERVER)
    d = json.loads(path.read_text())["key"]["d"]
    for text in (repr(phone), str(phone), repr(loaded)):
        assert d not in text
        assert "alice" in text


def test_new_state_file_is_private_from_creation(tmp_path: Path, ring: KeyRing) -> None:
    p = Phone(device_id=DEVICE, user="alice", server=SERVER, key=ECKey.generate_key("P-256", private=True),
              server_keys={ring.current.kid: jws.import_public_jwk(ring.current.public_jwk())})
    p.save(tmp_path / "new.json")
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "[]", "{}", '{"version": 1}', '{"version": 2, "device_id": "x"}'])
def test_load_refuses_bad_state(tmp_path: Path, content: str) -> None:
    path = tmp_path / "phone.json"
    path.write_text(content)
    with pytest.raises(PhoneError):
        Phone.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PhoneError):
        Phone.load(tmp_path / "nope.json")


def test_state_refuses_bad_server_key(phone: Phone) -> None:
    state = phone.to_dict()
    (kid,) = state["server_keys"]
    state["server_keys"][kid] = {"kty": "oct", "k": "c2VjcmV0"}
    with pytest.raises(PhoneError):
        Phone.from_dict(state)


# -- signed requests ----------------------------------------------------------------------------------------


async def test_approve_sends_a_signed_request_binding_the_exact_body(
        phone: Phone, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str, bytes | None, dict[str, str]]] = []

    async def fake_send(method: str, path_qs: str, raw: bytes | None,
                        headers: dict[str, str]) -> tuple[int, Any]:
        sent.append((method, path_qs, raw, headers))
        return 200, {"status": "approved"}

    monkeypatch.setattr(phone, "_send", fake_send)
    ch = Challenge(id="c" + "a" * 42, user="alice", app="Demo", nonce="N" * 22, iat=0, exp=0,
                   number_matching=True, context=None, token="")
    assert await phone.approve(ch, number="42") == "approved"
    assert await phone.deny(ch, reason=None) == "approved"
    (method, path, raw, headers), (_, _, deny_raw, _) = sent
    assert (method, path) == ("POST", f"/v1/device/challenges/{ch.id}/response")
    assert raw is not None
    assert deny_raw is not None
    assert json.loads(raw) == {"nonce": "N" * 22, "decision": "approve", "number": "42"}
    assert json.loads(deny_raw) == {"nonce": "N" * 22, "decision": "deny"}
    assert headers["Content-Type"] == "application/json"
    token = device_auth.token_from_header(headers["Authorization"])
    assert jws.read_header(token, typ=device_auth.REQUEST_TYP)["kid"] == DEVICE
    device_key = jws.import_public_jwk({k: v for k, v in phone.to_dict()["key"].items() if k != "d"})
    device_auth.verify_request(token, device_key, method="POST", path_qs=path, body=raw,
                               now=int(time.time()), max_skew_s=60)
    with pytest.raises(device_auth.BadDeviceRequest):
        device_auth.verify_request(token, device_key, method="POST", path_qs=path, body=raw + b" ",
                                   now=int(time.time()), max_skew_s=60)


def test_server_refusal_maps_to_server_rejected() -> None:
    with pytest.raises(ServerRejected) as info:
        _ok(409, {"error": "already_decided", "message": "this sign-in request is already approved"})
    assert (info.value.status, info.value.error) == (409, "already_decided")
    assert "already approved" in info.value.message
    with pytest.raises(ServerRejected) as info:
        _ok(502, "<html>Bad gateway</html>")
    assert (info.value.status, info.value.error) == (502, "unknown")
    with pytest.raises(PhoneError):
        _ok(200, ["not", "an", "object"])


# -- challenge verification ---------------------------------------------------------------------------------


async def test_good_challenge_verifies(phone: Phone, ring: KeyRing) -> None:
    token = challenge_token(ring)
    ch = await phone.verify_challenge(token, refresh=False)
    assert ch == Challenge(id="c" + "a" * 42, user="alice", app="Demo", nonce="n" * 22, iat=ch.iat,
                           exp=ch.iat + 60, number_matching=True,
                           context={"ip": "192.0.2.1", "location": "Berlin"}, token=token)
    # within the 60 s clock skew allowance
    await phone.verify_challenge(challenge_token(ring, exp=int(time.time()) - 30, ctx=...), refresh=False)


@pytest.mark.parametrize("overrides", [
    {"aud": "dsomeoneelsesdevice234567abcdefgh"},
    {"aud": ...},
    {"iss": "https://evil.example.com"},
    {"iss": SERVER + "/"},
    {"sub": "mallory"},
    # times as functions: evaluated when the test runs, not when the module is collected (which can be
    # minutes earlier in a full run)
    {"exp": lambda: int(time.time()) - 61},
    {"exp": "9999999999"},
    {"iat": lambda: int(time.time()) + 120},
    {"iat": True},
    {"jti": 12},
    {"nonce": ...},
    {"app": None},
    {"number_matching": "false"},
    {"number_matching": ...},
    {"ctx": {"ip": 1}},
    {"ctx": "192.0.2.1"},
])
async def test_bad_claims_are_refused(phone: Phone, ring: KeyRing, overrides: dict[str, Any]) -> None:
    overrides = {k: v() if callable(v) else v for k, v in overrides.items()}
    with pytest.raises(PhoneError):
        await phone.verify_challenge(challenge_token(ring, **overrides), refresh=False)


async def test_unknown_kid_without_refresh(phone: Phone) -> None:
    other = KeyRing.ephemeral()
    with pytest.raises(PhoneError, match="unknown server key"):
        await phone.verify_challenge(challenge_token(other), refresh=False)


async def test_unknown_kid_when_refresh_fails(phone: Phone, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def failing_refresh() -> None:
        calls.append(1)
        raise PhoneError("cannot reach the server")

    monkeypatch.setattr(phone, "refresh_server_keys", failing_refresh)
    with pytest.raises(PhoneError, match="unknown server key"):
        await phone.verify_challenge(challenge_token(KeyRing.ephemeral()))
    assert calls == [1]


async def test_unknown_kid_when_server_unreachable(ring: KeyRing) -> None:
    p = Phone(device_id=DEVICE, user="alice", server=SERVER, key=ECKey.generate_key("P-256", private=True),
              server_keys={}, server_override="http://127.0.0.1:9")
    try:
        with pytest.raises(PhoneError, match="unknown server key"):
            await p.verify_challenge(challenge_token(ring))
    finally:
        await p.close()


async def test_unknown_kid_after_rotation_refreshes_once(phone: Phone,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rotated = KeyRing.ephemeral()
    calls = []

    async def refresh() -> None:
        calls.append(1)
        phone._server_keys = {rotated.current.kid: jws.import_public_jwk(rotated.current.public_jwk())}

    monkeypatch.setattr(phone, "refresh_server_keys", refresh)
    assert (await phone.verify_challenge(challenge_token(rotated))).app == "Demo"
    assert calls == [1]


async def test_alg_none_is_refused(phone: Phone, ring: KeyRing) -> None:
    bad_header = {"alg": "none", "typ": CHALLENGE_TYP, "kid": ring.current.kid}
    header = jws.b64url_encode(json.dumps(bad_header).encode())
    payload = jws.b64url_encode(json.dumps(claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.AAAA"):
        with pytest.raises(PhoneError):
            await phone.verify_challenge(token, refresh=False)


async def test_tampered_payload_is_refused(phone: Phone, ring: KeyRing) -> None:
    header, _, sig = challenge_token(ring).split(".")
    payload = jws.b64url_encode(json.dumps(claims(app="Totally legit bank")).encode())
    with pytest.raises(PhoneError, match="signature"):
        await phone.verify_challenge(f"{header}.{payload}.{sig}", refresh=False)


async def test_forged_signature_under_a_known_kid_is_refused(phone: Phone, ring: KeyRing) -> None:
    attacker = ECKey.generate_key("P-256", private=True)
    token = jws.sign(claims(), attacker, typ=CHALLENGE_TYP, kid=ring.current.kid)
    with pytest.raises(PhoneError):
        await phone.verify_challenge(token, refresh=False)


@pytest.mark.parametrize("token", [None, 42, "", "a.b", "not.a.jws!"])
async def test_garbage_is_refused(phone: Phone, token: Any) -> None:
    with pytest.raises(PhoneError):
        await phone.verify_challenge(token, refresh=False)


async def test_wrong_typ_and_extra_headers_are_refused(phone: Phone, ring: KeyRing) -> None:
    assertion = jws.sign(claims(), ring.current.key, typ="pushauth-assertion+jwt", kid=ring.current.kid)
    embedded = jws.sign(claims(), ring.current.key, typ=CHALLENGE_TYP, jwk=ring.current.public_jwk())
    for token in (assertion, embedded):
        with pytest.raises(PhoneError):
            await phone.verify_challenge(token, refresh=False)
