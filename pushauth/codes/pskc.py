"""Hardware tokens' seeds as their vendors ship them: RFC 6030 PSKC XML, or a plain CSV.

PSKC is parsed by defusedxml with DTDs forbidden: no entity expansion (billion laughs), no external entity
or DTD fetched from the network or the disk. TOTP keys and HOTP (counter-based, RFC 4226) keys are
imported, with a plain-text secret (`<PlainValue>`, RFC 6030 section 4, figure 2) or one encrypted under a
pre-shared transport key (section 6.1, figure 6: AES-CBC, the IV before the ciphertext, and an HMAC over
both whose MAC key travels in the file encrypted under the same transport key). The MAC is required and
checked (constant-time) before anything is decrypted: CBC alone would let a changed file decrypt to a
different seed unnoticed. A file protected by a password (PBKDF2, section 6.2) or by a public key (6.3) is
refused with a message saying so (decrypt it with the vendor's tool first).

CSV: one token a line, `serial,seed_base32[,user]`; a header line starting `serial` is skipped, `#` starts
a comment line. TOTP, SHA1, 6 digits, 30 s (what such files leave unsaid).

Every refusal is a `Unprocessable` (422 `invalid_import`) that names the key (its serial or position):
nothing of a file is imported unless all of it is.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hmac
import io
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pushauth.codes.totp import Algorithm, Kind, Params, Seed
from pushauth.errors import Unprocessable

NS = "{urn:ietf:params:xml:ns:keyprov:pskc}"
XENC = "{http://www.w3.org/2001/04/xmlenc#}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"
_CBC = {f"http://www.w3.org/2001/04/xmlenc#aes{bits}-cbc": bits // 8 for bits in (128, 192, 256)}
_MACS = {"http://www.w3.org/2000/09/xmldsig#hmac-sha1": "sha1",
         "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256": "sha256"}
TOTP = "urn:ietf:params:xml:ns:keyprov:pskc:totp"
HOTP = "urn:ietf:params:xml:ns:keyprov:pskc:hotp"
MAX_TOKENS = 1000
_SUITES: dict[str, Algorithm] = {"HMAC-SHA1": "SHA1", "SHA1": "SHA1", "HMAC-SHA256": "SHA256",
                                 "SHA256": "SHA256", "HMAC-SHA512": "SHA512", "SHA512": "SHA512"}


@dataclass(frozen=True, slots=True)
class Token:
    """One imported token. `seed` keeps its own repr secret-free."""

    serial: str
    seed: Seed
    params: Params
    user: str | None = None  # from the CSV's third column; PSKC assignments come from the request
    counter: int = 0  # an HOTP token's next counter (PSKC Data/Counter)


def _bad(message: str) -> Unprocessable:
    return Unprocessable(message, code="invalid_import")


def _text(node: Element | None) -> str | None:
    return node.text.strip() if node is not None and node.text is not None else None


def parse_pskc(document: str, psk: bytes | None = None) -> list[Token]:
    """The tokens of a PSKC file. `psk`: the transport key a vendor sends apart from a file whose secrets
    are encrypted under a pre-shared key (RFC 6030 section 6.1)."""
    try:
        root = fromstring(document, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise _bad("the PSKC file has a DTD or entities, which are refused") from None
    except ParseError as exc:
        raise _bad(f"the PSKC file is not well-formed XML ({exc})") from None
    if root.tag != f"{NS}KeyContainer":
        raise _bad("not a PSKC file: the root element must be KeyContainer "
                   "(xmlns urn:ietf:params:xml:ns:keyprov:pskc)")
    unseal = _Unsealer.of(root, psk)
    packages = root.findall(f"{NS}KeyPackage")
    if not packages:
        raise _bad("the PSKC file holds no KeyPackage")
    if len(packages) > MAX_TOKENS:
        raise _bad(f"at most {MAX_TOKENS} tokens per import")
    return [_package(package, i, unseal) for i, package in enumerate(packages, 1)]


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (ValueError, binascii.Error):
        raise _bad(f"{what} is not base64") from None


class _Unsealer:
    """Opens secrets encrypted under a pre-shared transport key (RFC 6030 section 6.1). Holds the key and
    the MAC key, so its repr says nothing of either."""

    def __init__(self, psk: bytes, mac_key: bytes, digest: str) -> None:
        self._psk, self._mac_key, self._digest = psk, mac_key, digest

    def __repr__(self) -> str:
        return "_Unsealer(<keys>)"

    @classmethod
    def of(cls, root: Element, psk: bytes | None) -> _Unsealer | None:
        encryption = root.find(f"{NS}EncryptionKey")
        if encryption is None:
            return None
        if encryption.find(f"{DS}KeyName") is None:
            raise _bad("the PSKC file's keys are encrypted with a password or a public key (RFC 6030 "
                       "sections 6.2, 6.3): pushauth imports plain-text secrets and ones encrypted under a "
                       "pre-shared key; decrypt the file with the vendor's tool first")
        if psk is None:
            raise _bad("the PSKC file's keys are encrypted under a pre-shared key (RFC 6030 section 6.1): "
                       "give the transport key the vendor sent apart from the file (psk)")
        method = root.find(f"{NS}MACMethod")
        if method is None or method.get("Algorithm") not in _MACS:
            raise _bad("a PSKC file encrypted under a pre-shared key needs a MACMethod (HMAC-SHA1 or "
                       "HMAC-SHA256) so that a changed file is noticed")
        mac_key_node = method.find(f"{NS}MACKey")
        if mac_key_node is None:
            raise _bad("the PSKC file's MACMethod has no MACKey")
        return cls(psk, _cbc_decrypt(psk, mac_key_node, "the MAC key"), _MACS[method.get("Algorithm", "")])

    def open(self, secret: Element, name: str) -> bytes:
        encrypted = secret.find(f"{NS}EncryptedValue")
        assert encrypted is not None
        mac_text = _text(secret.find(f"{NS}ValueMAC"))
        if not mac_text:
            raise _bad(f"{name}'s encrypted secret has no ValueMAC: a changed file could not be noticed")
        mac = _b64(mac_text, f"{name}'s ValueMAC")
        cipher_text = _b64(_text(encrypted.find(f"{XENC}CipherData/{XENC}CipherValue")), f"{name}'s secret")
        expected = hmac.new(self._mac_key, cipher_text, self._digest).digest()
        if not mac or not hmac.compare_digest(mac, expected):
            raise _bad(f"{name}'s secret fails its MAC: a wrong transport key (psk) or a changed file")
        return _cbc_decrypt(self._psk, encrypted, f"{name}'s secret", cipher_text)


def _cbc_decrypt(key: bytes, node: Element, what: str, cipher_text: bytes | None = None) -> bytes:
    """xenc EncryptedData with AES-CBC: the IV is the first 16 bytes; PKCS#7 padding (XML Encryption's
    own padding is the same when every pad byte equals the count, which is what vendors write)."""
    method = node.find(f"{XENC}EncryptionMethod")
    size = _CBC.get(method.get("Algorithm", "") if method is not None else "")
    if size is None:
        raise _bad(f"{what} is not encrypted with AES-CBC (xmlenc#aes128-cbc, -192-, -256-), which is all "
                   "pushauth opens")
    if len(key) != size:
        raise _bad(f"the transport key (psk) is {len(key)} bytes; {what} needs {size}")
    if cipher_text is None:
        cipher_text = _b64(_text(node.find(f"{XENC}CipherData/{XENC}CipherValue")), what)
    if len(cipher_text) < 32 or len(cipher_text) % 16:
        raise _bad(f"{what} is not an AES-CBC ciphertext (IV and whole blocks)")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(cipher_text[:16])).decryptor()
    padded = decryptor.update(cipher_text[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise _bad(f"{what} does not decrypt under the transport key (psk)") from None


def _package(package: Element, position: int, unseal: _Unsealer | None) -> Token:
    serial = _text(package.find(f"{NS}DeviceInfo/{NS}SerialNo"))
    key = package.find(f"{NS}Key")
    name = f"key package {position}" + (f" (serial {serial})" if serial else "")
    if key is None:
        raise _bad(f"{name} has no Key")
    serial = serial or key.get("Id") or ""
    if not serial or len(serial) > 64 or not serial.isprintable():
        raise _bad(f"{name} has no usable serial number (DeviceInfo/SerialNo or Key Id)")
    algorithm = key.get("Algorithm", "")
    if algorithm not in (TOTP, HOTP):
        raise _bad(f"{name} has Algorithm {algorithm!r}: only TOTP ({TOTP}) and HOTP ({HOTP}) keys are "
                   "imported")
    secret = key.find(f"{NS}Data/{NS}Secret")
    if secret is None:
        raise _bad(f"{name} has no Data/Secret")
    if secret.find(f"{NS}EncryptedValue") is not None:
        if unseal is None:
            raise _bad(f"{name}'s secret is encrypted but the file names no EncryptionKey: decrypt the file "
                       "with the vendor's tool first")
        raw = unseal.open(secret, name)
    else:
        plain = _text(secret.find(f"{NS}PlainValue"))
        if not plain:
            raise _bad(f"{name} has no Secret/PlainValue")
        raw = _b64(plain, f"{name}'s secret")
    try:
        seed = Seed(raw)
    except ValueError:
        raise _bad(f"{name}'s secret is shorter than 16 bytes") from None
    params = _params(key, name, "hotp" if algorithm == HOTP else "totp")
    return Token(serial, seed, params, counter=_counter(key, name) if algorithm == HOTP else 0)


def _counter(key: Element, name: str) -> int:
    node = key.find(f"{NS}Data/{NS}Counter")
    if node is not None and node.find(f"{NS}PlainValue") is None:
        raise _bad(f"{name}'s counter is encrypted: only a plain-text Counter is read")
    text = _text(node.find(f"{NS}PlainValue")) if node is not None else "0"
    if not text or not text.isdigit() or int(text) >= 1 << 53:  # Lua numbers are doubles
        raise _bad(f"{name}'s Data/Counter is not a counter")
    return int(text)


def _params(key: Element, name: str, kind: Kind) -> Params:
    fmt = key.find(f"{NS}AlgorithmParameters/{NS}ResponseFormat")
    digits = int(fmt.get("Length", "6")) if fmt is not None and fmt.get("Length", "6").isdigit() else 0
    if fmt is not None and fmt.get("Encoding", "DECIMAL") != "DECIMAL":
        raise _bad(f"{name}: only DECIMAL codes are supported")
    suite = (_text(key.find(f"{NS}AlgorithmParameters/{NS}Suite")) or "HMAC-SHA1").upper()
    interval = _text(key.find(f"{NS}Data/{NS}TimeInterval/{NS}PlainValue")) or "30"
    time0 = _text(key.find(f"{NS}Data/{NS}Time/{NS}PlainValue")) or "0"
    if time0 != "0":
        raise _bad(f"{name}: a T0 other than 0 (Data/Time) is not supported")
    try:
        return Params(algorithm=_SUITES[suite], digits=digits, period=int(interval), kind=kind)
    except (KeyError, ValueError):
        raise _bad(f"{name}: {suite}, {digits} digits every {interval} s is not supported "
                   "(SHA1/SHA256/SHA512, 6 or 8 digits, 30 or 60 s)") from None


def parse_csv(document: str) -> list[Token]:
    tokens = []
    for number, row in enumerate(csv.reader(io.StringIO(document)), 1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "serial":
            continue
        if len(cells) not in (2, 3) or not cells[0] or len(cells[0]) > 64 or not cells[0].isprintable():
            raise _bad(f"CSV line {number}: expected serial,seed_base32[,user]")
        try:
            seed = Seed.from_base32(cells[1])
        except ValueError:
            raise _bad(f"CSV line {number} (serial {cells[0]}): the seed is not base32 of at least 16 "
                       "bytes") from None
        tokens.append(Token(cells[0], seed, Params(), cells[2] or None if len(cells) == 3 else None))
        if len(tokens) > MAX_TOKENS:
            raise _bad(f"at most {MAX_TOKENS} tokens per import")
    if not tokens:
        raise _bad("the CSV holds no token")
    return tokens
