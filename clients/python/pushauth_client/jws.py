"""ES256 compact JWS verification by PROTOCOL.md section 4, with `cryptography` alone.

Why not a JOSE library: the profile is stricter than any general one enforces (a closed header set, a
name twice refused at any depth, base64url without padding, a raw 64-byte `r || s` signature, the kid a
key's RFC 7638 thumbprint), and checking those by hand takes fewer lines than turning a library's
leniencies off, with one dependency fewer. Header and payload are policed before any key is chosen, and
the signature is verified before any claim is believed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushauth_client.errors import InvalidAssertion, ProtocolError

MAX_TOKEN = 8192
HEADER_NAMES = frozenset({"alg", "typ", "kid", "jwk"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(part: str) -> bytes:
    """base64url without padding, strictly: `=`, white space or another alphabet make it malformed."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise InvalidAssertion("token is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidAssertion("token is not base64url without padding") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python's json keeps the last copy of a repeated name; the profile refuses the object instead.
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("a name appears twice")
    return dict(pairs)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_once)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidAssertion(f"{what} is not a JSON object with each name once") from exc
    if not isinstance(value, dict):
        raise InvalidAssertion(f"{what} is not a JSON object")
    return value


def read_header(token: object, *, typ: str) -> dict[str, Any]:
    """The protected header of a server token, checked against the profile: ES256, `typ`, a string kid."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 2:
        raise InvalidAssertion("not a compact JWS")
    header = _json_object(b64url_decode(token.split(".", 1)[0]), "header")
    if not set(header) <= HEADER_NAMES:
        raise InvalidAssertion(f"header names {sorted(set(header) - HEADER_NAMES)} are not allowed")
    if header.get("alg") != "ES256":
        raise InvalidAssertion("alg must be ES256")
    if header.get("typ") != typ:
        raise InvalidAssertion(f"typ must be {typ}")
    if "jwk" in header or not isinstance(header.get("kid"), str) or not header["kid"]:
        raise InvalidAssertion("a server token names its key by kid, and only by kid")
    return header


def verify(token: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The payload of a token whose header passed `read_header`, once its signature verifies with `key`."""
    head, payload, signature = token.split(".")
    sig = b64url_decode(signature)
    if len(sig) != 64:
        raise InvalidAssertion("an ES256 signature is r || s, 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, f"{head}.{payload}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise InvalidAssertion("signature does not verify") from exc
    return _json_object(b64url_decode(payload), "payload")


def thumbprint(x: str, y: str) -> str:
    """RFC 7638 thumbprint of a P-256 public key: what the server uses as its kid."""
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def import_jwks(jwks: object) -> dict[str, ec.EllipticCurvePublicKey]:
    """The server's JWKS as {kid: key}. Every key must be a public EC P-256 ES256 signing key whose kid is
    its own thumbprint: the kid is recomputed, never trusted, so a key cannot stand in for another."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ProtocolError("the server's JWKS is not {\"keys\": [...]}")
    out: dict[str, ec.EllipticCurvePublicKey] = {}
    for jwk in jwks["keys"]:
        if not isinstance(jwk, Mapping):
            raise ProtocolError("a JWKS member is not an object")
        if (jwk.get("kty"), jwk.get("crv")) != ("EC", "P-256") or "d" in jwk:
            raise ProtocolError("a server key is not a public EC P-256 key")
        if jwk.get("alg", "ES256") != "ES256" or jwk.get("use", "sig") != "sig":
            raise ProtocolError("a server key is not an ES256 signing key")
        x, y = jwk.get("x"), jwk.get("y")
        if not isinstance(x, str) or not isinstance(y, str):
            raise ProtocolError("a server key has no x and y")
        kid = thumbprint(x, y)
        if jwk.get("kid") != kid:
            raise ProtocolError("a server key's kid is not its RFC 7638 thumbprint")
        try:
            xb, yb = b64url_decode(x), b64url_decode(y)
            if len(xb) != 32 or len(yb) != 32:
                raise ValueError("coordinates must be 32 bytes")
            # public_key() refuses a point that is not on the curve.
            out[kid] = ec.EllipticCurvePublicNumbers(int.from_bytes(xb, "big"), int.from_bytes(yb, "big"),
                                                     ec.SECP256R1()).public_key()
        except (InvalidAssertion, ValueError) as exc:
            raise ProtocolError(f"a server key is not a valid P-256 point: {exc}") from exc
    return out
