"""The challenge lifecycle's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the
reply decoded. Nothing else runs them.

Every script here includes the ledger (`pushauth.detection.ledger`): KEYS[1] is the user hash and
ARGV[1..6] the `LedgerCall`.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.detection.ledger import LedgerCall, LedgerReply
from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

CREATE_CHALLENGE = Script.load("pushauth.challenges", "create_challenge.lua")
SETTLE = Script.load("pushauth.challenges", "settle.lua")
RESPOND = Script.load("pushauth.challenges", "respond.lua")
CANCEL = Script.load("pushauth.challenges", "cancel.lua")


class Cancelled(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    CONFLICT = "conflict"  # detail: [the status it already has]


async def cancel(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, cid: str, app_id: str,
                 acks: ReplicaAcks | None) -> LedgerReply[Cancelled]:
    """The login flow `app_id` gives up on challenge `cid` (cancel.lua)."""
    reply = await CANCEL(redis, [user_key], [*ledger.argv(), cid, app_id], acks=acks)
    return LedgerReply.decode(Cancelled, reply)
