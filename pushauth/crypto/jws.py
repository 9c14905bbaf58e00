"""ES256 compact JWS, and nothing else.

joserfc does the signature maths with a pinned algorithm list (`["ES256"]`). In front of it sits a strict
header policy of our own, because the classic JWS attacks live in the header rather than in the maths:
`alg: none`, HS256 keyed with a public key, `jku`/`x5u` pointing at an attacker's key, an embedded `jwk`
the verifier trusts, `crit` extensions the verifier does not understand. We accept a closed set of header
names and reject everything else before any key is chosen; a header or payload that names a key twice
(`{"alg":"none","alg":"ES256"}`) is malformed (pushauth/strictjson.py), whichever copy a parser keeps.

Verification raises `InvalidJWS`; it never returns a bool a caller could forget to check.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from joserfc import jws as _jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from pushauth import strictjson
from pushauth.errors import Unauthorized

ALG = "ES256"
_ALGORITHMS = [ALG]
# A device request or challenge is a few hundred bytes; anything near this is hostile.
MAX_TOKEN_LEN = 8192
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_ALLOWED_HEADER = frozenset({"alg", "typ", "kid", "jwk"})
_ALLOWED_JWK = frozenset({"kty", "crv", "x", "y", "kid", "use", "alg"})

_encode_json = msgspec.json.Encoder().encode


class InvalidJWS(Unauthorized):
    """The token is malformed, uses a forbidden header, or its signature does not verify."""

    default_code = "bad_signature"


def b64url_decode(part: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2)."""
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidJWS("malformed base64url") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def import_public_jwk(jwk: Mapping[str, Any]) -> ECKey:
    """Import a P-256 *public* JWK. A JWK carrying `d` is refused: a client that sends its private key
    has a bug we should not paper over."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise InvalidJWS("key must be an EC P-256 JWK", code="bad_key")
    if not set(jwk) <= _ALLOWED_JWK or not all(isinstance(jwk.get(k), str) for k in ("x", "y")):
        raise InvalidJWS("key must be a public EC P-256 JWK with x and y only", code="bad_key")
    try:
        return ECKey.import_key({k: jwk[k] for k in ("kty", "crv", "x", "y")})
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidJWS("key is not a valid P-256 point", code="bad_key") from exc


def thumbprint(key: ECKey) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    return str(key.thumbprint())


def sign(claims: Mapping[str, Any], key: ECKey, *, typ: str, kid: str | None = None,
         jwk: Mapping[str, Any] | None = None) -> str:
    header: dict[str, Any] = {"alg": ALG, "typ": typ}
    if kid is not None:
        header["kid"] = kid
    if jwk is not None:
        header["jwk"] = dict(jwk)
    return _jws.serialize_compact(header, _encode_json(claims), key, algorithms=_ALGORITHMS)


def read_header(token: str, *, typ: str, allow_jwk: bool = False) -> dict[str, Any]:
    """Parse and police the protected header without verifying anything.

    Exactly one of `kid` or (where `allow_jwk`) `jwk` identifies the key."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN or not _COMPACT.fullmatch(token):
        raise InvalidJWS("not a compact JWS")
    try:
        header = strictjson.decode(b64url_decode(token.split(".", 1)[0]))
    except strictjson.DuplicateKey as exc:
        raise InvalidJWS(f"JWS header is not valid JSON: {exc}") from exc
    except strictjson.NOT_JSON as exc:
        raise InvalidJWS("JWS header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidJWS("JWS header is not an object")
    extra = set(header) - _ALLOWED_HEADER
    if extra:
        raise InvalidJWS(f"JWS header field not allowed: {sorted(extra)[0]}")
    if header.get("alg") != ALG:
        raise InvalidJWS("only alg ES256 is accepted")
    if header.get("typ") != typ:
        raise InvalidJWS(f"JWS typ must be {typ}")
    has_kid, has_jwk = "kid" in header, "jwk" in header
    if has_jwk and not allow_jwk:
        raise InvalidJWS("an embedded jwk is only accepted at enrollment")
    if has_kid == has_jwk or (has_kid and not isinstance(header["kid"], str)):
        which = "kid or jwk" if allow_jwk else "kid"
        raise InvalidJWS(f"JWS header must name its key with exactly one of {which}")
    return header


def verify(token: str, key: ECKey) -> dict[str, Any]:
    """Verify an ES256 signature with `key` and return the JSON object payload.

    Call `read_header` first: this function trusts the caller to have chosen the key from a header that
    passed the policy."""
    try:
        obj = _jws.deserialize_compact(token, key, algorithms=_ALGORITHMS)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidJWS("signature does not verify") from exc
    try:
        claims = strictjson.decode(obj.payload)
    except strictjson.DuplicateKey as exc:
        raise InvalidJWS(f"JWS payload is not valid JSON: {exc}") from exc
    except strictjson.NOT_JSON as exc:
        raise InvalidJWS("JWS payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise InvalidJWS("JWS payload is not an object")
    return claims
