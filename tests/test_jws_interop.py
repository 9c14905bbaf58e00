"""pushauth's own compact ES256 path (`pushauth.crypto.jws`, issue 22) and joserfc's full
`serialize_compact` / `deserialize_compact` agree: each verifies what the other signs, and each refuses
what the other refuses for a bad signature, a wrong key, a bad alg and a non-canonical encoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jws as joserfc_jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from pushauth.crypto import device_auth, jws

KEY = ECKey.generate_key("P-256", private=True)
OTHER = ECKey.generate_key("P-256", private=True)
CLAIMS: dict[str, Any] = {"iss": "https://pushauth.example", "aud": "dev", "sub": "alice@nhs.net",
                          "jti": "c" * 24, "iat": 1_750_000_000, "exp": 1_750_000_120, "n": [1, "é", None]}


def _joserfc_sign(claims: dict[str, Any], key: ECKey, header: dict[str, Any]) -> str:
    return joserfc_jws.serialize_compact(header, json.dumps(claims), key, algorithms=["ES256"])


def _joserfc_verify(token: str, key: ECKey) -> dict[str, Any]:
    obj = joserfc_jws.deserialize_compact(token, key, algorithms=["ES256"])
    return dict(json.loads(obj.payload))


def _public(key: ECKey) -> ECKey:
    return jws.import_public_jwk({k: str(v) for k, v in key.as_dict(private=False).items()
                                  if k in ("kty", "crv", "x", "y")})


@pytest.mark.parametrize("kid", ["k1", None])
def test_joserfc_verifies_what_pushauth_signs(kid: str | None) -> None:
    jwk = None if kid else _public(KEY).as_dict(private=False)
    for _ in range(20):  # r or s with leading zero bytes must come out fixed-width
        token = jws.sign(CLAIMS, KEY, typ="pushauth-challenge+jwt", kid=kid,
                         jwk={k: str(v) for k, v in jwk.items()} if jwk else None)
        assert _joserfc_verify(token, _public(KEY)) == CLAIMS
        assert len(jws.b64url_decode(token.rsplit(".", 1)[1])) == 64
        with pytest.raises(JoseError):
            _joserfc_verify(token, _public(OTHER))


def test_pushauth_verifies_what_joserfc_signs() -> None:
    header = {"alg": "ES256", "typ": "pushauth-req+jwt", "kid": "dev1"}
    for _ in range(20):
        token = _joserfc_sign(CLAIMS, KEY, header)
        assert jws.read_header(token, typ="pushauth-req+jwt") == header
        assert jws.verify(token, _public(KEY)) == CLAIMS
        assert jws.verify(token, KEY) == CLAIMS  # a private key verifies with its public half
        with pytest.raises(jws.InvalidJWS):
            jws.verify(token, _public(OTHER))


def test_a_device_request_signed_by_joserfc_is_accepted() -> None:
    body, path = b'{"decision":"approve"}', "/v1/device/challenges/x/response"
    claims: dict[str, Any] = {"htm": "POST", "htu": path, "iat": 1_750_000_000,
              "jti": "j" * 22, "bh": device_auth.body_hash(body)}
    token = _joserfc_sign(claims, KEY, {"alg": "ES256", "typ": device_auth.REQUEST_TYP, "kid": "d"})
    req = device_auth.verify_request(token, _public(KEY), method="POST", path_qs=path, body=body,
                                     now=1_750_000_010, max_skew_s=60)
    assert (req.jti, req.iat) == (claims["jti"], claims["iat"])


def _both_refuse(token: str, key: ECKey) -> None:
    with pytest.raises(jws.InvalidJWS):
        jws.verify(token, key)
    with pytest.raises((JoseError, ValueError)):
        _joserfc_verify(token, key)


def test_both_refuse_the_same_bad_tokens() -> None:
    token = jws.sign(CLAIMS, KEY, typ="t", kid="k")
    head, payload, sig = token.split(".")
    raw = jws.b64url_decode(sig)
    flipped = jws.b64url_encode(raw[:-1] + bytes([raw[-1] ^ 1]))
    _both_refuse(f"{head}.{payload}.{flipped}", _public(KEY))
    _both_refuse(f"{head}.{payload}.{jws.b64url_encode(raw + b'0')}", _public(KEY))  # 65 bytes
    _both_refuse(f"{head}.{payload}.{sig}=", _public(KEY))  # padding
    _both_refuse(f"{head}.{payload}", _public(KEY))
    # the same signature bytes, spelled with non-canonical trailing bits: refused by both
    last = sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 4 == 0 else None
    if twin is not None and twin != last:
        _both_refuse(f"{head}.{payload}.{sig[:-1]}{twin}", _public(KEY))
    # alg none / HS256 headers over a valid ES256 signature of their own signing input
    for alg in ("none", "HS256", "ES384"):
        bad_head = base64.urlsafe_b64encode(json.dumps({"alg": alg, "typ": "t", "kid": "k"}).encode()) \
            .rstrip(b"=").decode()
        signing_input = f"{bad_head}.{payload}".encode()
        bad_sig = jws.b64url_encode(jws._sign_es256(signing_input, KEY))
        with pytest.raises(jws.InvalidJWS):
            jws.verify(f"{bad_head}.{payload}.{bad_sig}", _public(KEY))


def test_a_p384_key_is_refused_both_ways() -> None:
    p384 = ECKey.generate_key("P-384", private=True)
    with pytest.raises(jws.InvalidJWS):
        jws.sign(CLAIMS, p384, typ="t", kid="k")
    token = joserfc_jws.serialize_compact({"alg": "ES384", "typ": "t", "kid": "k"}, json.dumps(CLAIMS), p384,
                                          algorithms=["ES384"])
    with pytest.raises(jws.InvalidJWS):
        jws.verify(token, p384)
