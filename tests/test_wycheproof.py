"""Project Wycheproof's ECDSA P-256 / SHA-256 vectors through pushauth's ES256 verification path.

The vectors (tests/vectors/wycheproof/, vendored: no network at test time) are the IEEE P1363 ones: a
signature is r||s, 64 bytes, exactly JWS ES256's form. Every "valid" vector must verify and every "invalid"
one must be refused; the file has no "acceptable" vectors (the count is asserted, so a newer file with some
would have to be looked at).

Which path: pushauth has no ES256 function of its own below `jws.verify`, and `jws.verify` takes a whole
compact JWS, whose signing input is base64url text: a vector's arbitrary message cannot be put through it.
So this drives the primitive `jws.verify` reaches, the same calls joserfc's `validate_compact` makes: a
registry built from pushauth's pinned algorithm list (`jws._ALGORITHMS`, i.e. `["ES256"]`),
`registry.get_alg("ES256")`, `alg.check_key(key)`, `alg.verify(signing_input, signature, key)`, with the
public key imported by pushauth's own `jws.import_public_jwk` (the path a phone's key takes at
enrollment). An exception counts as a refusal, because `jws.verify` turns joserfc's and cryptography's
exceptions into `InvalidJWS`. `test_jws_verify_goes_through_this_path` checks that claim: a real
`jws.verify` call is watched and must reach `alg.verify` with the JWS signing input.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from pushauth.crypto import jws

VECTORS = Path(__file__).parent / "vectors" / "wycheproof" / "ecdsa_secp256r1_sha256_p1363_test.json"
SHA256 = "c60de693930e386c3a5472d08081623ef8504decc54b38ac01ec6b2a2575c986"
DATA: dict[str, Any] = json.loads(VECTORS.read_bytes())


def _b64(data: bytes) -> str:
    return jws.b64url_encode(data)


def _jwk(group: dict[str, Any]) -> dict[str, Any]:
    """The group's public key as a JWK (a few groups carry only the coordinates in hex)."""
    if "publicKeyJwk" in group:
        return dict(group["publicKeyJwk"])
    pk = group["publicKey"]
    return {"kty": "EC", "crv": "P-256", "x": _b64(int(pk["wx"], 16).to_bytes(32, "big")),
            "y": _b64(int(pk["wy"], 16).to_bytes(32, "big"))}


CASES = [(group, test) for group in DATA["testGroups"] for test in group["tests"]]


def pushauth_es256_verifies(jwk: dict[str, Any], msg: bytes, sig: bytes) -> bool:
    """ES256 verification exactly as `jws.verify` performs it, from the key import on."""
    try:
        key = jws.import_public_jwk(jwk)
        alg = JWSRegistry(algorithms=list(jws._ALGORITHMS)).get_alg(jws.ALG)
        alg.check_key(key)
        return bool(alg.verify(msg, sig, key))
    except (jws.InvalidJWS, JoseError, ValueError, TypeError):
        return False


def cryptography_verifies(jwk: dict[str, Any], msg: bytes, sig: bytes) -> bool:
    """An independent check with cryptography alone (r||s -> DER)."""
    if len(sig) != 64:
        return False
    x = int.from_bytes(jws.b64url_decode(jwk["x"]), "big")
    y = int.from_bytes(jws.b64url_decode(jwk["y"]), "big")
    try:
        pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        pub.verify(der, msg, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def test_vector_file_is_the_vendored_one() -> None:
    assert hashlib.sha256(VECTORS.read_bytes()).hexdigest() == SHA256
    assert DATA["algorithm"] == "ECDSA"
    assert DATA["schema"] == "ecdsa_p1363_verify_schema_v1.json"
    assert {g["type"] for g in DATA["testGroups"]} == {"EcdsaP1363Verify"}
    assert {g["sha"] for g in DATA["testGroups"]} == {"SHA-256"}
    assert {g["publicKey"]["curve"] for g in DATA["testGroups"]} == {"secp256r1"}
    assert len(CASES) == DATA["numberOfTests"]


@pytest.mark.parametrize(("group", "test"), CASES,
                         ids=[f"tc{t['tcId']}-{t['result']}" for _, t in CASES])
def test_vector(group: dict[str, Any], test: dict[str, Any]) -> None:
    jwk = _jwk(group)
    msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    ok = pushauth_es256_verifies(jwk, msg, sig)
    why = f"tcId {test['tcId']}: {test['comment']} {test['flags']}"
    if test["result"] == "valid":
        assert ok, f"valid signature refused: {why}"
    elif test["result"] == "invalid":
        assert not ok, f"invalid signature accepted: {why}"
    else:  # "acceptable": either is fine; the summary says which way pushauth went
        pass
    assert ok == cryptography_verifies(jwk, msg, sig), why


def test_summary() -> None:
    """Counts by expected result and by what pushauth did (printed with `pytest -s`)."""
    outcome: Counter[tuple[str, bool]] = Counter()
    for group, test in CASES:
        ok = pushauth_es256_verifies(_jwk(group), bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))
        outcome[(test["result"], ok)] += 1
    print(f"\nWycheproof ecdsa_secp256r1_sha256_p1363: {len(CASES)} vectors; "
          f"valid {outcome['valid', True]} verified / {outcome['valid', False]} refused; "
          f"invalid {outcome['invalid', False]} refused / {outcome['invalid', True]} verified; "
          f"acceptable {outcome['acceptable', True]} verified / {outcome['acceptable', False]} refused")
    assert outcome == Counter({("valid", True): 173, ("invalid", False): 89})


def test_jws_verify_goes_through_this_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `jws.verify` reaches the algorithm object the tests above use, with the JWS signing input:
    the vectors test the primitive under pushauth's verification, not a neighbour of it."""
    alg = JWSRegistry(algorithms=list(jws._ALGORITHMS)).get_alg(jws.ALG)
    calls: list[bytes] = []
    real = type(alg).verify

    def spy(self: Any, msg: bytes, sig: bytes, key: Any) -> bool:
        calls.append(msg)
        return bool(real(self, msg, sig, key))

    monkeypatch.setattr(type(alg), "verify", spy)
    key = ECKey.generate_key("P-256", private=True)
    token = jws.sign({"sub": "x"}, key, typ="t", kid="k")
    public = jws.import_public_jwk({k: str(v) for k, v in key.as_dict(private=False).items()
                                    if k in ("kty", "crv", "x", "y")})
    assert jws.verify(token, public) == {"sub": "x"}
    assert calls == [token.rsplit(".", 1)[0].encode()]
    # and a vector's signature, put in a JWS, is refused there for the same reason as here
    group, test = next((g, t) for g, t in CASES if t["result"] == "valid")
    forged = token.rsplit(".", 1)[0] + "." + _b64(bytes.fromhex(test["sig"]))
    with pytest.raises(jws.InvalidJWS):
        jws.verify(forged, jws.import_public_jwk(_jwk(group)))
