"""The State of an Access-Challenge: an unguessable, single-use reference to the prompt it shows.

In challenge mode the first Access-Request gets an Access-Challenge ("Enter 42 in the app") whose State
(RFC 2865 5.24) the client sends back with the user's follow-up. Behind a UDP load balancer the follow-up
may reach another `pushauth radius` process, so what the State refers to lives in Redis, not in the process:
`KeySpace.radius_state` holds the prompt's id, the user and the client, until the prompt expires. Taking it
deletes it (GETDEL): a State answers one follow-up, once; a replayed or guessed one finds nothing.

The State itself is 16 random bytes (128 bits); only its SHA-256 names the key, so a copy of Redis cannot be
used to answer a challenge in flight.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from pushauth.store import KeySpace

STATE_BYTES = 16


@dataclass(frozen=True, slots=True)
class ChallengeRef:
    """What a State refers to."""

    challenge_id: str
    user: str
    client: str
    expires_at: int


class _Stored(msgspec.Struct, frozen=True):
    c: str  # challenge id
    u: str  # canonical user name
    n: str  # RADIUS client name
    x: int  # the prompt's expiry (Unix seconds)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Stored).decode


class ChallengeStates:
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace) -> None:
        self._redis = redis
        self._ks = keyspace

    async def issue(self, ref: ChallengeRef) -> bytes:
        """A new State for `ref`, kept until the prompt expires."""
        state = secrets.token_bytes(STATE_BYTES)
        value = _encode(_Stored(ref.challenge_id, ref.user, ref.client, ref.expires_at))
        await self._redis.set(self._ks.radius_state(state), value, exat=ref.expires_at)
        return state

    async def take(self, state: bytes) -> ChallengeRef | None:
        """What `state` refers to, or None (unknown, used, expired, or not ours); it cannot be taken again."""
        if len(state) != STATE_BYTES:
            return None
        raw = await self._redis.getdel(self._ks.radius_state(state))
        if raw is None:
            return None
        try:
            stored = _decode(raw)
        except msgspec.DecodeError:
            return None
        return ChallengeRef(stored.c, stored.u, stored.n, stored.x)
