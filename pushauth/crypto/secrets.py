"""Random secrets, their stored hashes, and comparisons that do not leak timing."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret (API key, admin token, enrollment code): 256 bits by default."""
    return secrets.token_urlsafe(nbytes)


def nonce(nbytes: int = 16) -> str:
    """A random nonce, base64url without padding."""
    return secrets.token_urlsafe(nbytes)


def _utf8(value: str) -> bytes:
    # "surrogatepass": a header's bytes that are not UTF-8 reach us as lone surrogates (aiohttp decodes
    # with surrogateescape), which strict UTF-8 cannot encode. Callers refuse such values first; this
    # makes sure one that slips through is a mismatch, never an exception. Text without surrogates is
    # encoded exactly as before, and distinct strings still give distinct bytes.
    return value.encode("utf-8", "surrogatepass")


def sha256_hex(value: str) -> str:
    # High-entropy secrets (>= 128 bits) need no slow hash: nobody can brute-force the preimage, and a fast
    # hash keeps authentication off the CPU profile.
    return hashlib.sha256(_utf8(value)).hexdigest()


def equal(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(_utf8(a), _utf8(b))


def number(digits: int) -> str:
    """A uniformly random number-matching code, zero-padded to `digits`."""
    return str(secrets.randbelow(10**digits)).zfill(digits)
