"""Device request authentication: `Authorization: PushAuth <JWS>`.

A phone signs every request with its own P-256 key. The JWS binds the request: method (`htm`), path with
query (`htu`), a fresh time (`iat`), a unique id (`jti`) and the SHA-256 of the body (`bh`). This module
does the checks that need no storage; recording the `jti` in the replay cache and checking the device is
still active happen atomically in Redis (`pushauth/devices/lua/device_gate.lua`, or for an answer
`pushauth/challenges/lua/respond.lua`, which runs the same gate before the transition).

Order matters: the header is policed before a key is chosen, and the signature is verified before any
claim is trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import ECKey

from pushauth.crypto import jws
from pushauth.errors import Unauthorized
from pushauth.ids import valid_jti

SCHEME = "PushAuth"
REQUEST_TYP = "pushauth-req+jwt"


class BadDeviceRequest(Unauthorized):
    default_code = "bad_request_signature"


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A device request whose signature has verified and whose claims match the HTTP request."""

    jti: str
    iat: int


def token_from_header(authorization: str | None) -> str:
    if not authorization:
        raise BadDeviceRequest("missing Authorization: PushAuth <JWS>", code="unauthorized")
    scheme, _, token = authorization.partition(" ")
    if scheme != SCHEME or not token:
        raise BadDeviceRequest("Authorization scheme must be PushAuth", code="unauthorized")
    return token.strip()


def body_hash(body: bytes) -> str:
    return jws.b64url_encode(hashlib.sha256(body).digest())


def check_claims(claims: dict[str, Any], *, method: str, path_qs: str, body: bytes, now: int,
                 max_skew_s: int) -> DeviceRequest:
    if claims.get("htm") != method:
        raise BadDeviceRequest("htm does not match the request method")
    htu = claims.get("htu")
    if not isinstance(htu, str) or not hmac.compare_digest(htu.encode(), path_qs.encode()):
        raise BadDeviceRequest("htu does not match the request path")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise BadDeviceRequest("iat must be an integer")
    if abs(now - iat) > max_skew_s:
        raise BadDeviceRequest(f"iat is outside the allowed clock skew of {max_skew_s} s",
                               code="stale_request")
    jti = claims.get("jti")
    if not valid_jti(jti):
        raise BadDeviceRequest("jti must be 16..64 characters of A-Z a-z 0-9 _ -")
    bh = claims.get("bh")
    if (body or bh is not None) and (
            not isinstance(bh, str) or not hmac.compare_digest(bh.encode(), body_hash(body).encode())):
        raise BadDeviceRequest("bh does not match the request body")
    assert isinstance(jti, str)
    return DeviceRequest(jti=jti, iat=iat)


def verify_request(token: str, key: ECKey, *, method: str, path_qs: str, body: bytes, now: int,
                   max_skew_s: int) -> DeviceRequest:
    """Verify the signature with the device's key, then the request binding."""
    claims = jws.verify(token, key)
    return check_claims(claims, method=method, path_qs=path_qs, body=body, now=now, max_skew_s=max_skew_s)


def sign_request(key: ECKey, *, method: str, path_qs: str, body: bytes, jti: str, iat: int,
                 kid: str | None = None, jwk: dict[str, str] | None = None) -> str:
    """The phone side (used by the simulator): sign a request the way `verify_request` expects."""
    claims: dict[str, Any] = {"htm": method, "htu": path_qs, "iat": iat, "jti": jti}
    if body:
        claims["bh"] = body_hash(body)
    return jws.sign(claims, key, typ=REQUEST_TYP, kid=kid, jwk=jwk)
