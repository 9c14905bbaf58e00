"""The devices package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the reply
decoded. Nothing else runs them.

REGISTER_DEVICE and REVOKE_BY_DEVICE include the ledger (`pushauth.detection.ledger`): KEYS[1] is the user
hash and ARGV[1..6] the `LedgerCall`; the reply is a `LedgerReply` whose `detail` each result enum
documents. `device_lib.lua` (activating a phone) is included by REGISTER_DEVICE here and by RESPOND in
`pushauth.challenges.scripts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from pushauth.detection.ledger import LedgerCall, LedgerReply
from pushauth.store.durability import ReplicaAcks
from pushauth.store.scripts import Script

DEVICE_GATE = Script.load("pushauth.devices", "device_gate.lua")
REGISTER_DEVICE = Script.load("pushauth.devices", "register_device.lua")
REVOKE_DEVICE = Script.load("pushauth.devices", "revoke_device.lua")
REVOKE_BY_DEVICE = Script.load("pushauth.devices", "revoke_by_device.lua")
ENROLL_MODE = Script.load("pushauth.devices", "enroll_mode.lua")
UPDATE_PUSH_TOKEN = Script.load("pushauth.devices", "update_push_token.lua")
PAUSE_PROMPTS = Script.load("pushauth.devices", "pause_prompts.lua")


class Gated(StrEnum):
    """device_gate.lua's result."""

    OK = "ok"
    REPLAY = "replay"  # the jti was seen before
    REVOKED = "revoked"  # the device is not active (nor allowed in this mode)
    PENDING = "pending"  # the device waits for approval, and this mode is not for it


@dataclass(frozen=True, slots=True)
class GateReply:
    result: Gated
    # with OK: the target's HGETALL as a flat field/value list, or for mode "pending" the pending ids
    data: list[Any]


class Registration(StrEnum):
    """register_device.lua's result."""

    ACTIVE = "active"  # detail: [the comma-joined phones to push a `device_added` notice to]
    PENDING = "pending"  # detail: [the comma-joined phones asked to approve it]
    LOCKED = "locked"
    SUSPENDED = "suspended"
    RATE_LIMITED = "rate_limited"  # detail: [retry_after_s]


class Revocation(StrEnum):
    """revoke_device.lua's result."""

    OK = "ok"
    NOT_FOUND = "not_found"  # not an active or pending device


class RevocationByDevice(StrEnum):
    """revoke_by_device.lua's result."""

    OK = "ok"
    REVOKED = "revoked"  # the revoking phone itself is no longer active
    NOT_FOUND = "not_found"  # the target is not an active device
    COOLDOWN = "cooldown"  # detail: [until, Unix seconds]


class EnrollMode(StrEnum):
    """enroll_mode.lua's answer: how an application's enrollment for a user goes."""

    FIRST = "first"  # the user's first phone
    ACCESS_CODE = "access_code"  # a further phone, vouched for by an access code's grant (now spent)
    APPROVAL = "approval"  # a further phone an existing one must approve


class TokenUpdate(StrEnum):
    """update_push_token.lua's result."""

    OK = "ok"
    NOT_FOUND = "not_found"  # the device is not active


async def device_gate(redis: aioredis.Redis, *, jti_key: str, device_key: str, target: str, jti_ttl: int,
                      mode: str, now: int, device_id: str, challenge_prefix: str) -> GateReply:
    """Record a device request's jti and check the device, then read `target` as `mode` says
    (device_gate.lua)."""
    reply = await DEVICE_GATE(redis, [jti_key, device_key, target],
                              [jti_ttl, mode, now, device_id, challenge_prefix])
    return GateReply(Gated(reply[0]), list(reply[1]) if len(reply) > 1 else [])


async def register_device(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, device_id: str,
                          vouch: str, approval_cid: str, approval_exp: int, approval_expire_at: int,
                          number: str, nonce: str, app_id: str, context_json: str, phone_context_json: str,
                          fields: Sequence[Any], acks: ReplicaAcks | None) -> LedgerReply[Registration]:
    """Register a new device (register_device.lua): active at once, or pending with its approval challenge
    `approval_cid`. `fields` are the device hash's field/value pairs."""
    reply = await REGISTER_DEVICE(
        redis, [user_key],
        [*ledger.argv(), device_id, vouch, approval_cid, approval_exp, approval_expire_at, number, nonce,
         app_id, context_json, phone_context_json, *fields], acks=acks)
    return LedgerReply.decode(Registration, reply)


async def revoke_device(redis: aioredis.Redis, *, devices_key: str, device_key: str, pending_key: str,
                        new_devices_key: str, device_id: str, now: int, by: str, challenge_prefix: str,
                        acks: ReplicaAcks | None) -> Revocation:
    """Revoke an active device, or one waiting for approval (revoke_device.lua)."""
    reply = await REVOKE_DEVICE(redis, [devices_key, device_key, pending_key, new_devices_key],
                                [device_id, now, by, challenge_prefix], acks=acks)
    return Revocation(reply[0])


async def revoke_by_device(redis: aioredis.Redis, user_key: str, ledger: LedgerCall, *, by: str, target: str,
                           cooldown_s: int, acks: ReplicaAcks | None) -> LedgerReply[RevocationByDevice]:
    """Phone `by` revokes the user's phone `target` (revoke_by_device.lua)."""
    reply = await REVOKE_BY_DEVICE(redis, [user_key], [*ledger.argv(), by, target, cooldown_s], acks=acks)
    return LedgerReply.decode(RevocationByDevice, reply)


async def enroll_mode(redis: aioredis.Redis, *, user_key: str, devices_key: str, now: int) -> EnrollMode:
    """How an application's enrollment goes for a user who has a uid (enroll_mode.lua); spends an access
    code's grant."""
    return EnrollMode(await ENROLL_MODE(redis, [user_key, devices_key], [now]))


async def update_push_token(redis: aioredis.Redis, device_key: str, *, provider: str, token: str, now: int,
                            acks: ReplicaAcks | None) -> TokenUpdate:
    """Replace an active device's push token (update_push_token.lua)."""
    reply = await UPDATE_PUSH_TOKEN(redis, [device_key], [provider, token, now], acks=acks)
    return TokenUpdate(reply[0])


async def pause_prompts(redis: aioredis.Redis, user_key: str, *, until: int, device_id: str, now: int,
                        acks: ReplicaAcks | None) -> None:
    """Pause the user's prompts until `until`, or resume them (`until` = 0) (pause_prompts.lua)."""
    await PAUSE_PROMPTS(redis, [user_key], [until, device_id, now], acks=acks)
