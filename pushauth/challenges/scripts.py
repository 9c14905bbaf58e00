"""The challenge lifecycle's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the
reply decoded. Nothing else runs them.

Every script here but CLAIM_DUE includes the ledger (`pushauth.detection.ledger`): KEYS[1] is the user hash
and ARGV[1..6] the `LedgerCall`; the reply is a `LedgerReply` whose `detail` each result enum documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import redis.asyncio as aioredis

from pushauth.detection.ledger import LedgerCall, LedgerReply
from pushauth.push.dispatch import STREAM_MAXLEN
from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

CREATE_CHALLENGE = Script.load("pushauth.challenges", "create_challenge.lua")
SETTLE = Script.load("pushauth.challenges", "settle.lua")
RESPOND = Script.load("pushauth.challenges", "respond.lua")
CANCEL = Script.load("pushauth.challenges", "cancel.lua")
CLAIM_DUE = Script.load("pushauth.challenges", "claim_due.lua")


class Creation(StrEnum):
    """create_challenge.lua's result."""

    OK = "ok"  # detail: [the comma-joined ids of the phones it goes to]
    EXEMPT = "exempt"  # detail: ["shared" | "exempt"]
    REMEMBERED = "remembered"
    LOCKED = "locked"
    SUSPENDED = "suspended"
    PAUSED = "paused"  # detail: [until, Unix seconds]
    NOT_ENROLLED = "not_enrolled"
    RATE_LIMITED = "rate_limited"  # detail: [retry_after_s]


class Responded(StrEnum):
    """respond.lua's result."""

    # detail: [the comma-joined phones to push a `device_added` notice to, or "", status, reason, app, iat]
    OK = "ok"
    REPLAY = "replay"  # the request's jti was seen before
    PENDING = "pending"  # the answering phone waits for approval itself
    REVOKED = "revoked"
    NOT_FOUND = "not_found"
    BAD_NONCE = "bad_nonce"
    REASON_NOT_FOR_APPROVE = "reason_not_for_approve"
    NUMBER_REQUIRED = "number_required"
    LOCKED = "locked"
    SUSPENDED = "suspended"
    EXPIRED = "expired"  # detail: ["", "recorded"?]
    CONFLICT = "conflict"  # detail: [the status it already has, "recorded"?]


class Cancelled(StrEnum):
    """cancel.lua's result."""

    OK = "ok"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    CONFLICT = "conflict"  # detail: [the status it already has]


class Settled(StrEnum):
    """settle.lua's result."""

    OK = "ok"  # detail: [how many prompts were settled as ignored]


async def create_challenge(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, exp: int,
                           expire_at: int, cid: str, network: str, location: str, context_json: str,
                           app_id: str, token_id: str, browser_hash: str, account_kind: str,
                           fields: Sequence[str | int], push_stream: str | None,
                           acks: ReplicaAcks | None) -> LedgerReply[Creation]:
    """A login flow asks for a prompt (create_challenge.lua): `fields` are the challenge hash's
    field/value pairs; `token_id` and `browser_hash` a valid remember token's, or "". With `push_stream`
    (`PushQueue.script_stream`: not on Cluster), a created challenge is queued for the push worker in the
    same call."""
    keys = [user_key] if push_stream is None else [user_key, push_stream]
    reply = await CREATE_CHALLENGE(
        redis, keys,
        [*ledger.argv(), exp, expire_at, cid, network, location, context_json, app_id, token_id,
         browser_hash, account_kind, STREAM_MAXLEN, *fields], acks=acks)
    return LedgerReply.decode(Creation, reply)


async def respond(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, jti_key: str, jti_ttl: int,
                  cid: str, device_id: str, decision: str, reason: str | None, nonce: str, number: str | None,
                  answer_ip: str, acks: ReplicaAcks | None) -> LedgerReply[Responded]:
    """Phone `device_id` answers challenge `cid` (respond.lua): the device gate (`jti_key` recorded for
    `jti_ttl` s), the nonce and number checks and the transition, in one call. `decision` "approve" |
    "deny"; `reason` the phone's deny reason; `answer_ip` "-" when unknown."""
    reply = await RESPOND(
        redis, [user_key, jti_key],
        [*ledger.argv(), cid, device_id, decision, reason or "", nonce, number or "",
         "0" if number is None else "1", answer_ip, jti_ttl], acks=acks)
    return LedgerReply.decode(Responded, reply)


async def cancel(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, cid: str, app_id: str,
                 acks: ReplicaAcks | None) -> LedgerReply[Cancelled]:
    """The login flow `app_id` gives up on challenge `cid` (cancel.lua)."""
    reply = await CANCEL(redis, [user_key], [*ledger.argv(), cid, app_id], acks=acks)
    return LedgerReply.decode(Cancelled, reply)


async def settle(redis: aioredis.Redis, user_key: str, ledger: LedgerCall) -> LedgerReply[Settled]:
    """Settle the user's expired prompts (settle.lua)."""
    return LedgerReply.decode(Settled, await SETTLE(redis, [user_key], ledger.argv()))


async def claim_due(redis: aioredis.Redis, due_key: str, *, now: int, limit: int) -> list[str]:
    """Claim (read and remove) up to `limit` challenge ids from the expiry index `due_key` whose prompts
    expired by `now` (claim_due.lua)."""
    return list(await CLAIM_DUE(redis, [due_key], [now, limit]))
