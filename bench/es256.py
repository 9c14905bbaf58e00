"""ES256 per operation: joserfc's compact serialization vs pushauth.crypto.jws vs raw cryptography (issue 22).

    .venv/bin/python bench/es256.py [--number 2000] [--repeat 7]

A device request's claims (the size a phone signs), signed and verified with one P-256 key; best of
`--repeat` runs of `--number` calls, in microseconds per call. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws as joserfc_jws
from joserfc.jwk import ECKey

from pushauth.crypto import jws

CLAIMS = {"htm": "POST", "htu": "/v1/device/challenges/abc/response", "iat": 1_750_000_000, "jti": "j" * 22,
          "bh": "x" * 43}
HEADER = {"alg": "ES256", "typ": "pushauth-req+jwt", "kid": "k" * 43}


def main(args: argparse.Namespace) -> None:
    key = ECKey.generate_key("P-256", private=True)
    payload = json.dumps(CLAIMS)
    token = jws.sign(CLAIMS, key, typ=HEADER["typ"], kid=HEADER["kid"])
    private, public = key.private_key, key.public_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    ecdsa = ec.ECDSA(hashes.SHA256())
    data = token.rsplit(".", 1)[0].encode()
    der = private.sign(data, ecdsa)

    def best(fn: Callable[[], object]) -> float:
        number: int = args.number
        return min(timeit.repeat(fn, number=number, repeat=args.repeat)) / number * 1e6

    rows = [
        ("sign", "joserfc serialize_compact",
         best(lambda: joserfc_jws.serialize_compact(HEADER, payload, key, algorithms=["ES256"]))),
        ("sign", "pushauth.crypto.jws.sign", best(lambda: jws.sign(CLAIMS, key, typ=HEADER["typ"],
                                                                    kid=HEADER["kid"]))),
        ("sign", "raw cryptography (DER)", best(lambda: private.sign(data, ecdsa))),
        ("verify", "joserfc deserialize_compact",
         best(lambda: joserfc_jws.deserialize_compact(token, key, algorithms=["ES256"]))),
        ("verify", "pushauth.crypto.jws.verify", best(lambda: jws.verify(token, key))),
        ("verify", "raw cryptography (DER)", best(lambda: public.verify(der, data, ecdsa))),
    ]
    for op, what, us in rows:
        print(f"{op:7} {what:30} {us:7.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    main(parser.parse_args())
