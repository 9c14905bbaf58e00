"""HOTP (RFC 4226) and TOTP (RFC 6238): the arithmetic, and nothing that stores or logs a seed.

A code is checked against every step of the window, each comparison constant-time and none skipped, so the
time taken says nothing about which step (if any) matched, nor how many leading digits were right. Which
step matched is returned, because replay is refused by step (each step is accepted once per user:
pushauth/codes/lua/use_code.lua), not by code text. Counter-based (HOTP) hardware tokens are checked the
same way over a look-ahead of counters from the method's next expected one (RFC 4226 section 7.4), and
replay is refused by counter: an accepted counter moves the method's past it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, urlencode

Algorithm = Literal["SHA1", "SHA256", "SHA512"]
# totp: the moving factor is the time step; hotp: a counter the token and the server both keep.
Kind = Literal["totp", "hotp"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("SHA1", "SHA256", "SHA512")
_DIGESTS: Final = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
# RFC 6238 section 5.1 / RFC 4226 section 4: a key as long as the hash output (and never under 128 bits).
SEED_BYTES: Final = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
MIN_SEED_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Params:
    """How a method's codes are made: what an authenticator app is told in the otpauth:// URI."""

    algorithm: Algorithm = "SHA1"
    digits: int = 6
    period: int = 30  # totp only
    kind: Kind = "totp"

    def __post_init__(self) -> None:
        if self.kind not in ("totp", "hotp"):
            raise ValueError("kind must be totp or hotp")
        if self.algorithm not in ALGORITHMS:
            raise ValueError("algorithm must be SHA1, SHA256 or SHA512")
        if self.digits not in (6, 8):
            raise ValueError("digits must be 6 or 8")
        if self.period not in (30, 60):
            raise ValueError("period must be 30 or 60")


class Seed:
    """A TOTP secret in memory. Its repr and str name only its length: a seed that reaches a log line, a
    traceback or an assertion message must not be readable there."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) < MIN_SEED_BYTES:
            raise ValueError(f"a TOTP seed must be at least {MIN_SEED_BYTES} bytes")
        self._raw = raw

    @classmethod
    def new(cls, algorithm: Algorithm) -> Seed:
        return cls(secrets.token_bytes(SEED_BYTES[algorithm]))

    @classmethod
    def from_base32(cls, text: str) -> Seed:
        """What authenticator apps and token vendors write: base32, any case, spaces and padding optional."""
        clean = "".join(text.split()).upper().rstrip("=")
        try:
            return cls(base64.b32decode(clean + "=" * (-len(clean) % 8)))
        except (ValueError, binascii.Error):
            raise ValueError("the seed is not base32") from None

    def raw(self) -> bytes:
        return self._raw

    def base32(self) -> str:
        return base64.b32encode(self._raw).decode("ascii").rstrip("=")

    def __repr__(self) -> str:
        return f"Seed(<{len(self._raw)} bytes>)"

    __str__ = __repr__


def hotp(key: bytes, counter: int, *, digits: int = 6, algorithm: Algorithm = "SHA1") -> str:
    """RFC 4226 section 5.3: HMAC, dynamic truncation, modulo 10^digits, zero-padded."""
    mac = hmac.new(key, struct.pack(">Q", counter), _DIGESTS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_of(unix_time: int, period: int = 30) -> int:
    """RFC 6238 section 4.2: T = floor((now - T0) / X), T0 = 0."""
    return unix_time // period


def code_at(seed: Seed, unix_time: int, params: Params) -> str:
    return hotp(seed.raw(), step_of(unix_time, params.period), digits=params.digits,
                algorithm=params.algorithm)


def matching_step(seed: Seed, code: str, unix_time: int, params: Params, window: int) -> int | None:
    """The time step within `window` steps either side of now whose code is `code`, or None. Every step is
    computed and compared (constant-time) whatever the earlier ones gave; when two steps share a code (one
    in 10^digits) the later one is taken, which spends more of the replay cache, never less."""
    typed = code.encode("ascii", "replace")
    now = step_of(unix_time, params.period)
    found = None
    for step in range(now - window, now + window + 1):
        expected = hotp(seed.raw(), step, digits=params.digits, algorithm=params.algorithm).encode("ascii")
        if hmac.compare_digest(expected, typed):
            found = step
    return found


def matching_counter(seed: Seed, code: str, counter: int, params: Params, look_ahead: int) -> int | None:
    """For an HOTP token: the counter in [counter, counter + look_ahead) whose code is `code`, or None (RFC
    4226 section 7.4's look-ahead, for a button pressed without signing in). Every counter is computed and
    compared constant-time; when two share a code the later one is taken, which spends more, never less."""
    typed = code.encode("ascii", "replace")
    found = None
    for candidate in range(counter, counter + look_ahead):
        expected = hotp(seed.raw(), candidate, digits=params.digits, algorithm=params.algorithm)
        if hmac.compare_digest(expected.encode("ascii"), typed):
            found = candidate
    return found


def normal_code(text: str) -> str | None:
    """A code as people type it ("123 456", "123-456"): its digits, or None when it is not 6 or 8 digits."""
    digits = text.replace(" ", "").replace("-", "")
    return digits if len(digits) in (6, 8) and digits.isascii() and digits.isdigit() else None


def otpauth_uri(seed: Seed, params: Params, *, issuer: str, account: str) -> str:
    """Key Uri Format (google-authenticator's wiki), which Microsoft Authenticator, Google Authenticator and
    FreeOTP read: otpauth://totp/<issuer>:<account>?secret=...&issuer=...&algorithm=...&digits=...&period=..."""
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode({"secret": seed.base32(), "issuer": issuer, "algorithm": params.algorithm,
                       "digits": params.digits, "period": params.period})
    return f"otpauth://totp/{label}?{query}"
