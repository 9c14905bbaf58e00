"""The push package's Lua scripts (`lua/`), each behind one typed wrapper: ARGV built by name, the reply
decoded. Nothing else runs them; `pushauth.push.dispatch.PushDelivery` uses them.

The push worker sends these scripts only inside pipelines (one read per challenge of a batch; writes the
stream consumer stores before it acks), so each wrapper is a `*_command` function giving the call as one
pipeline command (`Script.command`: EVAL, which a pipeline can carry through a NOSCRIPT), and READ_TARGETS
has `decode_targets` for the reply the pipeline hands back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pushauth.store.scripts import ArgT, Script

SET_DELIVERY = Script.load("pushauth.push", "set_delivery.lua")
MARK_STALE = Script.load("pushauth.push", "mark_stale.lua")
READ_TARGETS = Script.load("pushauth.push", "read_targets.lua")

Command = tuple[ArgT, ...]
_PER_DEVICE = 6  # what READ_TARGETS answers per device


# -- set_delivery: a device's delivery state on its challenge ------------------------------------------------

def _delivery_args(device_id: str, state: str, reason: str) -> list[ArgT]:
    return [f"pd:{device_id}", f"{state}:{reason}" if reason else state]


def set_delivery_command(challenge_key: str, *, device_id: str, state: str, reason: str = "") -> Command:
    """set_delivery.lua as a pipeline command: record `state` (with `reason`, if any) for `device_id`."""
    return SET_DELIVERY.command([challenge_key], _delivery_args(device_id, state, reason))


# -- mark_stale: a push token the provider refused ----------------------------------------------------------

def mark_stale_command(device_key: str, *, token: str, now: int) -> Command:
    """mark_stale.lua as a pipeline command: mark the device's `token` stale unless it has another now."""
    return MARK_STALE.command([device_key], [token, now])


# -- read_targets: what a push needs about one challenge --------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """One device a challenge targets, as READ_TARGETS read it (None: the field is missing)."""

    device_id: str
    delivery: str | None  # the challenge's `pd:<device id>`: its delivery state so far
    status: str | None  # the device's `st`
    token: str | None  # `ptok`
    stale: str | None  # `ptok_stale` ('1': stale)
    provider: str | None  # `pprov`


@dataclass(frozen=True, slots=True)
class Targets:
    expires_at: int  # the challenge's expiry, Unix seconds
    devices: list[Target]


def read_targets_command(challenge_key: str, *, device_prefix: str, now: float, device_id: str) -> Command:
    """read_targets.lua as a pipeline command: the challenge (if still pending) and `device_id`, or every
    device it targets when `device_id` is ''. `device_prefix` is the user's "<prefix>:{<uid>}:dev:"."""
    return READ_TARGETS.command([challenge_key], [device_prefix, now, device_id])


def decode_targets(reply: list[Any]) -> Targets | None:
    """READ_TARGETS' reply: None when the challenge is gone, decided or expired."""
    if not reply:
        return None
    devices = [Target(*reply[i:i + _PER_DEVICE]) for i in range(1, len(reply), _PER_DEVICE)]
    return Targets(int(reply[0]), devices)
