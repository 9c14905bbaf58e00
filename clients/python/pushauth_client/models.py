"""What the login-flow calls return, as typed values parsed from the contract's JSON (PROTOCOL.md 11).

Response fields the library does not know are ignored, as the contract requires of clients. Tokens a
result carries (the assertion, a remember token) are left out of reprs, so a result logged whole does
not put a bearer credential in a log.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pushauth_client.errors import ProtocolError

Status = Literal["pending", "approved", "denied", "expired", "cancelled"]
_STATUSES = ("pending", "approved", "denied", "expired", "cancelled")


@dataclass(frozen=True)
class Pending:
    """201 from create: a prompt went to the user's phones. Show `number` exactly, if there is one."""

    id: str
    expires_at: datetime
    number: str | None = None


@dataclass(frozen=True)
class Allowed:
    """200 from create: sign the user in without a prompt. `reason` is "exempt" (with `account` "exempt" or
    "shared"), "remembered" (this browser's remember token), or "grace" (no phone yet; urge them to enroll
    before `enroll_by`)."""

    reason: str
    account: str | None = None
    enroll_by: datetime | None = None


@dataclass(frozen=True)
class ChallengeStatus:
    """GET /v1/challenges/{id}. Only `approved` with an assertion that verifies signs anyone in."""

    id: str
    user: str
    status: Status
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    device: str | None = None
    # denied: not_me, mistake, wrong_number, suspended, locked (and any later reason, as a string)
    reason: str | None = None
    # denied with not_me, suspended or locked: what the organisation tells its users to do now. Show it.
    user_message: str | None = None
    assertion: str | None = field(default=None, repr=False)
    # approved, when create had a browser_id: store it with that browser, send it with the next create.
    remember_token: str | None = field(default=None, repr=False)
    delivery: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def approved(self) -> bool:
        return self.status == "approved" and self.assertion is not None


@dataclass(frozen=True)
class AssertionClaims:
    """A verified assertion: the user approved `challenge_id` for `application` at `auth_time`."""

    user: str
    challenge_id: str
    application: str
    issuer: str
    issued_at: int
    expires_at: int
    auth_time: int | None
    device: str | None


@dataclass(frozen=True)
class AccessCodeResult:
    """POST /v1/access-codes/verify: `valid`, or why not (invalid, locked, suspended, unknown_user)."""

    valid: bool
    reason: str | None = None
    user_message: str | None = None

    def __bool__(self) -> bool:
        return self.valid


def canonical_user(name: str) -> str:
    """The server's canonical form of a user name (PROTOCOL.md 2.5), the form an assertion's `sub` has.
    The server also refuses some names; this only folds, so compare its result, never send it instead."""
    step = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name.strip()).casefold()).strip()
    return step


# -- parsing ----------------------------------------------------------------------------------------------


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"the server's answer has no string {name!r}")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def _time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise ProtocolError(f"the server's answer has no time {name!r}")
    try:
        return datetime.fromisoformat(value)  # RFC 3339 with a Z: Python 3.11 reads it as UTC
    except ValueError as exc:
        raise ProtocolError(f"{name} is not an RFC 3339 time") from exc


def _opt_time(data: dict[str, Any], name: str) -> datetime | None:
    return _time(data[name], name) if data.get(name) is not None else None


def parse_created(status: int, data: dict[str, Any]) -> Pending | Allowed:
    if data.get("status") == "allowed":
        return Allowed(reason=_str(data, "reason"), account=_opt_str(data, "account"),
                       enroll_by=_opt_time(data, "enroll_by"))
    if status != 201 or data.get("status") != "pending":
        raise ProtocolError(f"create answered {status} with status {data.get('status')!r}")
    return Pending(id=_str(data, "id"), expires_at=_time(data.get("expires_at"), "expires_at"),
                   number=_opt_str(data, "number"))


def parse_status(data: dict[str, Any]) -> ChallengeStatus:
    status = data.get("status")
    if status not in _STATUSES:
        raise ProtocolError(f"unknown challenge status {status!r}")
    delivery = data.get("delivery")
    return ChallengeStatus(
        id=_str(data, "id"), user=_str(data, "user"), status=status,
        created_at=_time(data.get("created_at"), "created_at"),
        expires_at=_time(data.get("expires_at"), "expires_at"), decided_at=_opt_time(data, "decided_at"),
        device=_opt_str(data, "device"), reason=_opt_str(data, "reason"),
        user_message=_opt_str(data, "user_message"), assertion=_opt_str(data, "assertion"),
        remember_token=_opt_str(data, "remember_token"),
        delivery={str(k): {str(a): str(b) for a, b in v.items()}
                  for k, v in delivery.items() if isinstance(v, dict)} if isinstance(delivery, dict) else {})


def parse_access_code(data: dict[str, Any]) -> AccessCodeResult:
    valid = data.get("valid")
    if not isinstance(valid, bool):
        raise ProtocolError("the access-code answer has no boolean 'valid'")
    return AccessCodeResult(valid=valid, reason=_opt_str(data, "reason"),
                            user_message=_opt_str(data, "user_message"))
