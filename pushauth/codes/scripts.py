"""The codes package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the reply
decoded. Nothing else runs them; `pushauth.codes.service.Codes` calls the wrappers.

Both include the ledger (`pushauth.detection.ledger`): KEYS[1] is the user hash and ARGV[1..6] the
`LedgerCall`; the reply is a `LedgerReply` whose `detail` each result enum documents.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.detection.ledger import LedgerCall, LedgerReply
from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

USE_CODE = Script.load("pushauth.codes", "use_code.lua")
ACTIVATE_CODE = Script.load("pushauth.codes", "activate_code.lua")
RESEAL_SEED = Script.load("pushauth.codes", "reseal_seed.lua")
DELIVER_SEED = Script.load("pushauth.codes", "deliver_seed.lua")


class Used(StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # no method's code within the window
    REPLAYED = "replayed"  # a right code whose step was accepted already (or an earlier one)
    LOCKED = "locked"
    SUSPENDED = "suspended"
    RATE_LIMITED = "rate_limited"  # detail: [retry_after_s]


class Activated(StrEnum):
    ACTIVE = "active"
    INVALID = "invalid"  # detail: [tries_left]
    DISCARDED = "discarded"  # too many wrong codes: the pending method is gone
    EXPIRED = "expired"
    NOT_PENDING = "not_pending"


async def use_code(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, method_id: str, step_at: int,
                   attempts: int, window_s: int, via: str, acks: ReplicaAcks | None,
                   counter: int = -1) -> LedgerReply[Used]:
    """Accept (once per user and step, or per token and counter) or refuse a one-time code (use_code.lua)."""
    reply = await USE_CODE(redis, [user_key],
                           [*ledger.argv(), method_id, step_at, attempts, window_s, via, counter], acks=acks)
    return LedgerReply.decode(Used, reply)


async def activate_code(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, method_id: str,
                        step_at: int, max_tries: int, by: str, acks: ReplicaAcks | None,
                        counter: int = -1) -> LedgerReply[Activated]:
    """Activate a pending method with one of its codes (activate_code.lua)."""
    reply = await ACTIVATE_CODE(redis, [user_key],
                                [*ledger.argv(), method_id, step_at, max_tries, by, counter], acks=acks)
    return LedgerReply.decode(Activated, reply)


async def reseal_seed(redis: aioredis.Redis, method_key: str, *, old: str, new: str) -> bool:
    """Replace a method's sealed seed with its re-encryption unless it changed meanwhile (reseal_seed.lua)."""
    return bool(await RESEAL_SEED(redis, [method_key], [old, new]))


async def deliver_seed(redis: aioredis.Redis, method_key: str, *, device_id: str, now: int,
                       acks: ReplicaAcks | None) -> bool:
    """Activate a waiting phone's pending seed, once: True only for the call that did (deliver_seed.lua)."""
    return bool(await DELIVER_SEED(redis, [method_key], [device_id, now], acks=acks))
