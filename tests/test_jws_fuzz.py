"""Property-based fuzzing of the JWS and device-request parsers (hypothesis; no server, no Redis).

The functions under test are the whole of what an unauthenticated caller's `Authorization: PushAuth <JWS>`
reaches before any state is touched: `jws.read_header` (the header policy), `jws.import_public_jwk` (the
enrollment key), `jws.verify` (joserfc, pinned to ES256) and `device_auth.verify_request` (the request
binding). Two properties, over arbitrary text, structured hostile tokens and mutations of valid ones:

1. **No crash.** The only exception that may come out is the module's own documented rejection:
   `jws.InvalidJWS` or `device_auth.BadDeviceRequest` (both 401s). Anything else (TypeError, KeyError,
   ValueError, UnicodeDecodeError, RecursionError, ...) would be a 500 on the server.
2. **No forgery.** Whatever is accepted is checked again by an independent oracle written here with
   `cryptography` alone: the signature is a P-256/SHA-256 signature over the exact signing input by the key
   the verifier was given (for the server pipeline: the key the header's `kid` names), the header is one
   the policy allows, and (for device requests) every claim matches the request by a reference predicate.

atheris installs from PyPI for Python 3.11, but coverage-guided fuzzing with libFuzzer does not fit a
bounded, deterministic CI run; hypothesis alone does (`derandomize=True`: the same examples every run).
Example counts are printed (`pytest -s`) at the end of each test.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey

from pushauth.crypto import device_auth, jws

REQ_TYP = device_auth.REQUEST_TYP
N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# The device keys the simulated server knows (kid -> key). `SIGNER` signs the tokens the strategies make;
# `OTHER` is a registered device too, so a token signed by one and naming the other must be refused.
SIGNER = ECKey.generate_key("P-256", private=True)
OTHER = ECKey.generate_key("P-256", private=True)
STRANGER = ECKey.generate_key("P-256", private=True)  # known to nobody
KID_SIGNER = "dev_signer_00000001"
KID_OTHER = "dev_other_000000002"
DEVICE_KEYS = {KID_SIGNER: SIGNER, KID_OTHER: OTHER}

METHOD = "POST"
PATH = "/v1/device/challenges/c_abc/response?x=1"
BODY = b'{"nonce":"n","decision":"approve","number":"42"}'
NOW = 1_750_000_000
SKEW = 60
REJECTIONS = (jws.InvalidJWS, device_auth.BadDeviceRequest)

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

COUNTS: dict[str, int] = {}


@pytest.fixture(autouse=True, scope="module")
def _print_counts() -> Iterator[None]:
    yield
    print("\nexamples run: " + ", ".join(f"{name} {n}" for name, n in COUNTS.items()))


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# -- the oracle (cryptography only) -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(part: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None


def _public(key: ECKey) -> ec.EllipticCurvePublicKey:
    pub = key.public_key
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    return pub


def signature_valid(token: str, key: ECKey) -> bool:
    """True only if the third segment is an r||s P-256 ECDSA-SHA256 signature by `key` over the exact
    ASCII bytes of the first two segments."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    sig = _unb64(parts[2])
    if sig is None or len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        _public(key).verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        return False
    return True


def header_allowed(header: dict[str, Any], *, typ: str, allow_jwk: bool) -> bool:
    """The header policy, restated: a closed set of names, ES256, the expected typ, one key reference."""
    if not set(header) <= {"alg", "typ", "kid", "jwk"}:
        return False
    if header.get("alg") != "ES256" or header.get("typ") != typ:
        return False
    if "jwk" in header and not allow_jwk:
        return False
    return ("kid" in header) != ("jwk" in header) and ("kid" not in header or isinstance(header["kid"], str))


def claims_match(claims: dict[str, Any], *, method: str, path: str, body: bytes, now: int) -> bool:
    """The request binding, restated."""
    iat, jti, bh = claims.get("iat"), claims.get("jti"), claims.get("bh")
    bh_ok = (not body and bh is None) or bh == _b64(hashlib.sha256(body).digest())
    return (claims.get("htm") == method and claims.get("htu") == path and type(iat) is int
            and abs(now - iat) <= SKEW and isinstance(jti, str)
            and re.fullmatch(r"[A-Za-z0-9_-]{16,64}", jti) is not None and bh_ok)


# -- the code under test, as the server calls it -------------------------------------------------------------


def call(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a documented rejection becomes None, anything else propagates (the test fails)."""
    try:
        return fn()
    except REJECTIONS:
        return None


def check_everything(token: Any, *, method: str = METHOD, path: str = PATH, body: bytes = BODY,
                     now: int = NOW) -> None:
    """Every entry point on `token`, with both properties checked on whatever is accepted."""
    for typ in (REQ_TYP, "pushauth-challenge+jwt"):
        for allow_jwk in (False, True):
            header = call(partial(jws.read_header, token, typ=typ, allow_jwk=allow_jwk))
            if header is not None:
                assert isinstance(header, dict)
                assert header_allowed(header, typ=typ, allow_jwk=allow_jwk), header
    for key in (SIGNER, OTHER):
        claims = call(partial(jws.verify, token, key))
        if claims is not None:
            assert isinstance(claims, dict)
            assert signature_valid(token, key), "verify accepted a signature the oracle refuses"
            assert json.loads(_unb64(token.split(".")[0]) or b"null").get("alg") == "ES256"
        req = call(partial(device_auth.verify_request, token, key, method=method, path_qs=path, body=body,
                           now=now, max_skew_s=SKEW))
        if req is not None:
            assert signature_valid(token, key)
            assert claims is not None
            assert claims_match(claims, method=method, path=path, body=body, now=now)
            assert (req.jti, req.iat) == (claims["jti"], claims["iat"])
    server_pipeline(token, method=method, path=path, body=body, now=now)
    enrollment_pipeline(token, method=method, path=path, body=body, now=now)


def server_pipeline(token: Any, *, method: str, path: str, body: bytes, now: int) -> None:
    """What `Devices.authenticate` does: police the header, pick the key by kid, verify the request."""
    header = call(lambda: jws.read_header(token, typ=REQ_TYP))
    if header is None:
        return
    key = DEVICE_KEYS.get(header["kid"])
    if key is None:
        return
    req = call(lambda: device_auth.verify_request(token, key, method=method, path_qs=path, body=body, now=now,
                                                  max_skew_s=SKEW))
    if req is not None:
        assert signature_valid(token, key), "accepted a request not signed by the key its kid names"


def enrollment_pipeline(token: Any, *, method: str, path: str, body: bytes, now: int) -> None:
    """What `Devices.register` does: the header may embed the new key as `jwk`, which must then verify."""
    header = call(lambda: jws.read_header(token, typ=REQ_TYP, allow_jwk=True))
    if header is None or "jwk" not in header:
        return
    key = call(lambda: jws.import_public_jwk(header["jwk"]))
    if key is None:
        return
    assert isinstance(key, ECKey)
    req = call(lambda: device_auth.verify_request(token, key, method=method, path_qs=path, body=body, now=now,
                                                  max_skew_s=SKEW))
    if req is not None:
        assert signature_valid(token, key)


# -- strategies ---------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)

ALGS = ["ES256", "none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "ES384", "ES512", "ES256K",
        "RS256", "PS256", "EdDSA", "es256", "ES256 ", " ES256", "ES256\x00", ""]
TYPS = [REQ_TYP, "pushauth-challenge+jwt", "pushauth-assertion+jwt", "JWT", "", REQ_TYP.upper()]
EXTRA_HEADERS = ["jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip", "cty", "enc", "epk", "url",
                 "nonce", "kid ", "ALG", "Alg", "__proto__", ""]


def _jwk_of(key: ECKey, private: bool = False) -> dict[str, Any]:
    return {k: str(v) for k, v in key.as_dict(private=private).items() if k in ("kty", "crv", "x", "y", "d")}


def _jwk_variants() -> st.SearchStrategy[Any]:
    good = _jwk_of(SIGNER)
    return st.one_of(
        st.just(good), st.just(_jwk_of(OTHER)), st.just(_jwk_of(STRANGER)), st.just(_jwk_of(SIGNER, True)),
        st.just({**good, "crv": "P-384"}), st.just({**good, "kty": "RSA"}), st.just({**good, "kty": "oct"}),
        st.just({**good, "x": good["y"], "y": good["x"]}), st.just({**good, "x": 1}),
        st.just({**good, "x": "!!!"}), st.just({**good, "x": good["x"] + "AAAA"}),
        st.just({**good, "x": "A" * 43, "y": "A" * 43}),  # (0, 0): not on the curve
        st.just({**good, "kid": "k", "use": "enc", "alg": "HS256"}), st.just({**good, "jku": "http://evil"}),
        st.just({k: v for k, v in good.items() if k != "y"}), JSON_VALUES)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    h: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        h["alg"] = draw(st.sampled_from(ALGS) if draw(st.integers(0, 5)) else JSON_VALUES)
    if draw(st.integers(0, 9)):
        h["typ"] = draw(st.sampled_from(TYPS) if draw(st.integers(0, 5)) else JSON_VALUES)
    which = draw(st.sampled_from(["kid", "kid", "kid", "jwk", "both", "neither"]))
    if which in ("kid", "both"):
        h["kid"] = draw(st.sampled_from([KID_SIGNER, KID_OTHER, "nobody", ""]) if draw(st.integers(0, 4))
                        else JSON_VALUES)
    if which in ("jwk", "both"):
        h["jwk"] = draw(_jwk_variants())
    for name in draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2)):
        h[name] = draw(st.sampled_from(["https://attacker.example/jwks.json", ["b64"], False]) | JSON_VALUES)
    return h


@st.composite
def claims(draw: st.DrawFn, right_weight: int = 7) -> Any:
    """Request claims, each field right (weight `right_weight` in `right_weight + 3`), wrong in a plausible
    way, of any JSON type, or absent."""
    shape = draw(st.integers(0, 19))
    if shape == 0:  # not an object at all
        return draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
    c: dict[str, Any] = {}
    right: dict[str, Any] = {"htm": METHOD, "htu": PATH, "iat": NOW, "jti": "abcdefghijklmnop_-09",
                             "bh": _b64(hashlib.sha256(BODY).digest())}
    wrong: dict[str, st.SearchStrategy[Any]] = {
        "htm": st.sampled_from(["GET", "post", "POST ", "DELETE"]),
        "htu": st.sampled_from([PATH + "&y=2", PATH.split("?")[0], "/v1/device", PATH.upper(), ""]),
        "iat": st.sampled_from([NOW - SKEW - 1, NOW + SKEW + 1, NOW - SKEW, NOW + SKEW, float(NOW), True,
                                str(NOW), 2**64, -(2**63), 10**30, 0]),
        "jti": st.sampled_from(["short", "a" * 65, "a" * 16 + "!", "a" * 16 + "\n", "a" * 64, "a" * 16]),
        "bh": st.sampled_from([_b64(hashlib.sha256(b"").digest()), _b64(hashlib.sha256(BODY).digest()) + "=",
                               "", hashlib.sha256(BODY).hexdigest()]),
    }
    for name in ("htm", "htu", "iat", "jti", "bh"):
        pick = draw(st.integers(0, right_weight + 2)) - right_weight
        if pick < 0:
            c[name] = right[name]
        elif pick == 0:
            c[name] = draw(wrong[name])
        elif pick == 1:
            c[name] = draw(JSON_VALUES)
        # 2: absent
    for name, value in draw(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=2)).items():
        c.setdefault(name, value)
    return c


def _encode(obj: Any, how: str, depth: int) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if how == "plain" or not raw.startswith(b"{"):
        return raw
    if how == "duplicate_alg":  # the same name twice: which one a parser keeps must not matter
        return b'{"alg":"none",' + raw[1:] if raw != b"{}" else b'{"alg":"none","alg":"ES256"}'
    if how == "duplicate_kid":
        return b'{"kid":"' + KID_OTHER.encode() + b'",' + raw[1:] if raw != b"{}" else raw
    if how == "nested":
        return b'{"n":' + b"[" * depth + b"]" * depth + (b"," + raw[1:] if raw != b"{}" else b"}")
    if how == "invalid_utf8":  # bytes that are not UTF-8, inside a JSON string
        return raw.replace(b'":"', b'":"\xff', 1) if b'":"' in raw else b'{"x":"\xed\xa0\x80"}'
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "spaces":
        return b" \n" + raw.replace(b",", b" ,\t") + b"\n "
    if how == "trailing":
        return raw + b"garbage"
    return raw


ENCODINGS = ["plain"] * 6 + ["duplicate_alg", "duplicate_kid", "nested", "invalid_utf8", "bom", "spaces",
                             "trailing"]


def sign_input(signing_input: bytes, key: ECKey) -> bytes:
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_signature(signing_input: bytes, how: str) -> str:
    if how == "signer":
        return _b64(sign_input(signing_input, SIGNER))
    if how == "other":
        return _b64(sign_input(signing_input, OTHER))
    if how == "stranger":
        return _b64(sign_input(signing_input, STRANGER))
    if how == "high_s":  # (r, n - s): the same signature's twin, mathematically valid
        sig = sign_input(signing_input, SIGNER)
        s = N_P256 - int.from_bytes(sig[32:], "big")
        return _b64(sig[:32] + s.to_bytes(32, "big"))
    if how == "der":  # the X.509 form instead of JWS's r||s
        private = SIGNER.private_key
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return _b64(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    if how == "zero":
        return _b64(bytes(64))
    if how == "r_is_n":
        return _b64(N_P256.to_bytes(32, "big") + (1).to_bytes(32, "big"))
    if how == "truncated":
        return _b64(sign_input(signing_input, SIGNER)[:63])
    if how == "extended":
        return _b64(sign_input(signing_input, SIGNER) + b"\x00")
    if how == "hs256":  # HMAC keyed with the signer's public key, the classic confusion
        import hmac

        pub = json.dumps(_jwk_of(SIGNER)).encode()
        return _b64(hmac.new(pub, signing_input, hashlib.sha256).digest())
    return ""


SIGNATURES = ["signer"] * 8 + ["other", "stranger", "high_s", "der", "zero", "r_is_n", "truncated",
                               "extended", "hs256", "empty"]


@st.composite
def structured_tokens(draw: st.DrawFn) -> str:
    header = draw(headers())
    payload = draw(claims())
    depth = draw(st.sampled_from([1, 10, 200, 1000, 3000]))
    h = _encode(header, draw(st.sampled_from(ENCODINGS)), depth)
    p = _encode(payload, draw(st.sampled_from(ENCODINGS)), depth)
    pad = draw(st.sampled_from([0, 0, 0, 0, 1000, 5000, 6000, 9000]))
    if pad and isinstance(payload, dict):  # huge segments, around the 8192-character limit
        p = json.dumps({**payload, "pad": "A" * pad}, separators=(",", ":")).encode()
    signing_input = f"{_b64(h)}.{_b64(p)}".encode()
    return f"{signing_input.decode()}.{make_signature(signing_input, draw(st.sampled_from(SIGNATURES)))}"


def valid_token(**overrides: Any) -> str:
    c: dict[str, Any] = {"htm": METHOD, "htu": PATH, "iat": NOW, "jti": "abcdefghijklmnop_-09",
                         "bh": _b64(hashlib.sha256(BODY).digest()), **overrides}
    return jws.sign(c, SIGNER, typ=REQ_TYP, kid=KID_SIGNER)


VALID = valid_token()
# Found by this file: a header or payload that is JSON except for bytes that are not UTF-8 inside a
# string made msgspec raise UnicodeDecodeError (not DecodeError), which leaked out of read_header and
# verify as a 500. The payload one is validly signed, so only verify's own decoding can catch it.
BAD_UTF8_HEADER = (_b64(b'{"alg":"ES256","typ":"pushauth-req+jwt\xff","kid":"k"}') + "." + _b64(b"{}") + "."
                   + _b64(bytes(64)))
_BAD_UTF8_INPUT = (_b64(b'{"alg":"ES256","typ":"pushauth-req+jwt","kid":"' + KID_SIGNER.encode() + b'"}')
                   + "." + _b64(b'{"htm":"POST\xff"}'))
BAD_UTF8_PAYLOAD = _BAD_UTF8_INPUT + "." + _b64(sign_input(_BAD_UTF8_INPUT.encode(), SIGNER))
ILLEGAL_CHARS = ["=", "+", "/", " ", "\n", "\t", ".", "%", "\x00", "é", "\u202e", "\ud800", "A", "_", "-"]


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    token = draw(st.sampled_from([VALID, valid_token(iat=NOW + SKEW), valid_token(bh=None)]))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "pad", "segments", "swap", "truncate", "huge",
                                   "drop_sig", "case", "reencode_header"]))
        i = draw(st.integers(0, max(0, len(token) - 1)))
        if op == "flip" and token:
            token = token[:i] + draw(st.sampled_from(ILLEGAL_CHARS)) + token[i + 1:]
        elif op == "insert":
            token = token[:i] + draw(st.sampled_from(ILLEGAL_CHARS)) + token[i:]
        elif op == "delete":
            token = token[:i] + token[i + 1:]
        elif op == "pad":  # padded base64 in one segment
            parts = token.split(".")
            j = draw(st.integers(0, len(parts) - 1))
            parts[j] += draw(st.sampled_from(["=", "==", "==="]))
            token = ".".join(parts)
        elif op == "segments":  # wrong segment counts
            parts = token.split(".")
            token = ".".join(draw(st.sampled_from([parts[:1], parts[:2], [*parts, parts[-1]], [*parts, ""],
                                                   ["", *parts], [parts[0], "", parts[-1]]])))
        elif op == "swap":
            parts = token.split(".")
            if len(parts) == 3:
                token = ".".join([parts[1], parts[0], parts[2]])
        elif op == "truncate":
            token = token[:i]
        elif op == "huge":
            token = token + "A" * draw(st.sampled_from([100, jws.MAX_TOKEN_LEN - len(token), 9000, 100_000]))
        elif op == "drop_sig":
            token = token.rsplit(".", 1)[0] + "."
        elif op == "case":
            token = token.swapcase()
        elif op == "reencode_header":  # same header, different bytes (re-ordered), old signature kept
            parts = token.split(".")
            raw = _unb64(parts[0]) if parts else None
            if raw is not None and len(parts) == 3:
                with contextlib.suppress(ValueError, AttributeError):
                    parts[0] = _b64(json.dumps(dict(reversed(list(json.loads(raw).items())))).encode())
                token = ".".join(parts)
    return token


# -- tests --------------------------------------------------------------------------------------------------


def test_controls_the_oracle_and_the_verifiers_agree_on_valid_tokens() -> None:
    """Without this the other tests could pass by rejecting everything."""
    assert signature_valid(VALID, SIGNER)
    assert not signature_valid(VALID, OTHER)
    header = jws.read_header(VALID, typ=REQ_TYP)
    assert header == {"alg": "ES256", "typ": REQ_TYP, "kid": KID_SIGNER}
    req = device_auth.verify_request(VALID, SIGNER, method=METHOD, path_qs=PATH, body=BODY, now=NOW,
                                     max_skew_s=SKEW)
    assert req.jti == "abcdefghijklmnop_-09"
    enrol = device_auth.sign_request(SIGNER, method=METHOD, path_qs=PATH, body=BODY, jti="j" * 20, iat=NOW,
                                     jwk=_jwk_of(SIGNER))
    assert jws.read_header(enrol, typ=REQ_TYP, allow_jwk=True)["jwk"] == _jwk_of(SIGNER)
    check_everything(VALID)
    check_everything(enrol)


@settings(FUZZ, max_examples=1500)
@given(token=st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.from_regex(r"[A-Za-z0-9_=+/-]{0,80}(\.[A-Za-z0-9_=+/-]{0,80}){0,4}", fullmatch=True),
    st.lists(st.binary(max_size=60).map(_b64), min_size=1, max_size=5).map(".".join),
    st.integers(), st.none(), st.binary(max_size=50), st.lists(st.text(max_size=5), max_size=3)))
def test_arbitrary_input_is_rejected_cleanly(token: Any) -> None:
    count("arbitrary_input_is_rejected_cleanly")
    check_everything(token)


@settings(FUZZ, max_examples=2500)
@given(token=structured_tokens())
@example(token=BAD_UTF8_HEADER)
@example(token=BAD_UTF8_PAYLOAD)
def test_structured_hostile_tokens(token: str) -> None:
    """Header fields (alg none/HS256/ES384/RS256..., kid/jwk/jku/x5u/crit...), duplicate names, deep
    nesting, invalid UTF-8, non-object payloads, wrong claim types, huge segments, forged signatures."""
    count("structured_hostile_tokens")
    check_everything(token)


@settings(FUZZ, max_examples=1500)
@given(token=mutated_tokens())
def test_mutations_of_a_valid_token(token: str) -> None:
    """Flipped, inserted and deleted characters (including padding and characters outside base64url),
    wrong segment counts, swapped segments, truncation, huge tokens, a re-encoded header under the old
    signature: nothing but the untouched token may verify."""
    count("mutations_of_a_valid_token")
    check_everything(token)


@settings(FUZZ, max_examples=1000)
@given(c=claims(right_weight=20), method=st.sampled_from(["POST", "POST", "POST", "GET"]),
       body=st.sampled_from([BODY, BODY, BODY, b"", b"{}"]),
       now=st.sampled_from([NOW, NOW, NOW + SKEW, NOW - SKEW - 1]))
def test_claim_binding_matches_the_reference(c: Any, method: str, body: bytes, now: int) -> None:
    """Validly signed by the right key, so only the claims decide: accepted exactly when the reference
    predicate says the request binding holds (wrong types for htm/htu/iat/jti/bh included)."""
    count("claim_binding_matches_the_reference")
    token = f"{_b64(json.dumps({'alg': 'ES256', 'typ': REQ_TYP, 'kid': KID_SIGNER}).encode())}." \
            f"{_b64(json.dumps(c).encode())}"
    token += "." + _b64(sign_input(token.encode(), SIGNER))
    req = call(lambda: device_auth.verify_request(token, SIGNER, method=method, path_qs=PATH, body=body,
                                                  now=now, max_skew_s=SKEW))
    expected = isinstance(c, dict) and claims_match(c, method=method, path=PATH, body=body, now=now)
    assert (req is not None) == expected, c
    if expected:
        count("claim_binding_accepted")
    check_everything(token, method=method, body=body, now=now)


def test_token_length_limit() -> None:
    """A validly signed token of MAX_TOKEN_LEN characters is accepted, one just over is refused by the header
    policy before any parsing (the cap lives in `read_header`, which every caller runs first; `verify`
    alone does not repeat it): the limit is a size cap and nothing else."""
    at_limit, over = "", ""
    pad = (jws.MAX_TOKEN_LEN - len(valid_token(pad=""))) * 3 // 4 - 20
    while not over:
        token = valid_token(pad="A" * pad)
        if len(token) <= jws.MAX_TOKEN_LEN:
            at_limit = token
        else:
            over = token
        pad += 1
    assert jws.MAX_TOKEN_LEN - 1 <= len(at_limit) <= jws.MAX_TOKEN_LEN < len(over) <= jws.MAX_TOKEN_LEN + 2
    for token, accepted in ((at_limit, True), (over, False)):
        ok = call(partial(jws.read_header, token, typ=REQ_TYP)) and call(
            partial(device_auth.verify_request, token, SIGNER, method=METHOD, path_qs=PATH, body=BODY,
                    now=NOW, max_skew_s=SKEW))
        assert bool(ok) == accepted, len(token)


def test_fuzz_budget_is_bounded() -> None:
    """The examples above take seconds, not minutes: a rough guard against a slow path in a parser."""
    start = time.perf_counter()
    for _ in range(200):
        check_everything(VALID)
    assert time.perf_counter() - start < 10
