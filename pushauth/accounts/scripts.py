"""The accounts package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the reply
decoded. Nothing else runs them; `pushauth.accounts.service.Accounts` calls the wrappers.

Every script here includes the ledger (`pushauth.detection.ledger`): KEYS[1] is the user hash and
ARGV[1..6] the `LedgerCall`. A wrapper answers a `LedgerReply` (its result word as an enum, the alert notes
to announce, what follows), or, where what follows is the point, a small dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.detection.ledger import LedgerCall, LedgerReply
from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

UNLOCK_USER = Script.load("pushauth.accounts", "unlock_user.lua")
USER_BLOCKS = Script.load("pushauth.accounts", "user_blocks.lua")
LOCK_USER = Script.load("pushauth.accounts", "lock_user.lua")
ISSUE_ACCESS_CODE = Script.load("pushauth.accounts", "issue_access_code.lua")
VERIFY_ACCESS_CODE = Script.load("pushauth.accounts", "verify_access_code.lua")
SET_POLICY = Script.load("pushauth.accounts", "set_policy.lua")


class Done(StrEnum):
    """The result of a script that always does what it is asked."""

    OK = "ok"


class PolicySet(StrEnum):
    OK = "ok"  # detail: ["<what was active, comma-joined>"] ('' unless forced over containment)
    REFUSED = "refused"  # detail: ["<what is active, comma-joined>"]


class Verified(StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # wrong, used or expired (or no code exists)
    LOCKED = "locked"
    SUSPENDED = "suspended"
    RATE_LIMITED = "rate_limited"  # detail: [retry_after_s]


@dataclass(frozen=True, slots=True)
class Unlocked:
    """What an unlock ended (unlock_user.lua)."""

    notes: list[str]
    was_locked: bool
    was_suspended: bool
    push_bombing_block_ended: bool
    access_code_block_ended: bool


@dataclass(frozen=True, slots=True)
class UserBlocks:
    """The user's time-window blocks (user_blocks.lua), Unix seconds; `until` 0: not blocked."""

    notes: list[str]
    bombing_since: int
    bombing_until: int
    codes_since: int
    codes_until: int
    otp_since: int
    otp_until: int


async def unlock_user(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, by: str, what: str,
                      code_window_s: int, code_attempts: int, acks: ReplicaAcks | None) -> Unlocked:
    """Lift the lock, the suspension or both (`what`: 'all' | 'lock' | 'suspension'), and restart the
    push-bombing and wrong-access-code windows (unlock_user.lua)."""
    reply = await UNLOCK_USER(redis, [user_key], [*ledger.argv(), by, what, code_window_s, code_attempts],
                              acks=acks)
    return Unlocked(list(reply[1]), bool(reply[2]), bool(reply[3]), bool(reply[4]), bool(reply[5]))


async def user_blocks(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, code_window_s: int,
                      code_attempts: int, otp_window_s: int, otp_attempts: int) -> UserBlocks:
    """The push-bombing, wrong-access-code and wrong-one-time-code windows refusing the user now, by the
    ledger's own rule (user_blocks.lua; reads only)."""
    reply = await USER_BLOCKS(redis, [user_key],
                              [*ledger.argv(), code_window_s, code_attempts, otp_window_s, otp_attempts])
    return UserBlocks(list(reply[1]), *(int(v) for v in reply[2:8]))


async def lock_user(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, by: str,
                    acks: ReplicaAcks | None) -> LedgerReply[Done]:
    """Lock the user now; pending prompts are denied (lock_user.lua)."""
    reply = await LOCK_USER(redis, [user_key], [*ledger.argv(), by], acks=acks)
    return LedgerReply.decode(Done, reply)


async def issue_access_code(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, code_hash: str,
                            expires_at: int, by: str, acks: ReplicaAcks | None) -> LedgerReply[Done]:
    """Store a temporary access code's hash, replacing any earlier one (issue_access_code.lua)."""
    reply = await ISSUE_ACCESS_CODE(redis, [user_key], [*ledger.argv(), code_hash, expires_at, by], acks=acks)
    return LedgerReply.decode(Done, reply)


async def verify_access_code(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, code_hash: str,
                             attempts: int, window_s: int, grant_s: int,
                             acks: ReplicaAcks | None) -> LedgerReply[Verified]:
    """Check (and on success spend) the user's access code (verify_access_code.lua)."""
    reply = await VERIFY_ACCESS_CODE(redis, [user_key],
                                     [*ledger.argv(), code_hash, attempts, window_s, grant_s], acks=acks)
    return LedgerReply.decode(Verified, reply)


async def set_policy(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, exempt: str, shared: str,
                     force: str, by: str, acks: ReplicaAcks | None) -> LedgerReply[PolicySet]:
    """Set or clear the exempt / shared flags ('1' set, '0' clear, '' leave; `force` '1' or ''), refused
    while the account is contained unless forced (set_policy.lua)."""
    reply = await SET_POLICY(redis, [user_key], [*ledger.argv(), exempt, shared, force, by], acks=acks)
    return LedgerReply.decode(PolicySet, reply)
