"""The protocol test vectors (tests/vectors/*.json; PROTOCOL.md, "Test vectors"), checked two ways.

1. With pushauth's own code: the server's device-request path (`Devices.authenticate` and the replay gate,
   on an in-process store), `crypto.jws.read_header`/`verify` and `crypto.device_auth.verify_request`,
   the reference phone's challenge verification (`Phone.verify_challenge`), the webhook signer, the push
   provider.
2. Independently, with `cryptography` primitives and the standard library only: the compact JWS is split
   and base64url-decoded by hand, the header is policed by the rules PROTOCOL.md states, the raw r || s
   signature is converted to DER and verified with ECDSA P-256/SHA-256, and the claims are checked by the
   rules PROTOCOL.md states. That verifier is itself checked against RFC 7515's ES256 example, and the
   webhook signer against the Standard Webhooks specification's example and the `standardwebhooks`
   library.

ECDSA signatures are randomised, so nothing here compares signature bytes; the generator is run again and
its fresh output must verify the same way and equal the committed vectors in everything but signatures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import json
import re
import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
from aioapns.common import NotificationRequest, NotificationResult
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.jwk import ECKey
from standardwebhooks.webhooks import Webhook

from pushauth import clock, ids
from pushauth.accounts.users import canonical
from pushauth.alerts.settings import parse_webhook_secret
from pushauth.alerts.sinks.webhook import sign as webhook_sign
from pushauth.challenges.service import ASSERTION_TYP, CHALLENGE_TYP
from pushauth.config import from_mapping
from pushauth.crypto import device_auth, jws
from pushauth.devices.service import Devices
from pushauth.errors import ApiError, Unprocessable
from pushauth.phone import Phone, PhoneError, parse_enroll_uri
from pushauth.push.apns import ApnsProvider
from pushauth.push.base import OutcomeKind, PushMessage
from pushauth.store import KeySpace

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
GENERATOR = VECTORS / "generate.py"
FILES = ("keys.json", "user_names.json", "enrollment.json", "device_requests.json", "negative_requests.json",
         "challenges.json", "assertions.json", "webhooks.json", "push.json")
REQ_TYP = "pushauth-req+jwt"

Json = dict[str, Any]


def load(folder: Path, name: str) -> Json:
    return cast(Json, json.loads((folder / name).read_text(encoding="utf-8")))


def resolve(folder: Path, ref: Any) -> Any:
    """`"keys.json#jwks"` -> that member of that file; anything else as it is."""
    if isinstance(ref, str) and "#" in ref:
        name, _, member = ref.partition("#")
        return load(folder, name)[member]
    return ref


# ============================================================================================================
# The independent verifier: the standard library and cryptography, written from PROTOCOL.md (no pushauth code,
# no joserfc)
# ============================================================================================================

class Reject(Exception):
    """Where a careful verifier refuses a token: parse | header | key | signature | claims | replay."""

    def __init__(self, stage: str, why: str) -> None:
        super().__init__(f"{stage}: {why}")
        self.stage = stage


_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JTI = re.compile(r"[A-Za-z0-9_-]{16,64}")
HEADER_NAMES = {"alg", "typ", "kid", "jwk"}
PUBLIC_JWK_NAMES = {"kty", "crv", "x", "y", "kid", "use", "alg"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_strict(part: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise Reject("parse", "not base64url without padding")
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if b64url(raw) != part:
        raise Reject("parse", "non-canonical base64url")
    return raw


def public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or not set(jwk) <= PUBLIC_JWK_NAMES:
        raise Reject("header", "not a public EC P-256 JWK")
    try:
        x = int.from_bytes(b64url_strict(jwk["x"]), "big")
        y = int.from_bytes(b64url_strict(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (Reject, ValueError, KeyError, TypeError) as exc:
        raise Reject("header", "not a point on P-256") from exc


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 for an EC key: SHA-256 over the required members, lexicographic, no white space."""
    canonical_json = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical_json.encode()).digest())


def verify_es256(token: str, *, typ: str, keys: Mapping[str, Mapping[str, Any]], enrollment: bool = False,
                 refetch: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None) -> tuple[Json, Json]:
    """Compact JWS, ES256 only, by PROTOCOL.md's rules. Returns (header, payload) or raises Reject.

    The key: the public `jwk` in the header at enrollment (and only there), else the key `keys` holds for
    the header's `kid` (after one `refetch` of the JWKS if the kid is unknown)."""
    parts = token.split(".")
    if len(token) > 8192 or len(parts) != 3 or not parts[0] or not parts[1]:
        raise Reject("parse", "not a compact JWS")
    header_raw, payload_raw, signature = (b64url_strict(p) for p in parts)
    try:
        header = json.loads(header_raw, object_pairs_hook=keys_once("header"))
    except ValueError as exc:
        raise Reject("parse", "header is not JSON") from exc
    if not isinstance(header, dict):
        raise Reject("parse", "header is not an object")
    if not set(header) <= HEADER_NAMES:
        raise Reject("header", f"header names {sorted(set(header) - HEADER_NAMES)} not allowed")
    if header.get("alg") != "ES256":
        raise Reject("header", "alg must be ES256")
    if header.get("typ") != typ:
        raise Reject("header", f"typ must be {typ}")
    if set(header) & {"kid", "jwk"} != ({"jwk"} if enrollment else {"kid"}):
        raise Reject("header", "enrollment names its key with jwk (and no kid), every other token with kid")
    if enrollment:
        if not isinstance(header["jwk"], dict) or "d" in header["jwk"]:
            raise Reject("header", "jwk must be a public key")
        key = public_key(header["jwk"])
    else:
        kid = header["kid"]
        if not isinstance(kid, str):
            raise Reject("header", "kid must be a string")
        if kid not in keys and refetch is not None:
            keys = refetch()  # an unknown kid: a rotation, perhaps; fetch the JWKS once
        if kid not in keys:
            raise Reject("key", "no key with this kid")
        key = public_key(keys[kid])
    if len(signature) != 64:
        raise Reject("signature", "an ES256 signature is r || s, 64 bytes")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise Reject("signature", "signature does not verify") from exc
    try:
        payload = json.loads(payload_raw, object_pairs_hook=keys_once("claims"))
    except ValueError as exc:
        raise Reject("claims", "payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise Reject("claims", "payload is not an object")
    return header, payload


def keys_once(stage: str) -> Callable[[list[tuple[str, Any]]], Json]:
    """A json.loads hook refusing (at `stage`) an object with a key twice: section 4 makes such a JWS
    malformed, where Python's json would keep the last copy."""

    def hook(pairs: list[tuple[str, Any]]) -> Json:
        if len({key for key, _ in pairs}) != len(pairs):
            raise Reject(stage, "a key appears twice")
        return dict(pairs)

    return hook


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request_claims(claims: Json, *, method: str, path_qs: str, body: bytes, now: int,
                         skew: int) -> None:
    if claims.get("htm") != method:
        raise Reject("claims", "htm is not the method")
    if claims.get("htu") != path_qs:
        raise Reject("claims", "htu is not the path and query")
    if not is_int(claims.get("iat")) or abs(now - claims["iat"]) > skew:
        raise Reject("claims", "iat is not an integer within the skew")
    if not isinstance(claims.get("jti"), str) or not _JTI.fullmatch(claims["jti"]):
        raise Reject("claims", "jti is not 16..64 of A-Z a-z 0-9 _ -")
    if (body or "bh" in claims) and claims.get("bh") != b64url(hashlib.sha256(body).digest()):
        raise Reject("claims", "bh is not the SHA-256 of the body")


def check_challenge_claims(claims: Json, phone: Json) -> None:
    now, skew = phone["now"], phone["max_skew_s"]
    if claims.get("iss") != phone["server"] or claims.get("aud") != phone["device_id"]:
        raise Reject("claims", "not from this server / not for this device")
    if claims.get("sub") != phone["user"]:
        raise Reject("claims", "not for this user")
    if not all(isinstance(claims.get(k), str) and claims[k] for k in ("jti", "nonce")):
        raise Reject("claims", "jti and nonce must be non-empty strings")
    if not isinstance(claims.get("app"), str):
        raise Reject("claims", "app must be a string")
    if not (is_int(claims.get("iat")) and is_int(claims.get("exp"))):
        raise Reject("claims", "iat and exp must be integers")
    if claims["exp"] <= now - skew or claims["iat"] > now + skew:
        raise Reject("claims", "expired or issued in the future")
    if not isinstance(claims.get("number_matching"), bool):
        raise Reject("claims", "number_matching must be a boolean")
    ctx = claims.get("ctx")
    if ctx is not None and not (isinstance(ctx, dict) and all(isinstance(v, str) for v in ctx.values())):
        raise Reject("claims", "ctx must be an object of strings")


def check_assertion_claims(claims: Json, rp: Json) -> None:
    now, skew = rp["now"], rp["max_skew_s"]
    expected = {"iss": rp["server"], "aud": rp["application_id"], "sub": rp["user"],
                "jti": rp["challenge_id"], "result": "approved"}
    for name, value in expected.items():
        if claims.get(name) != value:
            raise Reject("claims", f"{name} is not {value!r}")
    if not (is_int(claims.get("iat")) and is_int(claims.get("exp"))):
        raise Reject("claims", "iat and exp must be integers")
    if claims["exp"] <= now - skew or claims["iat"] > now + skew:
        raise Reject("claims", "expired or issued in the future")
    if not isinstance(claims.get("device"), str):
        raise Reject("claims", "device must be a string")


def verify_webhook(secrets: list[str], webhook_id: str, timestamp: int, body: bytes, signature_header: str,
                   *, now: int, tolerance_s: int) -> None:
    if abs(now - timestamp) > tolerance_s:
        raise Reject("timestamp", "outside the tolerance")
    content = f"{webhook_id}.{timestamp}.".encode() + body
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        for entry in signature_header.split(" "):
            version, _, value = entry.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return
    raise Reject("signature", "no v1 signature verifies")


def canonical_user(name: str) -> str:
    """PROTOCOL.md's user-name rule, from unicodedata directly."""

    def steps(text: str) -> str:  # 2.5's steps 1 to 5
        return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text.strip()).casefold()).strip()

    folded = steps(name)
    if not folded or len(folded) > 256 or steps(folded) != folded or any(
            unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in folded):
        raise Reject("claims", "refused user name")
    return folded


def test_the_independent_verifier_accepts_rfc7515_es256_example() -> None:
    """RFC 7515 appendix A.3: proof that the hand-rolled verifier is right before it judges pushauth."""
    jwk = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
           "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    token = ("eyJhbGciOiJFUzI1NiJ9"
             ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
             ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q")
    h, p, s = token.split(".")
    signature = b64url_strict(s)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key(jwk).verify(der, f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_key(jwk).verify(der, f"{h}.{p}x".encode(), ec.ECDSA(hashes.SHA256()))


# ============================================================================================================
# pushauth's side
# ============================================================================================================

@contextlib.contextmanager
def frozen_clock(now: int) -> Iterator[None]:
    """pushauth.clock.now is the one clock every server decision and the phone read."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "now", lambda: now)
        yield


class Server:
    """The server's device-request path (Devices.authenticate, then the gate that records the jti and
    checks the device), on an in-process store holding the vectors' device."""

    def __init__(self, device_id: str, device_jwk: Mapping[str, str]) -> None:
        self.redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
        self.ks = KeySpace("pa")
        self.devices = Devices(self.redis, self.ks, from_mapping({}), cast(Any, None))
        self.device_id = device_id
        self.device_jwk = device_jwk

    async def __aenter__(self) -> Server:
        uid = ids.device_uid(self.device_id)
        assert uid is not None
        await self.redis.hset(self.ks.device(uid, self.device_id),
                              mapping={"st": "active", "jwk": json.dumps(dict(self.device_jwk))})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.redis.aclose()

    async def request(self, authorization: str, request: Json, now: int) -> None:
        body = (request["body"] or "").encode()
        with frozen_clock(now):
            dev = await self.devices.authenticate(authorization, method=request["method"],
                                                  path_qs=request["path_qs"], body=body)
            await self.devices.gate(dev, self.ks.device(dev.uid, dev.device_id), "challenge")


def pushauth_enrollment(token: str, request: Json, now: int) -> ECKey:
    """What the server does with a registration's signature (pushauth/devices/service.py `register`)."""
    header = jws.read_header(token, typ=REQ_TYP, allow_jwk=True)
    if "jwk" not in header:
        raise device_auth.BadDeviceRequest("enrollment must carry the new public key as a jwk header")
    key = jws.import_public_jwk(header["jwk"])
    device_auth.verify_request(token, key, method=request["method"], path_qs=request["path_qs"],
                               body=(request["body"] or "").encode(), now=now, max_skew_s=60)
    return key


class VectorPhone(Phone):
    """The reference phone, whose JWKS fetch returns the vectors' JWKS and is counted."""

    def __init__(self, *, jwks: Json, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jwks = jwks
        self.refetches = 0

    async def refresh_server_keys(self) -> None:
        self.refetches += 1
        self._server_keys = {k["kid"]: jws.import_public_jwk(k) for k in self.jwks["keys"]}


# ============================================================================================================
# The checks, one per vector file; each runs on the committed vectors and on a fresh generator run
# ============================================================================================================

def check_jws_record(v: Json) -> tuple[str, str, str]:
    """A vector's token against its recorded parts: signing input and decoded header and payload."""
    token = v["jws"]
    h, p, s = token.split(".")
    assert v["signing_input"] == f"{h}.{p}"
    assert json.loads(b64url_strict(h)) == v["header"]
    assert json.loads(b64url_strict(p)) == v["payload"]
    return h, p, s


async def check_keys(folder: Path) -> None:
    doc = load(folder, "keys.json")
    for name, k in doc["keys"].items():
        private, public = k["private_jwk"], k["public_jwk"]
        # the public half really is the private key's point
        d = int.from_bytes(b64url_strict(private["d"]), "big")
        numbers = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
        assert (b64url(numbers.x.to_bytes(32, "big")), b64url(numbers.y.to_bytes(32, "big"))) == (
            public["x"], public["y"]), name
        assert public == {m: private[m] for m in ("kty", "crv", "x", "y")}
        assert public_key(public).public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode() == \
            k["public_key_spki_pem"]
        # RFC 7638, independently and by pushauth
        assert k["thumbprint_input"] == json.dumps(
            {"crv": public["crv"], "kty": public["kty"], "x": public["x"], "y": public["y"]},
            separators=(",", ":"))
        assert thumbprint(public) == b64url(hashlib.sha256(k["thumbprint_input"].encode()).digest())
        assert thumbprint(public) == k["thumbprint"] == jws.thumbprint(jws.import_public_jwk(public))
    keys = doc["keys"]
    for jwks, order in ((doc["jwks"], ["server"]), (doc["jwks_during_rotation"], ["server_next", "server"])):
        assert [j["kid"] for j in jwks["keys"]] == [keys[n]["thumbprint"] for n in order]  # current first
        for j in jwks["keys"]:
            assert set(j) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
            assert (j["use"], j["alg"]) == ("sig", "ES256")
            assert j["kid"] == thumbprint(j)  # kid = RFC 7638 thumbprint: a client can recompute it
            jws.import_public_jwk(j)


async def check_user_names(folder: Path) -> None:
    doc = load(folder, "user_names.json")
    for case in doc["accepted"]:
        assert canonical(case["input"]) == case["canonical"] == canonical_user(case["input"]), case
        assert canonical(case["canonical"]) == case["canonical"]  # idempotent
    for case in doc["refused"]:
        with pytest.raises(Unprocessable) as caught:
            canonical(case["input"])
        assert caught.value.code == case["error"] == "invalid_user"
        with pytest.raises(Reject):
            canonical_user(case["input"])


async def check_enrollment(folder: Path) -> None:
    doc = load(folder, "enrollment.json")
    keys = load(folder, "keys.json")["keys"]
    # The URI: by the reference phone's strict parser, and by plain urllib
    parsed = parse_enroll_uri(doc["uri"])
    assert (parsed.server, parsed.code, parsed.jkt) == (doc["parsed"]["server"], doc["parsed"]["code"],
                                                        doc["parsed"]["jkt"])
    parts = urlsplit(doc["uri"])
    assert (parts.scheme, parts.netloc, parts.path) == ("pushauth", "enroll", "")
    assert {k: v[0] for k, v in parse_qs(parts.query, strict_parsing=True).items()} == doc["parsed"]
    assert doc["parsed"]["jkt"] == keys["server"]["thumbprint"]
    # The pin: some key in the JWKS must have the QR code's thumbprint (recomputed, not its kid)
    for check in doc["jkt_checks"]:
        jwks = resolve(folder, check["jwks"])
        found = any(thumbprint(k) == check["jkt"] for k in jwks["keys"])
        assert found == (check["expected"] == "match"), check["why"]
        assert found == any(jws.thumbprint(jws.import_public_jwk(k)) == check["jkt"] for k in jwks["keys"])
    # The registration: pushauth's server path, then the independent verifier
    v = doc["registration"]
    check_jws_record(v)
    request, body = v["request"], v["request"]["body"].encode()
    assert v["authorization"] == f"PushAuth {v['jws']}"
    assert v["body_sha256"] == b64url(hashlib.sha256(body).digest()) == v["payload"]["bh"]
    key = pushauth_enrollment(v["jws"], request, v["now"])
    assert jws.thumbprint(key) == keys["device"]["thumbprint"]
    header, claims = verify_es256(v["jws"], typ=REQ_TYP, keys={}, enrollment=True)
    assert header["jwk"] == keys["device"]["public_jwk"]
    assert "kid" not in header
    check_request_claims(claims, method="POST", path_qs="/v1/devices", body=body, now=v["now"], skew=60)
    assert json.loads(body)["code"] == doc["parsed"]["code"]


async def check_device_requests(folder: Path) -> None:
    doc = load(folder, "device_requests.json")
    device = load(folder, "keys.json")["keys"]["device"]
    trusted = {doc["device_id"]: device["public_jwk"]}
    for v in doc["vectors"]:
        check_jws_record(v)
        request = v["request"]
        body = (request["body"] or "").encode()
        assert v["authorization"] == f"PushAuth {v['jws']}"
        assert v["header"] == {"alg": "ES256", "typ": REQ_TYP, "kid": doc["device_id"]}
        assert ("bh" in v["payload"]) == bool(body), "bh exactly when there is a body"
        if body:
            assert v["payload"]["bh"] == v["body_sha256"] == b64url(hashlib.sha256(body).digest())
        # pushauth: the server's own path, and the library calls it is made of
        async with Server(doc["device_id"], device["public_jwk"]) as server:
            await server.request(v["authorization"], request, v["now"])
        assert jws.read_header(v["jws"], typ=REQ_TYP)["kid"] == doc["device_id"]
        device_auth.verify_request(v["jws"], jws.import_public_jwk(device["public_jwk"]),
                                   method=request["method"], path_qs=request["path_qs"], body=body,
                                   now=v["now"], max_skew_s=doc["max_skew_s"])
        # independent
        _, claims = verify_es256(v["jws"], typ=REQ_TYP, keys=trusted)
        check_request_claims(claims, method=request["method"], path_qs=request["path_qs"], body=body,
                             now=v["now"], skew=doc["max_skew_s"])
        # the skew is +-max_skew_s inclusive
        for shift in (-doc["max_skew_s"], doc["max_skew_s"]):
            check_request_claims(claims, method=request["method"], path_qs=request["path_qs"], body=body,
                                 now=v["now"] + shift, skew=doc["max_skew_s"])


async def check_negative_requests(folder: Path) -> None:
    doc = load(folder, "negative_requests.json")
    device = load(folder, "keys.json")["keys"]["device"]
    trusted = {doc["device_id"]: device["public_jwk"]}
    names = set()
    for v in doc["vectors"]:
        assert v["expected"] == "reject"
        names.add(v["name"])
        request, token = v["request"], v["token"]
        body = (request["body"] or "").encode()
        # pushauth refuses it (the last presentation), with the documented status and error code
        refused: ApiError | None = None
        try:
            if v["enrollment"]:
                pushauth_enrollment(token, request, v["now"])
            else:
                async with Server(doc["device_id"], device["public_jwk"]) as server:
                    for _ in range(v["presentations"]):
                        await server.request(f"PushAuth {token}", request, v["now"])
        except ApiError as exc:
            refused = exc
        assert refused is not None, f"pushauth accepted {v['name']}"
        assert (refused.status, refused.code) == (v["server_error"]["status"], v["server_error"]["error"])
        # and so does the independent verifier, at the stage the vector names
        seen: set[str] = set()
        stage = None
        try:
            for _ in range(v["presentations"]):
                _, claims = verify_es256(token, typ=REQ_TYP, keys=trusted, enrollment=v["enrollment"])
                check_request_claims(claims, method=request["method"], path_qs=request["path_qs"],
                                     body=body, now=v["now"], skew=doc["max_skew_s"])
                if claims["jti"] in seen:
                    raise Reject("replay", "jti seen before")
                seen.add(claims["jti"])
        except Reject as exc:
            stage = exc.stage
        assert stage == v["rejected_at"], v["name"]
    # the brief's four, at least
    assert {"alg_none", "alg_hs256", "wrong_bh", "tampered_payload"} <= names


class Refetch:
    """The independent side's JWKS fetch: the JWKS during the rotation, counted."""

    def __init__(self, jwks: Mapping[str, Mapping[str, Any]]) -> None:
        self.jwks = jwks
        self.count = 0

    def __call__(self) -> Mapping[str, Mapping[str, Any]]:
        self.count += 1
        return self.jwks


def independent_challenge(token: str, known: Mapping[str, Mapping[str, Any]], refetch: Refetch,
                          phone: Json) -> str | None:
    """Where the independent verifier refuses a challenge (None: it accepts it)."""
    try:
        _, claims = verify_es256(token, typ=CHALLENGE_TYP, keys=known, refetch=refetch)
        check_challenge_claims(claims, phone)
    except Reject as exc:
        return exc.stage
    return None


async def check_challenges(folder: Path) -> None:
    doc = load(folder, "challenges.json")
    keys = load(folder, "keys.json")
    ph = doc["phone"]
    device = ECKey.import_key(dict(keys["keys"]["device"]["private_jwk"]))
    known = {j["kid"]: j for j in keys["jwks"]["keys"] if j["kid"] in ph["known_server_keys"]}
    rotation = {j["kid"]: j for j in keys["jwks_during_rotation"]["keys"]}
    assert sorted(known) == sorted(ph["known_server_keys"])
    accepted = 0
    for v in doc["vectors"]:
        check_jws_record(v)
        assert "number" not in v["payload"], "the number is never sent to the phone"
        # pushauth: the reference phone, with the server key it learnt at enrollment and its clock frozen
        phone = VectorPhone(jwks=keys["jwks_during_rotation"], device_id=ph["device_id"], user=ph["user"],
                            server=ph["server"], key=device,
                            server_keys={kid: jws.import_public_jwk(j) for kid, j in known.items()})
        refetch = Refetch(rotation)
        with frozen_clock(ph["now"]):
            if v["expected"] == "accept":
                challenge = await phone.verify_challenge(v["jws"])
                p = v["payload"]
                assert (challenge.id, challenge.user, challenge.nonce, challenge.app) == (
                    p["jti"], p["sub"], p["nonce"], p["app"])
                assert (challenge.iat, challenge.exp, challenge.number_matching, challenge.context) == (
                    p["iat"], p["exp"], p["number_matching"], p.get("ctx"))
                assert independent_challenge(v["jws"], known, refetch, ph) is None
                accepted += 1
            else:
                with pytest.raises(PhoneError):
                    await phone.verify_challenge(v["jws"])
                assert independent_challenge(v["jws"], known, refetch, ph) == v["rejected_at"], v["name"]
        # an unknown kid is worth exactly one JWKS fetch, by both
        assert phone.refetches == refetch.count == int(v["refetches_jwks"]), v["name"]
    assert accepted >= 3


def pushauth_assertion(token: str, jwks: Mapping[str, Json], rp: Json) -> str | None:
    """pushauth's JWS policy and verification, then the claims a relying party checks: where it refuses."""
    try:
        header = jws.read_header(token, typ=ASSERTION_TYP)
    except jws.InvalidJWS:
        return "header"
    if header["kid"] not in jwks:
        return "key"
    try:
        claims = jws.verify(token, jws.import_public_jwk(jwks[header["kid"]]))
    except jws.InvalidJWS:
        return "signature"
    try:
        check_assertion_claims(claims, rp)
    except Reject:
        return "claims"
    return None


async def check_assertions(folder: Path) -> None:
    doc = load(folder, "assertions.json")
    rp = doc["relying_party"]
    jwks = {j["kid"]: j for j in resolve(folder, rp["jwks"])["keys"]}
    for v in doc["vectors"]:
        check_jws_record(v)
        independent = None
        try:
            _, claims = verify_es256(v["jws"], typ=ASSERTION_TYP, keys=jwks)
            check_assertion_claims(claims, rp)
        except Reject as exc:
            independent = exc.stage
        expected = None if v["expected"] == "accept" else v["rejected_at"]
        assert pushauth_assertion(v["jws"], jwks, rp) == independent == expected, v["name"]
        if v["expected"] == "accept":
            assert v["payload"]["exp"] - v["payload"]["iat"] == 300


async def check_webhooks(folder: Path) -> None:
    doc = load(folder, "webhooks.json")
    tolerance = doc["tolerance_s"]
    for v in doc["vectors"]:
        secrets = v.get("secrets") or [v["secret"]]
        body = v["body"].encode()
        # pushauth's signer: exact
        keys = [parse_webhook_secret(s) for s in secrets]
        assert webhook_sign(keys, v["webhook_id"], v["webhook_timestamp"], body) == v["webhook_signature"]
        # independent HMAC, and each signature in the header verifies with its own secret alone
        for secret in secrets:
            verify_webhook([secret], v["webhook_id"], v["webhook_timestamp"], body, v["webhook_signature"],
                           now=v["webhook_timestamp"], tolerance_s=tolerance)
        # the standardwebhooks library (the receivers' side) signs the same
        when = dt.datetime.fromtimestamp(v["webhook_timestamp"], dt.UTC)
        assert " ".join(Webhook(s).sign(v["webhook_id"], when, v["body"])
                        for s in secrets) == v["webhook_signature"]
        if v["name"] == "alert_created":
            assert v["hmac_key_hex"] == base64.b64decode(v["secret"].removeprefix("whsec_")).hex()
            assert v["signed_content"] == f"{v['webhook_id']}.{v['webhook_timestamp']}.{v['body']}"
            assert v["headers"] == {"content-type": "application/json", "webhook-id": v["webhook_id"],
                                    "webhook-timestamp": str(v["webhook_timestamp"]),
                                    "webhook-signature": v["webhook_signature"]}
            event = json.loads(body)
            assert event == v["decoded_body"]
            assert event["type"] == "alert.created"
            alert = event["data"]
            assert {"id", "kind", "severity", "user", "evidence", "created_at", "status"} <= set(alert)
            assert alert["severity"] in ("info", "low", "medium", "high", "critical")
            assert alert["status"] in ("open", "acked")
            assert isinstance(alert["evidence"], dict)
            for stamp in (event["timestamp"], alert["created_at"]):
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    for v in doc["negative"]:
        assert v["expected"] == "reject"
        with pytest.raises(Reject):
            verify_webhook([v["secret"]], v["webhook_id"], v["webhook_timestamp"], v["body"].encode(),
                           v["webhook_signature"], now=v["now"], tolerance_s=tolerance)


async def check_push(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = load(folder, "push.json")
    user = load(folder, "challenges.json")["phone"]["user"]
    cid, server, exp = doc["challenge_id"], doc["server"], doc["challenge_exp"]
    data = PushMessage(cid, server, exp).data()
    assert doc["data"] == data == {"type": "challenge", "challenge_id": cid, "server": server}
    message = doc["fcm"]["request_body"]["message"]
    assert message["data"] == data
    assert "notification" not in message
    assert message["android"] == {"priority": "high", "ttl": f"{exp - doc['sent_at']}s"}
    headers, payload = doc["apns"]["headers"], doc["apns"]["payload"]
    assert headers["apns-expiration"] == str(exp)
    assert headers["apns-collapse-id"] == cid
    assert {k: v for k, v in payload.items() if k != "aps"} == data
    assert payload["aps"]["mutable-content"] == 1
    assert user not in json.dumps(doc), "no user data passes through Google or Apple"

    # What pushauth's APNs provider hands to the HTTP/2 client for the same challenge
    sent: list[NotificationRequest] = []

    async def send_notification(request: NotificationRequest) -> NotificationResult:
        sent.append(request)
        return NotificationResult(notification_id="00000000-0000-0000-0000-000000000000", status="200")

    stub = SimpleNamespace(send_notification=send_notification,
                           pool=SimpleNamespace(close=lambda: None, connections=[]))
    provider = ApnsProvider(topic="org.example.authenticator", sandbox=False, connections=1, concurrency=1,
                            key_pem="unused", key_id="KEYID", team_id="TEAMID")
    monkeypatch.setattr(provider, "_new_apns", lambda: stub)
    expires = int(time.time()) + 55
    try:
        outcome = await provider.send("ab" * 32, PushMessage(cid, server, expires))
    finally:
        await provider.aclose()
    assert outcome.kind is OutcomeKind.SENT
    (request,) = sent
    assert request.message == payload
    assert request.collapse_key == cid
    assert request.priority == int(headers["apns-priority"])
    assert request.push_type is not None
    assert request.push_type.value == headers["apns-push-type"]
    assert request.time_to_live is not None
    assert 54 <= request.time_to_live <= 55  # apns-expiration = now + time_to_live: the challenge's expiry


CHECKS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "keys.json": check_keys,
    "user_names.json": check_user_names,
    "enrollment.json": check_enrollment,
    "device_requests.json": check_device_requests,
    "negative_requests.json": check_negative_requests,
    "challenges.json": check_challenges,
    "assertions.json": check_assertions,
    "webhooks.json": check_webhooks,
}


# ============================================================================================================
# Tests
# ============================================================================================================

def test_every_vector_file_is_checked_and_generated() -> None:
    assert sorted(p.name for p in VECTORS.glob("*.json")) == sorted(FILES)
    assert set(CHECKS) | {"push.json"} == set(FILES)


@pytest.mark.parametrize("name", sorted(CHECKS))
async def test_vectors(name: str) -> None:
    await CHECKS[name](VECTORS)


async def test_push_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    await check_push(VECTORS, monkeypatch)


_SIGNED_FIELDS = ("jws", "token", "authorization")


def without_signatures(value: Any, key: str = "") -> Any:
    """The vectors with every ECDSA signature blanked: what must be identical between two runs."""
    if isinstance(value, dict):
        return {k: without_signatures(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [without_signatures(v, key) for v in value]
    if key in _SIGNED_FIELDS and isinstance(value, str):
        return value.rsplit(".", 1)[0] + ".<signature>"
    return value


def signatures(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in signatures(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in signatures(v, key)]
    return [value.rsplit(".", 1)[1]] if key == "jws" and isinstance(value, str) else []


async def test_generator_run_again_verifies_the_same_way(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(sys.executable, str(GENERATOR), str(tmp_path), cwd=ROOT,
                                                stdout=pipe, stderr=pipe)
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    for name in FILES:
        old, new = load(VECTORS, name), load(tmp_path, name)
        assert without_signatures(new) == without_signatures(old), f"{name} changed beyond its signatures"
        if name in ("device_requests.json", "challenges.json", "assertions.json"):
            fresh = [a != b for a, b in zip(signatures(old), signatures(new), strict=True)]
            assert any(fresh), f"{name}: ES256 signatures are randomised; a rerun should differ"
        if name == "webhooks.json":
            assert new == old  # HMAC: exact
    for check in CHECKS.values():
        await check(tmp_path)
    await check_push(tmp_path, monkeypatch)


def test_tampering_with_a_vector_is_caught() -> None:
    """The checks are not vacuous: a flipped bit in a recorded signature or payload fails them."""
    v = copy.deepcopy(load(VECTORS, "device_requests.json")["vectors"][2])
    h, p, s = v["jws"].split(".")
    sig = bytearray(b64url_strict(s))
    sig[10] ^= 1
    with pytest.raises(Reject) as rejected:
        verify_es256(f"{h}.{p}.{b64url(bytes(sig))}", typ=REQ_TYP,
                     keys={v["header"]["kid"]: load(VECTORS, "keys.json")["keys"]["device"]["public_jwk"]})
    assert rejected.value.stage == "signature"
    v["payload"]["iat"] += 1
    with pytest.raises(AssertionError):
        check_jws_record(v)


def test_protocol_md_refers_to_every_vector_file_and_quotes_them_exactly() -> None:
    text = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")
    for name in FILES:
        assert f"tests/vectors/{name}" in text, name
    assert "tests/vectors/generate.py" in text
    keys = load(VECTORS, "keys.json")["keys"]
    webhook = next(v for v in load(VECTORS, "webhooks.json")["vectors"] if v["name"] == "alert_created")
    enrollment = load(VECTORS, "enrollment.json")
    quoted = [keys["device"]["thumbprint_input"], keys["device"]["thumbprint"], keys["server"]["thumbprint"],
              webhook["webhook_signature"], webhook["webhook_id"], enrollment["uri"],
              enrollment["registration"]["body_sha256"]]
    for value in quoted:
        assert value in text, f"PROTOCOL.md does not quote {value!r} from the vectors"
