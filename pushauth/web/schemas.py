"""Request bodies, validated by msgspec: wrong types, missing or unknown fields are a 422 naming the field.

Unknown fields are refused rather than ignored: in a security API a misspelt `ttl_s` silently ignored is a
policy the caller thinks it set and did not.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Short = Annotated[str, msgspec.Meta(max_length=256)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PushToken = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class LoginContext(_Body, frozen=True):
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    location: Short | None = None


class CreateChallenge(_Body, frozen=True):
    user: Short
    context: LoginContext | None = None
    remember_token: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    # The login flow's own identifier of this browser or device (a cookie it set, hashed or not): an
    # approval remembers it, and only it, for the application.
    browser_id: Short | None = None
    ttl_s: int | None = None


class CreateEnrollment(_Body, frozen=True):
    user: Short


class PushRegistration(_Body, frozen=True):
    provider: Literal["fcm", "apns", "none"]
    token: PushToken | None = None


class RegisterDevice(_Body, frozen=True):
    code: Secret
    name: Name
    platform: Literal["ios", "android", "other"]
    push: PushRegistration
    # The phone can show offline one-time codes: it asks for a TOTP seed (PROTOCOL.md 17.5).
    offline_codes: bool = False


class DeviceAnswer(_Body, frozen=True):
    nonce: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    decision: Literal["approve", "deny"]
    reason: Literal["not_me", "mistake"] | None = None
    number: Annotated[str, msgspec.Meta(max_length=16)] | None = None


class UpdatePushToken(_Body, frozen=True):
    provider: Literal["fcm", "apns", "none"]
    token: PushToken | None = None


class Unlock(_Body, frozen=True):
    # all: the lockout and the suspension; lock or suspension: only that one.
    what: Literal["all", "lock", "suspension"] = "all"


class AckAlert(_Body, frozen=True):
    # What the acknowledger found and did; kept on the alert (`ack_note`) and in the audit trail.
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""


class ConsoleAccount(_Body, frozen=True):
    # pushauth/operators.py ROLES
    role: Literal["viewer", "service_desk", "responder", "owner"]


class AccountPolicy(_Body, frozen=True):
    exempt: bool | None = None
    shared: bool | None = None
    # Mark exempt or shared although the account is contained (locked, suspended, push-bombed, an open
    # critical alert): done, and a high alert raised. Without it such a change is refused (409).
    force: bool = False


class VerifyAccessCode(_Body, frozen=True):
    user: Short
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class RevokeRemembered(_Body, frozen=True):
    remember_token: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class UserSignal(_Body, frozen=True):
    user: Short


class Pause(_Body, frozen=True):
    duration_s: Annotated[int, msgspec.Meta(ge=60)]


# -- offline codes (TOTP, pushauth/web/codes.py) ----------------------------------------------------------

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


class VerifyCode(_Body, frozen=True):
    user: Short
    code: Code


class EnrollCodeMethod(_Body, frozen=True):
    # What the security team calls it in the user view ("Alice's FreeOTP").
    name: Annotated[str, msgspec.Meta(max_length=64)] = ""


class ActivateCodeMethod(_Body, frozen=True):
    code: Code


class ImportTokens(_Body, frozen=True):
    format: Literal["pskc", "csv"]
    # The vendor's file as text: RFC 6030 PSKC XML, or CSV lines serial,seed_base32[,user].
    data: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000_000)]
    # serial -> user: who each token is for (the CSV may say it in a third column instead).
    assignments: dict[Short, Short] = {}
    # PSKC whose secrets are encrypted under a pre-shared key (RFC 6030 section 6.1): the transport key the
    # vendor sent apart from the file, hex (AES-128, -192 or -256).
    psk: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{48}|[0-9a-fA-F]{64})$")] = ""
