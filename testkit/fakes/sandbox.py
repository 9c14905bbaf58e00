"""Point pushauth's real push clients at fakes on loopback, without patching either: its own FCM sender
(pushauth/push/fcm.py, aiohttp) and aioapns.

The FCM sender posts to https://fcm.googleapis.com (`fcm.FCM_ENDPOINT`), and aioapns to
https://api(.sandbox).push.apple.com. So the fakes listen on loopback addresses of their own, port 443, with
certificates for those names from a test CA, and the process under test runs in a private mount namespace
whose /etc/hosts maps the names to those addresses (`unshare --mount`, then a bind mount over /etc/hosts).
`SSL_CERT_FILE` makes the test CA the trust store of Python's default SSL context, which both the FCM
sender's aiohttp pool and aioapns use; `REQUESTS_CA_BUNDLE` does the same for google-auth's token refresh
(firebase-admin only loads the service account: it sends nothing). The production code path runs unchanged;
only name resolution and the trust store differ.

Needs root (mount namespaces, port 443), as the test suite has on this project's machines and CI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FCM_HOST = "fcm.googleapis.com"
APNS_SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PRODUCTION_HOST = "api.push.apple.com"
# What aioapns actually connects to when use_sandbox=True (Apple's newer name for the sandbox).
APNS_DEVELOPMENT_HOST = "api.development.push.apple.com"
APNS_HOSTS = (APNS_SANDBOX_HOST, APNS_PRODUCTION_HOST, APNS_DEVELOPMENT_HOST)
HTTPS_PORT = 443


def available() -> str | None:
    """None if the sandbox can work here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace and port 443"
    if not Path("/usr/bin/unshare").exists() and not Path("/bin/unshare").exists():
        return "needs util-linux unshare"
    return None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class TestCA:
    """A throw-away CA and one server certificate per fake, written under `folder`."""

    __test__ = False  # not a pytest test class, despite the name

    folder: Path
    ca_file: Path

    @classmethod
    def create(cls, folder: Path) -> TestCA:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_name = _name("pushauth test CA")
        cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        (folder / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        ca_file = folder / "ca.pem"
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(folder, ca_file)

    def server_context(self, *hostnames: str, alpn: list[str]) -> ssl.SSLContext:
        """A server-side TLS context with a certificate for `hostnames`, signed by this CA."""
        cert_file, key_file = self.server_files(*hostnames)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(alpn)
        return ctx

    def server_files(self, *hostnames: str) -> tuple[Path, Path]:
        """A certificate for `hostnames` (and 127.0.0.1), signed by this CA, and its key: PEM files under
        `folder`, for a server that reads its own (slapd: testkit/slapd.py)."""
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (x509.CertificateBuilder().subject_name(_name(hostnames[0])).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        stem = self.folder / hostnames[0]
        cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file


def loopback_address() -> str:
    """A random 127.x.y.z (never 127.0.0.x): each fake gets an address of its own on port 443, so test
    runs and benchmarks on one machine at the same time never meet each other's fakes."""
    return f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


@dataclass(frozen=True)
class PrivateHosts:
    """Runs commands that resolve the push services' names to the fakes and trust the test CA. The fakes
    listen on `fcm_addr` and `apns_addr` (port 443)."""

    hosts_file: Path
    ca_file: Path
    fcm_addr: str
    apns_addr: str

    @classmethod
    def create(cls, folder: Path, ca: TestCA, *, fcm_addr: str | None = None,
               apns_addr: str | None = None) -> PrivateHosts:
        fcm_addr = fcm_addr or loopback_address()
        apns_addr = apns_addr or loopback_address()
        hosts = folder / "hosts"
        hosts.write_text("127.0.0.1 localhost\n"
                         f"{fcm_addr} {FCM_HOST}\n"
                         f"{apns_addr} {' '.join(APNS_HOSTS)}\n")
        return cls(hosts, ca.ca_file, fcm_addr, apns_addr)

    def command(self, argv: list[str]) -> list[str]:
        # --propagation private: the bind mount never leaks back to the host's mount namespace.
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file), *argv]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SSL_CERT_FILE"] = str(self.ca_file)
        env["REQUESTS_CA_BUNDLE"] = str(self.ca_file)  # google-auth's token refresh goes through requests
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(name, None)
        return env
