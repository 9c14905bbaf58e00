"""Retransmits across instances: one claim per request in Redis, and its reply kept, sealed, for the copies.

Several `pushauth radius` processes behind a UDP load balancer share Redis, and a client's retransmit of a
request may reach another process than the one answering it. Before any work (the password check, taking a
State, a prompt) the process a request reaches claims it, under the digest of what makes two packets the
same request (the client, source address and port, Identifier, Request Authenticator):

    <prefix>:radius:rx:<sha256(request)>
        SET NX PX  (the client's deadline + reply_cache_s)     "p"                 claimed: being answered
        SET XX PX  reply_cache_s                               "r1.<sealed reply>" answered

A process whose claim fails reads the key: pending, it drops its copy (the client resends, and the
claimant answers the original); answered, it sends the reply, whose bytes answer that very request (same
Identifier, the Response Authenticator over the same Request Authenticator), so the client takes it
whichever copy it sent. Redis down: nothing is claimed, nothing is done (fail closed; the caller drops).

The reply is sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the client's shared secret, with the
key's name as associated data. An Access-Challenge carries the raw State, which a copy of Redis must not
yield (pushauth/radius/states.py); and a sealed reply copied to another request's key does not open.

Each process keeps its own claims and replies in memory too (pushauth/radius/server.py): a copy that
reaches the process holding the request attaches to it without a Redis call.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pushauth.errors import PushAuthError
from pushauth.store import KeySpace
from pushauth.store.reads import get

PENDING = "p"
_SEALED = "r1."
_INFO = b"pushauth-radius-reply-cache:v1"
_NONCE_BYTES = 12

# Source address, source port, Identifier, Request Authenticator: one request of one client.
Key = tuple[str, int, int, bytes]


class ReplyUnreadable(PushAuthError):
    """A stored reply that does not open: tampered, moved to another request, or sealed under another
    secret (the client's secret file differs between instances)."""


class ReplySeal:
    """Seals and opens the replies of one client, under a key derived from its shared secret."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, reply: bytes, name: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, reply, name.encode())
        return _SEALED + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def open(self, stored: str, name: str) -> bytes:
        if not stored.startswith(_SEALED):
            raise ReplyUnreadable("not a sealed reply")
        blob = stored[len(_SEALED):]
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], name.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise ReplyUnreadable("a sealed reply does not open") from None

    def __repr__(self) -> str:  # never the key
        return "ReplySeal()"


@dataclass(frozen=True, slots=True)
class Ours:
    """This process holds the claim: it answers the request."""


@dataclass(frozen=True, slots=True)
class Pending:
    """Another process holds the claim and has not answered yet."""


@dataclass(frozen=True, slots=True, repr=False)
class Answered:
    """Another process answered: its reply, as sent."""

    reply: bytes


Claim = Ours | Pending | Answered


class Retransmits:
    """The `radius:rx` keys: which process answers a request, and the reply for the copies that reach the
    others. Redis errors propagate (the caller drops the packet: fail closed)."""

    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace, secrets_by_client: Mapping[str, bytes],
                 reply_cache_s: int) -> None:
        self._redis = redis
        self._ks = keyspace
        self._seals = {name: ReplySeal(secret) for name, secret in secrets_by_client.items()}
        self._reply_cache_ms = reply_cache_s * 1000

    def __repr__(self) -> str:
        return f"Retransmits(clients={sorted(self._seals)})"

    async def claim(self, client: str, key: Key, hold_s: float) -> Claim:
        """Claim the request for `hold_s` (its answer must be stored by then), or say who has it. Raises
        ReplyUnreadable for a stored reply that does not open."""
        name = self._ks.radius_request(client, *key)
        if await self._redis.set(name, PENDING, nx=True, px=max(1, round(hold_s * 1000))):
            return Ours()
        stored = await get(self._redis, name)
        if stored is None or stored == PENDING:  # (None: the claim expired in between; the client resends)
            return Pending()
        return Answered(self._seals[client].open(stored, name))

    async def answered(self, client: str, key: Key, reply: bytes) -> bool:
        """Keep `reply` for the copies that reach other processes, for reply_cache_s. False when the claim
        is gone (it outlived its hold): nothing is stored, and a late copy starts afresh."""
        name = self._ks.radius_request(client, *key)
        stored = self._seals[client].seal(reply, name)
        return bool(await self._redis.set(name, stored, xx=True, px=self._reply_cache_ms))
