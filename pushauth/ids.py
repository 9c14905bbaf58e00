"""Identifiers, and which Redis slot each lives in.

Every user gets a random, opaque `uid` the first time a phone is enrolled. Everything that belongs to a
user (devices, challenges, the replay cache, lock state) lives under the Redis hash tag `{uid}`, so one
Lua script can change all of it atomically even on Redis Cluster. Challenge and device ids embed the uid,
so a request naming one finds its slot without another lookup. The uid is random rather than a hash of
the user name: challenge ids travel through Google and Apple in push payloads, and a hash of a name can
be reversed by guessing names.
"""

from __future__ import annotations

import base64
import re
import secrets

_B32 = "[a-z2-7]"
UID_LEN = 16  # 10 random bytes
_CHALLENGE = re.compile(rf"c({_B32}{{{UID_LEN}}}){_B32}{{26}}")  # + 16 random bytes: 128 bits
_DEVICE = re.compile(rf"d({_B32}{{{UID_LEN}}}){_B32}{{16}}")  # + 10 random bytes
_ALERT = re.compile(rf"a({_B32}{{{UID_LEN}}}){_B32}{{16}}")  # + 10 random bytes
_JTI = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _b32(n: int) -> str:
    return base64.b32encode(secrets.token_bytes(n)).decode("ascii").rstrip("=").lower()


def new_uid() -> str:
    return _b32(10)


def new_challenge_id(uid: str) -> str:
    return f"c{uid}{_b32(16)}"


def new_device_id(uid: str) -> str:
    return f"d{uid}{_b32(10)}"


def new_alert_id(uid: str) -> str:
    return f"a{uid}{_b32(10)}"


def new_enrollment_id() -> str:
    return f"e{_b32(10)}"


def challenge_uid(challenge_id: str) -> str | None:
    """The uid inside a challenge id, or None if the id is not one of ours (the caller answers 404)."""
    m = _CHALLENGE.fullmatch(challenge_id)
    return m.group(1) if m else None


def device_uid(device_id: str) -> str | None:
    m = _DEVICE.fullmatch(device_id)
    return m.group(1) if m else None


def alert_uid(alert_id: str) -> str | None:
    m = _ALERT.fullmatch(alert_id)
    return m.group(1) if m else None


def valid_jti(jti: object) -> bool:
    """Bounded charset and length, because the jti becomes part of a Redis key."""
    return isinstance(jti, str) and _JTI.fullmatch(jti) is not None
