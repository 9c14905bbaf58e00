"""Who may do what on the security team's side: roles, and the named console accounts that carry them.

A role is a set of actions; the server checks the action of every admin API call and console form against
the caller's role (`require`), so a button a role does not see is refused as well when it is sent anyway.

    viewer        read: alerts, users, the audit trail, alert delivery
    service_desk  viewer + unlock / lift, access codes, enrollments for a new phone
    responder     service_desk + acknowledge alerts, lock, revoke devices and remembered browsers,
                  let a new phone revoke older ones
    owner         responder + alert sinks (replay, re-enable), account policies, console accounts

The roles are nested, so a role is its rank: a newer role cannot be given fewer powers than one below it
by accident. An admin token configured in `admin.token_sha256` is an owner (automation, and the first
owner); one in `[[admin.tokens]]` has the role configured there. A console account (`Operators`) names a
pushauth user, who signs in to the console with a push to their own phone, and a role; accounts live in
Redis (`<prefix>:console:accounts`), are changed only by an owner, and every change is audited.
"""

from __future__ import annotations

from typing import Any, Final, cast

import msgspec
import redis.asyncio as aioredis

from pushauth import clock
from pushauth.audit import Audit
from pushauth.clock import rfc3339
from pushauth.errors import Forbidden, NotFound, Unprocessable
from pushauth.store import KeySpace

ROLES: Final = ("viewer", "service_desk", "responder", "owner")

# The least role each action needs. Every admin API route and console form names one of these.
ACTIONS: Final[dict[str, str]] = {
    "read": "viewer",
    "unlock": "service_desk",
    "access_code": "service_desk",
    "enroll": "service_desk",
    "ack": "responder",
    "lock": "responder",
    "revoke": "responder",
    "allow_revoke": "responder",
    "sinks": "owner",
    "policy": "owner",
    "accounts": "owner",
}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def may(role: str, action: str) -> bool:
    """Whether `role` may do `action`. An unknown role or action may do nothing (fail closed)."""
    need = ACTIONS.get(action)
    if need is None or role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(need)


def require(role: str, action: str) -> None:
    """Raise the contract's 403 (`role_forbidden`) unless `role` may do `action`."""
    if not may(role, action):
        raise Forbidden(f"the {role} role may not do this ({action} needs {ACTIONS.get(action, 'owner')})",
                        code="role_forbidden")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Unprocessable(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
    return role


def person(user: str) -> str:
    """The audit "who" of a console account: the person's own pushauth user name."""
    return f"console:{user}"


class Operators:
    """Owns the console accounts (`<prefix>:console:accounts`: user name -> JSON role record).

    Called by the admin API (`/v1/console-accounts`), the console's sign-in and its session checks (a role
    change or a removal takes effect at the account's next page), and `pushauth admin accounts`."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, audit: Audit) -> None:
        self._redis = redis
        self._key = keyspace.console_accounts
        self._audit = audit

    async def role_of(self, user: str) -> str | None:
        raw = await self._redis.hget(self._key, user)
        if not raw:
            return None
        role = _decode(raw).get("role")
        return role if role in ROLES else None

    async def require_outranks(self, actor_role: str, user: str) -> None:
        """Refuse (403 `role_forbidden`) giving `user` a new way to prove who they are (a phone enrolled
        on the security team's word, an access code, a one-time-code method) unless `actor_role` is at
        least the role of `user`'s console account. The console lets a person in with their own phone, so
        a service desk that could give an owner's account a phone of its choosing could sign in as that
        owner."""
        held = await self.role_of(user)
        rank = ROLES.index(actor_role) if actor_role in ROLES else -1
        if held is not None and rank < ROLES.index(held):
            raise Forbidden(f"{user} has a console account of role {held}: only that role or above may give "
                            "them a new phone, access code or code method", code="role_forbidden")

    async def list(self) -> list[dict[str, Any]]:
        rows = cast(dict[str, str], await self._redis.hgetall(self._key))
        out = []
        for user, raw in sorted(rows.items()):
            record = _decode(raw)
            out.append({"user": user, "role": record.get("role"), "set_by": record.get("by", ""),
                        "set_at": rfc3339(int(record.get("at", 0)))})
        return out

    async def set(self, user: str, role: str, *, by: str) -> dict[str, Any]:
        check_role(role)
        now = clock.now()
        await self._redis.hset(self._key, user, _encode({"role": role, "by": by, "at": now}))
        await self._audit.record("console_account_set", user=user, who=by, role=role)
        return {"user": user, "role": role, "set_by": by, "set_at": rfc3339(now)}

    async def remove(self, user: str, *, by: str) -> None:
        if by == person(user):
            # An owner removing themselves could leave no owner but the token; that is a deliberate act.
            raise Forbidden("you cannot remove your own console account", code="role_forbidden")
        if not await self._redis.hdel(self._key, user):
            raise NotFound("no such console account")
        await self._audit.record("console_account_removed", user=user, who=by)
