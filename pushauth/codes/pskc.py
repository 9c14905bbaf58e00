"""Hardware tokens' seeds as their vendors ship them: RFC 6030 PSKC XML, or a plain CSV.

PSKC is parsed by defusedxml with DTDs forbidden: no entity expansion (billion laughs), no external entity
or DTD fetched from the network or the disk. Only TOTP keys with a plain-text secret (`<PlainValue>`, as
in RFC 6030 section 4, figure 2) are imported; a key protected by a pre-shared key or a password
(`<EncryptedValue>`, sections 6.1 and 6.2) is refused with a message saying so (decrypt the file with the
vendor's tool first), and so is an HOTP (counter-based) key, which would need a counter pushauth does
not keep.

CSV: one token a line, `serial,seed_base32[,user]`; a header line starting `serial` is skipped, `#` starts
a comment line. SHA1, 6 digits, 30 s (what such files leave unsaid).

Every refusal is a `Unprocessable` (422 `invalid_import`) that names the key (its serial or position):
nothing of a file is imported unless all of it is.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pushauth.codes.totp import Algorithm, Params, Seed
from pushauth.errors import Unprocessable

NS = "{urn:ietf:params:xml:ns:keyprov:pskc}"
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


def _bad(message: str) -> Unprocessable:
    return Unprocessable(message, code="invalid_import")


def _text(node: Element | None) -> str | None:
    return node.text.strip() if node is not None and node.text is not None else None


def parse_pskc(document: str) -> list[Token]:
    try:
        root = fromstring(document, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise _bad("the PSKC file has a DTD or entities, which are refused") from None
    except ParseError as exc:
        raise _bad(f"the PSKC file is not well-formed XML ({exc})") from None
    if root.tag != f"{NS}KeyContainer":
        raise _bad("not a PSKC file: the root element must be KeyContainer "
                   "(xmlns urn:ietf:params:xml:ns:keyprov:pskc)")
    if root.find(f"{NS}EncryptionKey") is not None or root.find(f"{NS}MACMethod") is not None:
        raise _bad("the PSKC file's keys are encrypted (EncryptionKey / MACMethod, RFC 6030 section 6): "
                   "pushauth imports plain-text secrets only; decrypt the file with the vendor's tool first")
    packages = root.findall(f"{NS}KeyPackage")
    if not packages:
        raise _bad("the PSKC file holds no KeyPackage")
    if len(packages) > MAX_TOKENS:
        raise _bad(f"at most {MAX_TOKENS} tokens per import")
    return [_package(package, i) for i, package in enumerate(packages, 1)]


def _package(package: Element, position: int) -> Token:
    serial = _text(package.find(f"{NS}DeviceInfo/{NS}SerialNo"))
    key = package.find(f"{NS}Key")
    name = f"key package {position}" + (f" (serial {serial})" if serial else "")
    if key is None:
        raise _bad(f"{name} has no Key")
    serial = serial or key.get("Id") or ""
    if not serial or len(serial) > 64 or not serial.isprintable():
        raise _bad(f"{name} has no usable serial number (DeviceInfo/SerialNo or Key Id)")
    algorithm = key.get("Algorithm", "")
    if algorithm == HOTP:
        raise _bad(f"{name} is an HOTP (counter-based) key: only TOTP keys ({TOTP}) are imported")
    if algorithm != TOTP:
        raise _bad(f"{name} has Algorithm {algorithm!r}: only TOTP keys ({TOTP}) are imported")
    secret = key.find(f"{NS}Data/{NS}Secret")
    if secret is None:
        raise _bad(f"{name} has no Data/Secret")
    if secret.find(f"{NS}EncryptedValue") is not None:
        raise _bad(f"{name}'s secret is encrypted: decrypt the file with the vendor's tool first")
    plain = _text(secret.find(f"{NS}PlainValue"))
    if not plain:
        raise _bad(f"{name} has no Secret/PlainValue")
    try:
        seed = Seed(base64.b64decode("".join(plain.split()), validate=True))
    except (ValueError, binascii.Error):
        raise _bad(f"{name}'s secret is not base64 of at least 16 bytes") from None
    return Token(serial, seed, _params(key, name))


def _params(key: Element, name: str) -> Params:
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
        return Params(algorithm=_SUITES[suite], digits=digits, period=int(interval))
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
