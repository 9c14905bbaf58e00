"""ES256 compact JWS, and nothing else.

Verification goes through joserfc's ES256 algorithm object, taken from a registry pinned to `["ES256"]`
(r||s -> DER, then `cryptography`): the very primitive the Wycheproof vectors are run through
(tests/test_wycheproof.py). Signing calls `cryptography` directly (DER -> r||s). The compact serialization
around both is ours, since joserfc's `serialize_compact` / `deserialize_compact` add a registry built per
call, key guessing, header objects and stdlib JSON to every token (issue 22): the header of a (typ, kid)
pair is encoded once, and a token is split, decoded with joserfc's own strict base64url (no padding, no `+`
`/`, canonical trailing bits) and its `alg` checked before its signature is.

In front of that sits a strict header policy of our own (`read_header`), because the classic JWS attacks
live in the header rather than in the maths: `alg: none`, HS256 keyed with a public key, `jku`/`x5u`
pointing at an attacker's key, an embedded `jwk` the verifier trusts, `crit` extensions the verifier does
not understand. We accept a closed set of header names and reject everything else before any key is chosen;
a header or payload that names a key twice (`{"alg":"none","alg":"ES256"}`) is malformed
(pushauth/strictjson.py), whichever copy a parser keeps.

Verification raises `InvalidJWS`; it never returns a bool a caller could forget to check.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

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
# The one algorithm object: joserfc's ES256 (check_key, then r||s <-> DER around cryptography's ECDSA).
_ES256 = JWSRegistry(algorithms=_ALGORITHMS).get_alg(ALG)
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
# base64url of the encoded protected header, per (typ, kid): a server signs with a handful of them.
_HEADERS: dict[tuple[str, str | None], str] = {}


class InvalidJWS(Unauthorized):
    """The token is malformed, uses a forbidden header, or its signature does not verify."""

    default_code = "bad_signature"


def b64url_decode(part: str) -> bytes:
    """Strict base64url without padding (RFC 7515 section 2)."""
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidJWS("malformed base64url") from exc


# The last character of a segment whose length is 2 or 3 (mod 4) must leave the unused low bits zero: one
# spelling per byte string (joserfc's rule; `base64` itself ignores those bits).
_CANONICAL_LAST = ("", "AEIMQUYcgkosw048", "AQgw")


def _strict_b64decode(part: str) -> bytes:
    """base64url of a segment `_COMPACT` already matched (so only the URL-safe alphabet, no padding), in
    its one canonical spelling."""
    pad = -len(part) % 4
    if pad == 3 or (pad and part[-1] not in _CANONICAL_LAST[pad]):
        raise binascii.Error("not canonical base64url")
    return base64.urlsafe_b64decode(part + "=" * pad)


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
    if jwk is None:
        header_b64 = _HEADERS.get((typ, kid))
        if header_b64 is None:
            header_b64 = _header_b64(typ, kid, None)
            if len(_HEADERS) < 256:
                _HEADERS[(typ, kid)] = header_b64
    else:
        header_b64 = _header_b64(typ, kid, jwk)
    signing_input = f"{header_b64}.{b64url_encode(_encode_json(claims))}"
    return f"{signing_input}.{b64url_encode(_sign_es256(signing_input.encode('ascii'), key))}"


def _sign_es256(data: bytes, key: ECKey) -> bytes:
    """ES256 with cryptography directly (what joserfc's ES256 `sign` does, without its key lookups): the
    DER signature OpenSSL makes, as the fixed-width r||s a JWS carries."""
    private = key.private_key
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise InvalidJWS("ES256 signs with a private P-256 key", code="bad_key")
    r, s = decode_dss_signature(private.sign(data, _ECDSA_SHA256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _header_b64(typ: str, kid: str | None, jwk: Mapping[str, Any] | None) -> str:
    header: dict[str, Any] = {"alg": ALG, "typ": typ}
    if kid is not None:
        header["kid"] = kid
    if jwk is not None:
        header["jwk"] = dict(jwk)
    return b64url_encode(_encode_json(header))


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
    passed the policy. It checks on its own only what a signature check needs: three segments of strict
    base64url, a JSON object header whose `alg` is ES256, an r||s signature that verifies over the first
    two segments, then a JSON object payload."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN or not _COMPACT.fullmatch(token):
        raise InvalidJWS("not a compact JWS")
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header = strictjson.decode(_strict_b64decode(header_b64))
        signature = _strict_b64decode(signature_b64)
        payload = _strict_b64decode(payload_b64)
    except ValueError as exc:  # binascii.Error and DuplicateKey are ValueErrors
        raise InvalidJWS("malformed JWS") from exc
    except strictjson.NOT_JSON as exc:
        raise InvalidJWS("JWS header is not JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != ALG:
        raise InvalidJWS("only alg ES256 is accepted")
    try:
        _ES256.check_key(key)  # an EC key on P-256
        ok = _ES256.verify(f"{header_b64}.{payload_b64}".encode("ascii"), signature, key)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidJWS("signature does not verify") from exc
    if not ok:
        raise InvalidJWS("signature does not verify")
    try:
        claims = strictjson.decode(payload)
    except strictjson.DuplicateKey as exc:
        raise InvalidJWS(f"JWS payload is not valid JSON: {exc}") from exc
    except strictjson.NOT_JSON as exc:
        raise InvalidJWS("JWS payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise InvalidJWS("JWS payload is not an object")
    return claims
