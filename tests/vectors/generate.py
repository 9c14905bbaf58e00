"""Generate the protocol test vectors in this folder (PROTOCOL.md, section "Test vectors").

    .venv/bin/python tests/vectors/generate.py [OUTPUT_DIR]      (default: the folder of this file)

Everything is fixed: the P-256 private keys (below, as JWKs with `d`), ids, jtis, nonces, bodies and
times. The one thing that is not is an ECDSA signature: ES256 signs with a random per-signature nonce, so
each run writes different signatures over the same signing inputs. A vector is therefore checked by
verification (the signature verifies with the public key; the decoded header and payload are exactly the
ones given; `bh` is the SHA-256 of the body; ...), never by comparing signature bytes. The webhook
signatures are HMAC and are exact.

The tokens are made by pushauth's own emitters, so the vectors are what the server and the reference phone
really send: device requests by `device_auth.sign_request` (the phone simulator's signer), challenges and
assertions by the server's `Challenges` signer, the webhook body by the alert sink's encoder. Each expected
header and payload is also written out here by hand and compared with what the emitter produced, so a
change of the wire format stops this script instead of silently changing the vectors. The negative
vectors are built by hand with `cryptography` directly.

tests/test_protocol_vectors.py checks every vector with pushauth's verifiers and, independently, with
`cryptography` primitives; and runs this script again to check that a fresh run verifies the same way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import sys
import warnings
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from firebase_admin import messaging
from joserfc.jwk import ECKey

from pushauth.accounts.users import canonical
from pushauth.alerts.delivery import delivery_id
from pushauth.alerts.settings import parse_webhook_secret
from pushauth.alerts.sinks.base import Notification
from pushauth.alerts.sinks.webhook import event_body
from pushauth.alerts.sinks.webhook import sign as webhook_sign
from pushauth.alerts.store import alert_view
from pushauth.challenges.service import ASSERTION_TYP, CHALLENGE_TYP, Challenges
from pushauth.config import Settings, from_mapping
from pushauth.crypto import device_auth, jws
from pushauth.crypto.keys import KeyRing, ServerKey
from pushauth.push import apns, base
from pushauth.push.base import PushMessage
from pushauth.store import KeySpace

HERE = Path(__file__).resolve().parent

# -- fixed inputs --------------------------------------------------------------------------------------------

# d = SHA-256("pushauth protocol test vector key: <name>") mod (n - 1) + 1, written out. Test keys only.
KEYS: dict[str, dict[str, str]] = {
    "device": {"kty": "EC", "crv": "P-256", "x": "RzMo9ZmLfe61uOEm5dwhWqrxoRUuIREeX-u9lmNcSXE",
               "y": "F3lpC1PgPRdt-cwJ9aMSnqXbbuwa1_H6vmXtkgTkV_o",
               "d": "Q1yvtKcann4G0yyirlMPOv8XwCKhyS5_tQlhnTYSrMg"},
    "server": {"kty": "EC", "crv": "P-256", "x": "f1Uz6Lz2QC2rOqlLugj5I1fEQ2qFQZF8ZSA8dq2DvCw",
               "y": "Vpe_4PAavumIwySblIo1QRnxeup-JV5qqgY5W6vrKEk",
               "d": "ubw-OVZRhINsOP-i71lFF-2oJiaquUdFUIbCI_As3Bw"},
    "server_next": {"kty": "EC", "crv": "P-256", "x": "mDLhTinA46HMpKGv0aFFBZtrnNfgv-w4zbILkE--CC0",
                    "y": "MXuyR4sw0yt3jU3YFmHUdmRAtqc-p0ixcZ3eNpG7tss",
                    "d": "EMbJyGFckbEJZfDHitOsomTUQHOkF-79iITXQ5oey1Y"},
    "other": {"kty": "EC", "crv": "P-256", "x": "r7oQ-l4986S1BEPteriNmiDAtV8iJVzl1WK7Qo4dUM4",
              "y": "16_2T8JC57V6dQIRoa6xlH1P6yXxOuasHxr1MXPDKtg",
              "d": "6xCfyHP8OqItDNC3UTMdWMfACV879jK9ah3YhxW6708"},
}
KEY_ROLES = {
    "device": "the phone's own key (made at enrollment)",
    "server": "the server's signing key (current before the rotation; the jkt in the QR code)",
    "server_next": "the server's new signing key after `pushauth keys rotate` (current after it)",
    "other": "a key nobody trusts: another phone, or an attacker",
}

SERVER = "https://pushauth.example.org"
APP_ID, APP_NAME = "webmail", "NHSmail webmail"
USER = "alice@nhs.net"
UID = "k3nq7xv2mdt5ra4w"                                   # 16 of [a-z2-7]: the user's opaque id
DEVICE_ID = f"d{UID}p6ye3zqbn5lc2hwf"
OTHER_DEVICE_ID = f"d{UID}t4vbqx2m7ksa6dre"
UNKNOWN_DEVICE_ID = f"d{UID}zzzzzzzzzzzzzzzz"
CHALLENGE_ID = f"c{UID}m4jx7q2rwz5kd3ybtn6vfh2gpa"
OTHER_CHALLENGE_ID = f"c{UID}x2wq7rbn4md5tzk3vh6jyc7pfe"
ALERT_ID = f"a{UID}q5rm2xk7wdb3nz4t"
ENROLLMENT_CODE = "rCmJeHsqQ-yf4sqITF7RWXLhjQG6a0x8i9IKsUSWvIM"  # 256 bits, base64url
NONCE = "yy6Ahy05tVSBpnTY65AtCw"                                  # 128 bits, base64url
NUMBER = "42"
APNS_TOKEN = "5f1e0c2a9b7d4e3f8a6b1c0d2e4f6a8b9c7d5e3f1a2b4c6d8e0f1a3b5c7d9e1f"
FCM_TOKEN = "fcm-registration-token-for-the-test-vectors:APA91bH0test"
CONTEXT = {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0",
           "location": "Leeds, GB"}
# What the phone is shown of it (never the login flow's text as it came: pushauth/challenges/context.py).
PHONE_CONTEXT = {"ip": "203.0.113.9", "user_agent": "Firefox on Windows", "location": "Leeds, GB"}

NOW = 1767225600                       # 2026-01-01T00:00:00Z: the phone's and the server's clock
CHALLENGE_IAT = NOW - 5                # the login flow created the challenge 5 s before the phone fetched it
CHALLENGE_EXP = CHALLENGE_IAT + 60     # default ttl_s
DECIDED_AT = NOW + 3                   # the user approved 3 s later
ASSERTION_READ = NOW + 4               # and the waiting login flow read the status 1 s after that
MAX_SKEW_S = 60

WEBHOOK_SECRET = "whsec_kMlfOAHUkAnpAlWqTiWyNTHD/NFiWObnTjN/5z5nH+E="
WEBHOOK_SECRET_NEXT = "whsec_" + base64.b64encode(hashlib.sha256(b"next webhook secret").digest()).decode()
WEBHOOK_TS = NOW + 4

_encode = msgspec.json.encode


# -- helpers -------------------------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def public_jwk(name: str) -> dict[str, str]:
    k = KEYS[name]
    return {"kty": k["kty"], "crv": k["crv"], "x": k["x"], "y": k["y"]}


def ec_key(name: str) -> ECKey:
    return ECKey.import_key(dict(KEYS[name]))


def crypto_private_key(name: str) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(b64url_decode(KEYS[name]["d"]), "big")
    return ec.derive_private_key(d, ec.SECP256R1())


def thumbprint_input(name: str) -> str:
    """RFC 7638: the required members, sorted, no white space."""
    k = KEYS[name]
    return json.dumps({"crv": k["crv"], "kty": k["kty"], "x": k["x"], "y": k["y"]}, separators=(",", ":"))


def kid(name: str) -> str:
    return jws.thumbprint(ec_key(name))


def server_jwk(name: str) -> dict[str, str]:
    return {**public_jwk(name), "kid": kid(name), "use": "sig", "alg": "ES256"}


def jws_parts(token: str) -> dict[str, Any]:
    h, p, _ = token.split(".")
    return {"jws": token, "signing_input": f"{h}.{p}", "header": json.loads(b64url_decode(h)),
            "payload": json.loads(b64url_decode(p))}


def expect(token: str, header: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The token's parts, after checking that the emitter produced exactly the header and payload meant."""
    parts = jws_parts(token)
    if parts["header"] != header or parts["payload"] != payload:
        raise SystemExit(f"the wire format changed:\n  header  {parts['header']}\n  meant   {header}\n"
                         f"  payload {parts['payload']}\n  meant   {payload}")
    return parts


def es256_raw(name: str, signing_input: str) -> bytes:
    """ES256 with `cryptography` directly: DER from OpenSSL, converted to JOSE's raw r || s (64 bytes)."""
    der = crypto_private_key(name).sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def hand_signed(header: dict[str, Any], payload: dict[str, Any], name: str) -> str:
    """A compact JWS built without pushauth (for the negative vectors)."""
    return hand_signed_raw(compact_json(header), compact_json(payload), name)


def hand_signed_raw(header: bytes, payload: bytes, name: str) -> str:
    """The same over exactly these header and payload bytes (JSON no dict can hold: a key twice)."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    return f"{signing_input}.{b64url(es256_raw(name, signing_input))}"


def sha256_b64url(body: bytes) -> str:
    return b64url(hashlib.sha256(body).digest())


def server_settings() -> Settings:
    return from_mapping({
        "server": {"base_url": SERVER},
        "keys": {"ephemeral": True},
        "applications": [{"id": APP_ID, "name": APP_NAME, "api_key_sha256": ["0" * 64]}],
    })


def server_challenges(signing_key: str) -> Challenges:
    """The server's challenge service, with only what its signers use: settings and the keyring."""
    created = dt.datetime.fromtimestamp(NOW - 86400, dt.UTC)
    key = ServerKey(kid(signing_key), ec_key(signing_key), created)
    ring = KeyRing(key, {key.kid: key})
    nothing = cast(Any, None)
    return Challenges(nothing, KeySpace("pa"), server_settings(), lambda: ring, nothing, nothing, nothing,
                      nothing)


def challenge_hash(**overrides: str) -> dict[str, str]:
    """A challenge as the server stores it (the fields its signer reads)."""
    h = {"app": APP_ID, "user": USER, "st": "pending", "iat": str(CHALLENGE_IAT), "exp": str(CHALLENGE_EXP),
         "nonce": NONCE, "num": NUMBER, "ctx": _encode(CONTEXT).decode(),
         "pctx": _encode(PHONE_CONTEXT).decode(), "devs": DEVICE_ID}
    h.update(overrides)
    return h


def file_doc(description: str, section: str, **content: Any) -> dict[str, Any]:
    return {"description": description, "protocol_section": section, **content}


# -- keys ----------------------------------------------------------------------------------------------------

def keys_file() -> dict[str, Any]:
    keys = {}
    for name, role in KEY_ROLES.items():
        keys[name] = {
            "role": role,
            "private_jwk": KEYS[name],
            "public_jwk": public_jwk(name),
            "thumbprint_input": thumbprint_input(name),
            "thumbprint": kid(name),
            "public_key_spki_pem": crypto_private_key(name).public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        }
    before = KeyRing(*_ring("server"))
    during = KeyRing(*_ring("server_next", "server"))
    return file_doc(
        "The fixed P-256 keys every other vector uses (test keys: never use them for anything real), their "
        "RFC 7638 thumbprints, and the server's JWKS before and during a key rotation.",
        "Server keys and JWKS",
        keys=keys,
        jwks=before.jwks(),
        jwks_during_rotation=during.jwks(),
    )


def _ring(current: str, *others: str) -> tuple[ServerKey, dict[str, ServerKey]]:
    made = {"server": NOW - 86400 * 90, "server_next": NOW - 86400}
    keys = {n: ServerKey(kid(n), ec_key(n), dt.datetime.fromtimestamp(made[n], dt.UTC))
            for n in (current, *others)}
    return keys[current], {k.kid: k for k in keys.values()}


# -- user names ----------------------------------------------------------------------------------------------

USER_NAMES: list[tuple[str, str]] = [
    ("alice@nhs.net", "already canonical"),
    ("  Alice@NHS.net\t", "surrounding white space stripped, case folded"),
    ("\u00a0bob@example.org\u3000", "Unicode white space (no-break space, ideographic space) is stripped"),
    ("ＡＬＩＣＥ@ｎｈｓ.ｎｅｔ", "full-width letters: NFKC makes them ASCII"),
    ("Straße@example.org", "case folding, not lower-casing: ß folds to ss"),
    ("\u212aelvin@example.org", "KELVIN SIGN: NFKC gives K, folding gives k"),
    ("\ufb01ona@example.org", "the fi ligature is two letters after NFKC"),
    ("ΣΊΣΥΦΟΣ@example.org", "folding maps every sigma to σ (never the final form ς)"),
    ("Zoe\u0308@example.org", "e + COMBINING DIAERESIS composes to ë"),
    ("Ⅻ@example.org", "ROMAN NUMERAL TWELVE is xii after NFKC and folding"),
    ("\u00b4alice@nhs.net", "ACUTE ACCENT is a space and U+0301 under NFKC: the white space NFKC makes at "
     "the ends is stripped too, so the canonical form starts with U+0301 and canonicalising it again gives "
     "it back"),
    ("\u3000\u02dcBob@example.org", "an ideographic space, then SMALL TILDE (U+0020 U+0303 under "
     "NFKC): both spaces are stripped; the canonical form starts with U+0303"),
]
USER_NAMES_REFUSED: list[tuple[str, str]] = [
    ("", "empty"),
    ("   ", "empty after stripping"),
    ("alice\u200b@nhs.net", "ZERO WIDTH SPACE is a format character (Cf), refused rather than removed"),
    ("bob\u0007@example.org", "a control character (Cc)"),
    ("\ufdfa" * 15, "15 characters in, 270 after NFKC: longer than 256"),
]


def user_names_file() -> dict[str, Any]:
    accepted = [{"input": raw, "canonical": canonical(raw), "why": why} for raw, why in USER_NAMES]
    refused = []
    for raw, why in USER_NAMES_REFUSED:
        try:
            canonical(raw)
        except Exception as exc:  # Unprocessable
            refused.append({"input": raw, "error": getattr(exc, "code", ""), "why": why})
        else:
            raise SystemExit(f"{raw!r} was expected to be refused")
    return file_doc(
        "User-name canonicalisation: strip, NFKC, case-fold, NFKC, strip; then refuse empty names, names "
        "over 256 code points, names with characters of category Cc, Cf, Cs, Co or Cn, and names whose "
        "result those five steps would change again. The server applies it to every user name it is given; "
        "`canonical` is what it stores, signs (`sub`) and returns (`user`), and canonicalising it again "
        "gives it back.",
        "Conventions / User names",
        accepted=accepted,
        refused=refused,
    )


# -- enrollment ----------------------------------------------------------------------------------------------

def enrollment_file() -> dict[str, Any]:
    # Exactly how the server writes the QR code's URI (pushauth/devices/service.py).
    uri = "pushauth://enroll?" + urlencode({"v": "1", "server": SERVER, "code": ENROLLMENT_CODE,
                                             "jkt": kid("server")})
    body = _encode({"code": ENROLLMENT_CODE, "name": "Alice’s iPhone", "platform": "ios",
                    "push": {"provider": "apns", "token": APNS_TOKEN}})
    jti = "jti-enrollment-0000000001"
    token = device_auth.sign_request(ec_key("device"), method="POST", path_qs="/v1/devices", body=body,
                                     jti=jti, iat=NOW, jwk=public_jwk("device"))
    header = {"alg": "ES256", "typ": "pushauth-req+jwt", "jwk": public_jwk("device")}
    payload = {"htm": "POST", "htu": "/v1/devices", "iat": NOW, "jti": jti, "bh": sha256_b64url(body)}
    registration = {
        "name": "registration",
        "description": "POST /v1/devices: the new key signs its own registration; the public key travels in "
                       "the protected header (`jwk`, no `kid`), and `bh` binds the one-time code in the body "
                       "to that key. The body's name holds U+2019, so the hash is over UTF-8 bytes.",
        "key": "device",
        "now": NOW,
        "request": {"method": "POST", "path_qs": "/v1/devices", "body": body.decode(),
                    "content_type": "application/json"},
        "body_sha256": sha256_b64url(body),
        **expect(token, header, payload),
        "authorization": f"PushAuth {token}",
        "expected": "accept",
        "response_example": {"status": 201, "body": {"device_id": DEVICE_ID, "user": USER,
                                                     "server_keys": KeyRing(*_ring("server")).jwks()}},
    }
    return file_doc(
        "Enrollment: the QR code's URI, the server-key pin (`jkt`) checked against the JWKS, and the signed "
        "registration request.",
        "Enrollment",
        uri=uri,
        parsed={"v": "1", "server": SERVER, "code": ENROLLMENT_CODE, "jkt": kid("server")},
        jkt_checks=[
            {"jwks": "keys.json#jwks", "jkt": kid("server"), "expected": "match",
             "why": "a key in the JWKS has the thumbprint the QR code names: this is the server"},
            {"jwks": "keys.json#jwks_during_rotation", "jkt": kid("server"), "expected": "match",
             "why": "after a rotation the old key is still listed; the pin still matches"},
            {"jwks": {"keys": [server_jwk("other")]}, "jkt": kid("server"), "expected": "refuse",
             "why": "no key with that thumbprint: not the server the QR code was made by"},
        ],
        registration=registration,
    )


# -- device requests -----------------------------------------------------------------------------------------

def device_request(name: str, description: str, method: str, path_qs: str, body: dict[str, Any] | None,
                   jti: str) -> dict[str, Any]:
    raw = b"" if body is None else _encode(body)
    token = device_auth.sign_request(ec_key("device"), method=method, path_qs=path_qs, body=raw, jti=jti,
                                     iat=NOW, kid=DEVICE_ID)
    header = {"alg": "ES256", "typ": "pushauth-req+jwt", "kid": DEVICE_ID}
    payload: dict[str, Any] = {"htm": method, "htu": path_qs, "iat": NOW, "jti": jti}
    if raw:
        payload["bh"] = sha256_b64url(raw)
    request: dict[str, Any] = {"method": method, "path_qs": path_qs, "body": raw.decode() if raw else None}
    if raw:
        request["content_type"] = "application/json"
    return {"name": name, "description": description, "key": "device", "now": NOW, "request": request,
            **({"body_sha256": sha256_b64url(raw)} if raw else {}),
            **expect(token, header, payload), "authorization": f"PushAuth {token}", "expected": "accept"}


def device_requests() -> list[dict[str, Any]]:
    response = f"/v1/device/challenges/{CHALLENGE_ID}/response"
    return [
        device_request("list_pending", "GET with no body: no `bh` claim.", "GET", "/v1/device/challenges",
                       None, "jti-list-pending-0000000001"),
        device_request("fetch_challenge", "GET one challenge (after a push named it).", "GET",
                       f"/v1/device/challenges/{CHALLENGE_ID}", None, "jti-fetch-challenge-000001"),
        device_request("approve", "POST an approval with the number typed from the login page.", "POST",
                       response, {"nonce": NONCE, "decision": "approve", "number": NUMBER},
                       "jti-approve-00000000000001"),
        device_request("deny_not_me", "POST a denial: \"I didn't request this\".", "POST", response,
                       {"nonce": NONCE, "decision": "deny", "reason": "not_me"}, "jti-deny-not-me-000000001"),
        device_request("push_token", "PUT a new APNs token.", "PUT", "/v1/device/push-token",
                       {"provider": "apns", "token": APNS_TOKEN}, "jti-push-token-0000000001"),
        device_request("pause", "POST: pause the user's prompts for a day.", "POST", "/v1/device/pause",
                       {"duration_s": 86400}, "jti-pause-000000000000001"),
        device_request("unenroll", "DELETE this device (no body).", "DELETE", "/v1/device", None,
                       "jti-unenroll-0000000000001"),
    ]


def device_requests_file() -> dict[str, Any]:
    return file_doc(
        "Signed device requests (`Authorization: PushAuth <JWS>`), each accepted by the server at `now` "
        "with the device key registered under `kid`.",
        "Device request signing",
        device_id=DEVICE_ID,
        max_skew_s=MAX_SKEW_S,
        vectors=device_requests(),
    )


# -- negative device requests --------------------------------------------------------------------------------

def negative_requests_file() -> dict[str, Any]:
    base = {v["name"]: v for v in device_requests()}
    approve, listing = base["approve"], base["list_pending"]
    req_header = dict(approve["header"])
    out: list[dict[str, Any]] = []

    def add(name: str, why: str, token: str, request: dict[str, Any], rejected_at: str, error: str,
            *, enrollment: bool = False, status: int = 401, presentations: int = 1) -> None:
        out.append({"name": name, "why": why, "token": token, "request": request, "now": NOW,
                    "enrollment": enrollment, "presentations": presentations, "expected": "reject",
                    "rejected_at": rejected_at, "server_error": {"status": status, "error": error}})

    def resign(payload: dict[str, Any], *, header: dict[str, Any] | None = None, key: str = "device") -> str:
        return hand_signed(header or req_header, payload, key)

    p = approve["payload"]
    h64, p64, s64 = approve["jws"].split(".")

    none_header = {"alg": "none", "typ": "pushauth-req+jwt", "kid": DEVICE_ID}
    add("alg_none", "`alg: none` (an unsecured JWS with an empty signature) is never accepted",
        f"{b64url(compact_json(none_header))}.{p64}.", approve["request"], "header", "bad_signature")

    hs_header = {"alg": "HS256", "typ": "pushauth-req+jwt", "kid": DEVICE_ID}
    hs_input = f"{b64url(compact_json(hs_header))}.{p64}"
    pem = crypto_private_key("device").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_sig = hmac.new(pem, hs_input.encode(), hashlib.sha256).digest()
    add("alg_hs256", "HS256 keyed with the device's public key (PEM): the algorithm-confusion attack. Only "
        "ES256 is accepted, whatever key the verifier holds", f"{hs_input}.{b64url(hs_sig)}",
        approve["request"], "header", "bad_signature")

    tampered_body = _encode({"nonce": NONCE, "decision": "approve", "number": "24"}).decode()
    add("wrong_bh", "the signature is valid, but the body sent is not the body signed (number 42 changed "
        "to 24 in transit): `bh` is not the SHA-256 of the body received", approve["jws"],
        {**approve["request"], "body": tampered_body}, "claims", "bad_request_signature")

    forged = {**p, "htu": f"/v1/device/challenges/{OTHER_CHALLENGE_ID}/response"}
    add("tampered_payload", "the payload was changed after signing (htu pointed at another challenge) and "
        "the original signature kept: the signature does not verify",
        f"{h64}.{b64url(compact_json(forged))}.{s64}",
        {**approve["request"], "path_qs": forged["htu"]}, "signature", "bad_signature")

    add("missing_bh", "a request with a body must carry `bh`",
        resign({k: v for k, v in p.items() if k != "bh"}), approve["request"], "claims",
        "bad_request_signature")

    add("htu_query_mismatch", "`htu` is the path and the query exactly as sent: a query added to the "
        "request and not signed does not match", listing["jws"],
        {**listing["request"], "path_qs": "/v1/device/challenges?all=1"}, "claims", "bad_request_signature")

    add("htm_mismatch", "`htm` is the method exactly (upper case): a POST's signature does not authorise "
        "a PUT", approve["jws"], {**approve["request"], "method": "PUT"}, "claims", "bad_request_signature")

    add("iat_too_old", f"`iat` more than {MAX_SKEW_S} s before the server's clock",
        resign({**p, "iat": NOW - MAX_SKEW_S - 1, "jti": "jti-too-old-00000000000001"}), approve["request"],
        "claims", "stale_request")

    add("iat_in_future", f"`iat` more than {MAX_SKEW_S} s after the server's clock",
        resign({**p, "iat": NOW + MAX_SKEW_S + 1, "jti": "jti-in-future-000000000001"}), approve["request"],
        "claims", "stale_request")

    add("iat_string", "`iat` must be a JSON integer (Unix seconds), not a string",
        resign({**p, "iat": str(NOW), "jti": "jti-iat-string-00000000001"}), approve["request"], "claims",
        "bad_request_signature")

    add("jti_too_short", "`jti` must be 16..64 characters of A-Z a-z 0-9 _ -",
        resign({**p, "jti": "short-jti"}), approve["request"], "claims", "bad_request_signature")

    add("jwk_header_outside_enrollment", "an embedded `jwk` is accepted at enrollment only; elsewhere the "
        "key is the registered one named by `kid`",
        resign(p, header={"alg": "ES256", "typ": "pushauth-req+jwt", "jwk": public_jwk("device")}),
        approve["request"], "header", "bad_signature")

    add("jku_header", "`jku` (and `x5u`, `crit`, any header name but alg, typ, kid, jwk) is refused before "
        "any key is chosen", resign(p, header={**req_header, "jku": "https://attacker.example/jwks.json"}),
        approve["request"], "header", "bad_signature")

    add("challenge_typ", "a request must be typed `pushauth-req+jwt`: a token of another type (here a "
        "challenge's) is not a request, whatever it says",
        resign(p, header={**req_header, "typ": CHALLENGE_TYP}), approve["request"], "header",
        "bad_signature")

    # A key twice: a parser that keeps the last copy (msgspec, Python's json, browsers) reads one request,
    # one that keeps the first (a proxy, a firewall) another. Each is validly signed by the device's key.
    add("duplicate_alg_header", "the header names `alg` twice, `none` first and `ES256` last: a header with "
        "a key twice is malformed, whichever copy a parser would keep",
        hand_signed_raw(b'{"alg":"none","typ":"pushauth-req+jwt","kid":"' + DEVICE_ID.encode()
                        + b'","alg":"ES256"}', compact_json(p), "device"),
        approve["request"], "header", "bad_signature")

    add("duplicate_alg_header_escaped", "the same with the first `alg` written `\\u0061lg`: keys are "
        "compared after their escapes are decoded",
        hand_signed_raw(b'{"\\u0061lg":"none","typ":"pushauth-req+jwt","kid":"' + DEVICE_ID.encode()
                        + b'","alg":"ES256"}', compact_json(p), "device"),
        approve["request"], "header", "bad_signature")

    other_htu = f"/v1/device/challenges/{OTHER_CHALLENGE_ID}/response"
    add("duplicate_htu_payload", "the payload names `htu` twice, another challenge's path first and this "
        "request's last: a payload with a key twice is malformed, even under a valid signature",
        hand_signed_raw(compact_json(req_header),
                        compact_json({**p, "htu": other_htu})[:-1] + b',"htu":' + compact_json(p["htu"])
                        + b"}", "device"),
        approve["request"], "claims", "bad_signature")

    der = crypto_private_key("device").sign(f"{h64}.{p64}".encode(), ec.ECDSA(hashes.SHA256()))
    add("der_signature", "the signature must be JOSE's raw r || s (64 bytes), not the DER that most crypto "
        "libraries return", f"{h64}.{p64}.{b64url(der)}", approve["request"], "signature", "bad_signature")

    add("padded_base64url", "base64url without padding: a `=` anywhere makes the token malformed",
        approve["jws"] + "==", approve["request"], "parse", "bad_signature")

    add("signed_by_another_key", "signed with another key while naming this device in `kid`",
        resign(p, key="other"), approve["request"], "signature", "bad_signature")

    add("unknown_device", "`kid` names no registered device",
        resign(p, header={**req_header, "kid": UNKNOWN_DEVICE_ID}, key="other"), approve["request"], "key",
        "unknown_device")

    add("replay", "the same signed request presented twice: the second is refused (the server remembers "
        f"every `jti` for 2 x {MAX_SKEW_S} + 5 s, longer than any `iat` could pass)", listing["jws"],
        listing["request"], "replay", "replayed", presentations=2)

    enroll = enrollment_file()["registration"]
    ep = enroll["payload"]
    add("enrollment_jwk_with_private_key", "the enrollment `jwk` must be the public key only: one that "
        "carries `d` is refused",
        resign(ep, header={"alg": "ES256", "typ": "pushauth-req+jwt", "jwk": KEYS["device"]}),
        enroll["request"], "header", "bad_key", enrollment=True)

    add("enrollment_with_kid", "enrollment must carry the new public key as `jwk`: a `kid` names nothing "
        "the server knows yet", resign(ep, header={"alg": "ES256", "typ": "pushauth-req+jwt",
                                                  "kid": DEVICE_ID}),
        enroll["request"], "header", "bad_request_signature", enrollment=True)

    return file_doc(
        "Device requests the server must refuse, each with where a careful verifier refuses it "
        "(`rejected_at`: parse | header | key | signature | claims | replay) and the error pushauth answers. "
        "Every one is a variation of a request in device_requests.json or enrollment.json.",
        "Device request signing / What the server refuses",
        device_id=DEVICE_ID,
        max_skew_s=MAX_SKEW_S,
        vectors=out,
    )


# -- challenges ----------------------------------------------------------------------------------------------

CHALLENGE_HEADER_TYP = {"alg": "ES256", "typ": CHALLENGE_TYP}


def challenge_payload(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"iss": SERVER, "aud": DEVICE_ID, "sub": USER, "jti": CHALLENGE_ID, "nonce": NONCE,
                           "iat": CHALLENGE_IAT, "exp": CHALLENGE_EXP, "app": APP_NAME,
                           "number_matching": True, "number_length": len(NUMBER), "ctx": PHONE_CONTEXT}
    out.update(overrides)
    if not out["number_matching"]:
        out.pop("number_length", None)
    return out


def challenges_file() -> dict[str, Any]:
    phone = {"server": SERVER, "device_id": DEVICE_ID, "user": USER, "known_server_keys": [kid("server")],
             "jwks_url": f"{SERVER}/.well-known/jwks.json", "now": NOW, "max_skew_s": MAX_SKEW_S}
    token = server_challenges("server")._sign_challenge(CHALLENGE_ID, challenge_hash(), DEVICE_ID)
    positive = {"name": "challenge", "description": "A challenge as the server signs it for this device.",
                "key": "server", **expect(token, {**CHALLENGE_HEADER_TYP, "kid": kid("server")},
                                          challenge_payload()),
                "expected": "accept", "refetches_jwks": False}
    rotated = server_challenges("server_next")._sign_challenge(CHALLENGE_ID, challenge_hash(), DEVICE_ID)
    after_rotation = {
        "name": "after_rotation", "key": "server_next",
        "description": "Signed with the server's new key after a rotation. The phone knows only the old "
                       "key: an unknown kid makes it fetch the JWKS once (keys.json#jwks_during_rotation), "
                       "then the challenge verifies.",
        **expect(rotated, {**CHALLENGE_HEADER_TYP, "kid": kid("server_next")}, challenge_payload()),
        "jwks_after_refetch": "keys.json#jwks_during_rotation", "expected": "accept", "refetches_jwks": True}
    no_number = server_challenges("server")._sign_challenge(CHALLENGE_ID,
                                                           challenge_hash(num="", ctx="", pctx=""),
                                                           DEVICE_ID)
    without_matching = {
        "name": "no_number_matching", "key": "server",
        "description": "Number matching off for this challenge and no login context given: no `ctx`, and "
                       "`number_matching` false (approve without a number).",
        **expect(no_number, {**CHALLENGE_HEADER_TYP, "kid": kid("server")},
                 {k: v for k, v in challenge_payload(number_matching=False).items() if k != "ctx"}),
        "expected": "accept", "refetches_jwks": False}
    late_ok = {"name": "expired_within_skew", "key": "server",
               "description": f"exp is {MAX_SKEW_S - 1} s behind the phone's clock: still within the skew, "
                              "so the phone shows it (the server decides whether it has really expired)",
               **_hand_challenge(exp=NOW - MAX_SKEW_S + 1, iat=NOW - 120), "expected": "accept",
               "refetches_jwks": False}

    negatives = [
        ("other_device", "`aud` is another device: a challenge for another phone", "claims",
         _hand_challenge(aud=OTHER_DEVICE_ID)),
        ("other_issuer", "`iss` is not the server this phone enrolled with", "claims",
         _hand_challenge(iss="https://pushauth.attacker.example")),
        ("other_user", "`sub` is not the user this phone is enrolled for", "claims",
         _hand_challenge(sub="mallory@nhs.net")),
        ("expired", f"exp is {MAX_SKEW_S} s or more behind the phone's clock", "claims",
         _hand_challenge(exp=NOW - MAX_SKEW_S, iat=NOW - 120)),
        ("issued_in_future", f"iat is more than {MAX_SKEW_S} s ahead of the phone's clock", "claims",
         _hand_challenge(iat=NOW + MAX_SKEW_S + 1, exp=NOW + 200)),
        ("number_matching_not_bool", "`number_matching` must be a JSON boolean", "claims",
         _hand_challenge(number_matching="true")),
        ("assertion_presented_as_challenge", "typ is pushauth-assertion+jwt: a token of another type is "
         "never a challenge", "header", _hand_challenge(typ=ASSERTION_TYP)),
        ("unknown_kid", "signed by a key the server never published: the phone fetches the JWKS once, "
         "still finds no such kid, and refuses", "key", _hand_challenge(key="other", key_id=kid("other"))),
        ("forged_with_server_kid", "names the server's kid but is signed with another key", "signature",
         _hand_challenge(key="other")),
        ("alg_none", "`alg: none`", "header", _unsigned_challenge()),
    ]
    neg = [{"name": n, "why": why, "rejected_at": stage, **parts, "expected": "reject",
            "refetches_jwks": n == "unknown_kid"} for n, why, stage, parts in negatives]
    return file_doc(
        "Challenge JWSs as the phone receives them (GET /v1/device/challenges[/{id}]) and what it must "
        "check before it shows one. `phone` is the phone's state: what it learnt at enrollment, and its "
        "clock.",
        "Challenges: what the phone verifies",
        phone=phone,
        vectors=[positive, after_rotation, without_matching, late_ok, *neg],
    )


def _hand_challenge(*, key: str = "server", key_id: str | None = None, typ: str = CHALLENGE_TYP,
                    **claims: Any) -> dict[str, Any]:
    header = {"alg": "ES256", "typ": typ, "kid": key_id or kid("server")}
    payload = challenge_payload(**claims)
    token = hand_signed(header, payload, key)
    return {"key": key, **expect(token, header, payload)}


def _unsigned_challenge() -> dict[str, Any]:
    header = {"alg": "none", "typ": CHALLENGE_TYP, "kid": kid("server")}
    token = f"{b64url(compact_json(header))}.{b64url(compact_json(challenge_payload()))}."
    return {"key": "server", **jws_parts(token)}


# -- assertions ----------------------------------------------------------------------------------------------

def assertion_payload(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"iss": SERVER, "aud": APP_ID, "sub": USER, "jti": CHALLENGE_ID,
                           "iat": ASSERTION_READ, "exp": ASSERTION_READ + 300, "auth_time": DECIDED_AT,
                           "result": "approved", "device": DEVICE_ID}
    out.update(overrides)
    return out


def assertions_file() -> dict[str, Any]:
    server = server_challenges("server")
    app = server_settings().applications[0]
    token = server._assertion(app, CHALLENGE_ID, USER, DEVICE_ID, DECIDED_AT, ASSERTION_READ)
    header = {"alg": "ES256", "typ": ASSERTION_TYP, "kid": kid("server")}
    positive = {"name": "assertion", "key": "server",
                "description": "The assertion in GET /v1/challenges/{id} once the challenge is approved.",
                **expect(token, header, assertion_payload()), "expected": "accept"}

    def hand(key: str = "server", typ: str = ASSERTION_TYP, **claims: Any) -> dict[str, Any]:
        h = {"alg": "ES256", "typ": typ, "kid": kid("server")}
        p = assertion_payload(**claims)
        return {"key": key, **expect(hand_signed(h, p, key), h, p)}

    h64, _, s64 = token.split(".")
    tampered = assertion_payload(sub="mallory@nhs.net")
    negatives = [
        ("other_application", "`aud` is another application's id", "claims", hand(aud="other")),
        ("other_challenge", "`jti` is not the challenge this login created", "claims",
         hand(jti=OTHER_CHALLENGE_ID)),
        ("expired", f"exp is {MAX_SKEW_S} s or more behind the relying party's clock", "claims",
         hand(iat=ASSERTION_READ - 400, exp=ASSERTION_READ - MAX_SKEW_S, auth_time=ASSERTION_READ - 401)),
        ("not_approved", "`result` must be \"approved\"", "claims", hand(result="denied")),
        ("challenge_presented_as_assertion", "typ is pushauth-challenge+jwt", "header",
         hand(typ=CHALLENGE_TYP)),
        ("tampered_subject", "sub changed after signing", "signature",
         {"key": "server", **jws_parts(f"{h64}.{b64url(compact_json(tampered))}.{s64}")}),
        ("signed_by_another_key", "names the server's kid but is signed with another key", "signature",
         hand(key="other")),
    ]
    neg = [{"name": n, "why": why, "rejected_at": stage, **parts, "expected": "reject"}
           for n, why, stage, parts in negatives]
    return file_doc(
        "Assertions as the login flow receives them, and what it must check before it signs the user in. "
        "`relying_party` is what the login flow knows: the server, its own application id, the challenge "
        "it created for which user, and its clock.",
        "Login flow / Verifying the assertion",
        relying_party={"server": SERVER, "application_id": APP_ID, "challenge_id": CHALLENGE_ID,
                       "user": USER, "jwks": "keys.json#jwks", "now": ASSERTION_READ,
                       "max_skew_s": MAX_SKEW_S},
        vectors=[positive, *neg],
    )


# -- webhooks ------------------------------------------------------------------------------------------------

def alert_hash() -> dict[str, str]:
    """A `denied_not_me` alert as the detection ledger stores it (pushauth/detection/rules.py)."""
    event = {"challenge_id": CHALLENGE_ID, "app": APP_ID, "created": CHALLENGE_IAT, "status": "denied",
             "reason": "not_me", "device_id": DEVICE_ID, "phone_ip": "198.51.100.23", "decided": DECIDED_AT,
             "login": CONTEXT, "kind": "denied_not_me", "severity": "critical", "at": DECIDED_AT}
    contained = [{"action": "prompts_suspended", "at": DECIDED_AT},
                 {"action": "remembered_browsers_revoked", "at": DECIDED_AT}]
    return {"id": ALERT_ID, "kind": "denied_not_me", "sev": "critical", "user": USER,
            "created": str(DECIDED_AT), "updated": str(DECIDED_AT), "status": "open", "ver": "1", "n": "1",
            "events": _encode([event]).decode(), "kinds": '{"denied_not_me":1}',
            "contained": _encode(contained).decode(), "cid": CHALLENGE_ID, "did": DEVICE_ID,
            "ctx": _encode(CONTEXT).decode()}


def webhooks_file() -> dict[str, Any]:
    # https://www.standardwebhooks.com (the specification's example, as its libraries test it)
    ref_secret, ref_id = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek"
    ref_ts = 1614265330
    ref_body, ref_signature = '{"test": 2432232314}', "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    reference = {
        "name": "standard_webhooks_reference",
        "description": "The Standard Webhooks specification's own published example, reproduced: an "
                       "implementation that passes it signs and verifies like every Standard Webhooks "
                       "library.",
        "secret": ref_secret, "webhook_id": ref_id, "webhook_timestamp": ref_ts, "body": ref_body,
        "webhook_signature": ref_signature,
    }
    got = webhook_sign([parse_webhook_secret(ref_secret)], ref_id, ref_ts, ref_body.encode())
    if got != ref_signature:
        raise SystemExit(f"pushauth no longer reproduces the Standard Webhooks example: {got}")

    alert = alert_view(alert_hash())
    wid = delivery_id(ALERT_ID, 1, "soc")
    body = event_body(Notification("alert.created", alert, wid), WEBHOOK_TS)
    key = parse_webhook_secret(WEBHOOK_SECRET)
    signed_content = f"{wid}.{WEBHOOK_TS}.".encode() + body
    created = {
        "name": "alert_created",
        "description": "What the endpoint configured as sink `soc` receives when a user denies a prompt "
                       "with \"I didn't request this\". The body is given exactly (UTF-8); the signature "
                       "is over those bytes.",
        "secret": WEBHOOK_SECRET, "hmac_key_hex": key.hex(),
        "webhook_id": wid, "webhook_timestamp": WEBHOOK_TS, "body": body.decode(),
        "signed_content": signed_content.decode(),
        "webhook_signature": webhook_sign([key], wid, WEBHOOK_TS, body),
        "headers": {"content-type": "application/json", "webhook-id": wid,
                    "webhook-timestamp": str(WEBHOOK_TS),
                    "webhook-signature": webhook_sign([key], wid, WEBHOOK_TS, body)},
        "decoded_body": json.loads(body),
    }
    both = [key, parse_webhook_secret(WEBHOOK_SECRET_NEXT)]
    rotation = {
        "name": "secret_rotation",
        "description": "While the endpoint's secret is being rotated the sink signs with every configured "
                       "secret, space-separated; a receiver accepts if any one verifies with a secret it "
                       "holds.",
        "secrets": [WEBHOOK_SECRET, WEBHOOK_SECRET_NEXT],
        "webhook_id": wid, "webhook_timestamp": WEBHOOK_TS, "body": body.decode(),
        "webhook_signature": webhook_sign(both, wid, WEBHOOK_TS, body),
    }
    tampered = body.replace(b'"critical"', b'"low"', 1)
    negatives = [
        {"name": "body_changed", "why": "the body is not the one signed", "secret": WEBHOOK_SECRET,
         "webhook_id": wid, "webhook_timestamp": WEBHOOK_TS, "body": tampered.decode(),
         "webhook_signature": created["webhook_signature"], "now": WEBHOOK_TS, "expected": "reject"},
        {"name": "other_id", "why": "the webhook-id is part of the signed content",
         "secret": WEBHOOK_SECRET, "webhook_id": delivery_id(ALERT_ID, 2, "soc"),
         "webhook_timestamp": WEBHOOK_TS, "body": body.decode(),
         "webhook_signature": created["webhook_signature"], "now": WEBHOOK_TS, "expected": "reject"},
        {"name": "stale_timestamp", "why": "a valid signature, but webhook-timestamp is more than the "
         "receiver's tolerance (5 minutes) from its clock: refuse it (a replayed delivery)",
         "secret": WEBHOOK_SECRET, "webhook_id": wid, "webhook_timestamp": WEBHOOK_TS, "body": body.decode(),
         "webhook_signature": created["webhook_signature"], "now": WEBHOOK_TS + 301, "expected": "reject"},
    ]
    return file_doc(
        "Alert webhooks (Standard Webhooks): webhook-signature = space-separated `v1,<base64 HMAC-SHA256 of "
        "\"<webhook-id>.<webhook-timestamp>.<body>\">`, keyed with the base64-decoded part of the `whsec_` "
        "secret. HMAC is deterministic: every value here is exact.",
        "Alert webhooks",
        tolerance_s=300,
        vectors=[reference, created, rotation],
        negative=negatives,
    )


# -- push payloads -------------------------------------------------------------------------------------------

def push_file() -> dict[str, Any]:
    sent_at = NOW - 4  # the push worker sends one second after the challenge was created
    message = PushMessage(CHALLENGE_ID, SERVER, CHALLENGE_EXP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Message.token (see pushauth/push/fcm.py)
        ttl = dt.timedelta(seconds=CHALLENGE_EXP - sent_at)
        fcm_message = messaging.Message(token=FCM_TOKEN, data=message.data(),
                                        android=messaging.AndroidConfig(priority="high", ttl=ttl))
        encoded = messaging._MessagingService.encode_message(fcm_message)
    return file_doc(
        "The push messages for one challenge, as they leave pushauth. Nothing in them identifies the user; "
        "the phone fetches the signed challenge from `server` (GET /v1/device/challenges/{challenge_id}).",
        "Push messages",
        challenge_id=CHALLENGE_ID, server=SERVER, challenge_exp=CHALLENGE_EXP, sent_at=sent_at,
        data=message.data(),
        fcm={"description": "FCM HTTP v1: POST "
                            "https://fcm.googleapis.com/v1/projects/<project>/messages:send with this "
                            "body. A data-only message (no `notification`): the app's messaging service "
                            "receives `data` even in the background.",
             "request_body": {"message": encoded}},
        apns={"description": "APNs HTTP/2: POST /3/device/<device token> with these headers and this "
                             "payload. `apns-expiration` is the challenge's expiry; `apns-collapse-id` "
                             "makes a resent push replace the first.",
              "headers": {"apns-push-type": "alert", "apns-priority": str(apns.PRIORITY),
                          "apns-expiration": str(CHALLENGE_EXP), "apns-collapse-id": CHALLENGE_ID,
                          "apns-topic": "<the app's bundle id>"},
              "payload": {"aps": {"alert": base.CHALLENGE_ALERT, "mutable-content": 1, "sound": "default"},
                          **message.data()}},
    )


# -- writing -------------------------------------------------------------------------------------------------

FILES = {
    "keys.json": keys_file,
    "user_names.json": user_names_file,
    "enrollment.json": enrollment_file,
    "device_requests.json": device_requests_file,
    "negative_requests.json": negative_requests_file,
    "challenges.json": challenges_file,
    "assertions.json": assertions_file,
    "webhooks.json": webhooks_file,
    "push.json": push_file,
}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, make in FILES.items():
        text = json.dumps(make(), indent=2, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(FILES)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
