"""The provider's RSA signing key, for relying parties that cannot take ES256 (Microsoft Entra ID's external
authentication methods among them): RS256, published with an `x5c` certificate chain of one self-signed
certificate, since some profiles read the key from the certificate.

The key lives beside the server's EC keys (`keys/oidc-rsa.pem`, mode 0600, never committed; its certificate
`keys/oidc-rsa.crt`), made on first use by the server that finds none; with `keys.ephemeral` it is made in
memory. Phones never see it: the phones' keys stay /.well-known/jwks.json, and the provider's JWKS
(/oidc/jwks) is that plus this key.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

KEY_FILE, CERT_FILE = "oidc-rsa.pem", "oidc-rsa.crt"
KEY_BITS = 2048
CERT_LIFE = dt.timedelta(days=3650)  # the certificate only carries the key: its dates are not checked


@dataclass(frozen=True, repr=False)
class RsaSigningKey:
    kid: str
    key: RSAKey
    cert_der: bytes

    def public_jwk(self) -> dict[str, Any]:
        pub = self.key.as_dict(private=False)
        return {"kty": "RSA", "n": str(pub["n"]), "e": str(pub["e"]), "kid": self.kid, "use": "sig",
                "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()],
                "x5t#S256": base64.urlsafe_b64encode(
                    _sha256(self.cert_der)).rstrip(b"=").decode()}

    def __repr__(self) -> str:  # never the key
        return f"RsaSigningKey(kid={self.kid!r})"


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _certificate(private: rsa.RSAPrivateKey, issuer: str) -> x509.Certificate:
    common_name = f"pushauth OpenID signing key ({issuer})"[:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CERT_LIFE)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(private, hashes.SHA256()))


def _from(private: rsa.RSAPrivateKey, cert: x509.Certificate) -> RsaSigningKey:
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key = RSAKey.import_key(pem)
    return RsaSigningKey(str(key.thumbprint()), key, cert.public_bytes(serialization.Encoding.DER))


def ephemeral(issuer: str) -> RsaSigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return _from(private, _certificate(private, issuer))


def load_or_create(folder: Path, issuer: str) -> RsaSigningKey:
    """The key in `folder`, made (with its certificate) if there is none. A half-written pair cannot be
    left: each file is written to a temporary name, then renamed."""
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    if key_path.exists() and cert_path.exists():
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path} is not an RSA private key")
        return _from(private, x509.load_pem_x509_certificate(cert_path.read_bytes()))
    folder.mkdir(parents=True, exist_ok=True)
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    cert = _certificate(private, issuer)
    _write(key_path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return _from(private, cert)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
