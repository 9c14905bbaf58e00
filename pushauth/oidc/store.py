"""What the provider keeps in Redis between a browser's requests, so that any server instance can serve the
next one: the sign-in in progress, authorization codes (single use) and access tokens (for userinfo).

    oidc:signin:<id>        the relying party's validated request, the hash of the browser's cookie it is
                            bound to, the CSRF token of its form, and once the password is in, the prompt
    oidc:code:<sha256>      what the code gets at the token endpoint (JSON); once exchanged, `x:` and the
                            key of the access token that exchange issues, for USED_CODE_MEMORY_S
    oidc:at:<sha256>        an access token's user and client (JSON), or `revoked`

A code is used twice (RFC 6749 4.1.2: "the authorization server MUST deny the request and SHOULD revoke
... all tokens previously issued based on that authorization code") whenever its exchanges overlap, not only
after the first has answered, so no step leaves a gap between them:

    take     SET code "x:<at key>" XX GET: the grant and the mark "used, and what it gives" in one command;
             the one exchange that reads the grant goes on, every other reads the mark
    replay   the mark's access token key is set to `revoked`, whether the token is there yet or not
    issue    SET <at key> <grant> NX: refused if a replay got there first; otherwise a later replay
             overwrites it
"""

from __future__ import annotations

import secrets
import time

import msgspec
import redis.asyncio as aioredis

from pushauth.store import KeySpace

# A replayed code is caught for this long after its exchange (codes live a minute at most).
USED_CODE_MEMORY_S = 600
_USED = "x:"  # an exchanged code's value: this, then its access token's key
REVOKED = "revoked"  # an access token's value once its code was replayed


class SignIn(msgspec.Struct, kw_only=True):
    """A sign-in in progress (the authorization request, validated)."""

    id: str
    client_id: str
    redirect_uri: str
    state: str | None = None
    nonce: str | None = None
    code_challenge: str | None = None
    scope: str = "openid"
    login_hint: str = ""
    browser: str  # sha256 of the browser's cookie value
    csrf: str
    # prompt, max_age and acr_values, read (provider.remembered_max_age): how old the phone's approval behind
    # a remembered browser may be for it to stand for the phone; 0: never, None: as the policy allows
    remembered_max_age: int | None = None
    # set once the first factor passed
    user: str = ""
    challenge_id: str = ""
    number: str = ""
    amr: list[str] = []
    acr: str = ""
    auth_time: int = 0  # when the user was last actively authenticated (OpenID Connect Core 2)
    # a user with codes but no phone (pushauth/web/oidc_codes.py): past the first factor and asked for a
    # code; `user` stays empty until a valid one, so /oidc/wait cannot issue anything before it
    code_user: str = ""
    # Entra's external-method profile: the hint's sub (the answer's sub), and the answer form-posted
    eam_sub: str = ""


class Grant(msgspec.Struct, kw_only=True):
    """What an authorization code (and then its access token) stands for."""

    client_id: str
    redirect_uri: str
    user: str
    nonce: str | None = None
    code_challenge: str | None = None
    scope: str = "openid"
    auth_time: int
    amr: list[str]
    acr: str


class Backchannel(msgspec.Struct, kw_only=True):
    """A CIBA authentication request (OpenID CIBA Core 1.0): the client waits for the phone out of band."""

    client_id: str
    user: str
    challenge_id: str
    scope: str = "openid"
    expires_at: int
    interval_s: int
    last_poll: float = 0.0
    notification_token: str = ""  # ping mode: the bearer the client's notification endpoint expects


_signin_decode = msgspec.json.Decoder(SignIn).decode
_backchannel_decode = msgspec.json.Decoder(Backchannel).decode
_grant_decode = msgspec.json.Decoder(Grant).decode
_encode = msgspec.json.Encoder().encode


class Replayed:
    """`take_code`'s answer for a code already exchanged."""


REPLAYED = Replayed()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class OidcStore:
    def __init__(self, redis: aioredis.Redis, keyspace: KeySpace) -> None:
        self._redis = redis
        self._ks = keyspace

    async def put_signin(self, signin: SignIn, ttl_s: int) -> None:
        await self._redis.set(self._ks.oidc_signin(signin.id), _encode(signin), ex=ttl_s)

    async def update_signin(self, signin: SignIn) -> None:
        # KEEPTTL: the browser's time to sign in runs from the relying party's redirect, not from each step.
        await self._redis.set(self._ks.oidc_signin(signin.id), _encode(signin), keepttl=True, xx=True)

    async def signin(self, signin_id: str) -> SignIn | None:
        if not (16 <= len(signin_id) <= 64):
            return None
        raw = await self._redis.get(self._ks.oidc_signin(signin_id))
        return None if raw is None else _signin_decode(raw)

    async def end_signin(self, signin_id: str) -> bool:
        """True for the one caller that ended it (the code is issued once)."""
        return bool(await self._redis.delete(self._ks.oidc_signin(signin_id)))

    async def issue_code(self, grant: Grant, ttl_s: int) -> str:
        code = new_secret()
        await self._redis.set(self._ks.oidc_code(code), _encode(grant), ex=ttl_s)
        return code

    async def take_code(self, code: str, access_token: str) -> Grant | Replayed | None:
        """The grant of a code not yet exchanged, which is marked used in the same command, and as what
        gives `access_token`. A code already exchanged: what it gave is revoked (Replayed). None for an
        unknown or expired code."""
        if not code or len(code) > 128:
            return None
        mark = _USED + self._ks.oidc_access_token(access_token)
        old = await self._redis.set(self._ks.oidc_code(code), mark, xx=True, get=True, ex=USED_CODE_MEMORY_S)
        if not isinstance(old, str):  # None: no such code (XX: nothing was written)
            return None
        if old.startswith(_USED):
            # Its token may not be issued yet (the first exchange is still checking the verifier): revoked
            # in advance, and `issue_code_token` then refuses to write it.
            await self._redis.set(old[len(_USED):], REVOKED, ex=USED_CODE_MEMORY_S)
            return REPLAYED
        return _grant_decode(old)

    async def issue_code_token(self, access_token: str, grant: Grant, ttl_s: int) -> bool:
        """Store the token `take_code` named. False if the code was replayed meanwhile: no token."""
        return bool(await self._redis.set(self._ks.oidc_access_token(access_token), _encode(grant), ex=ttl_s,
                                          nx=True))

    async def issue_access_token(self, grant: Grant, ttl_s: int) -> str:
        """A new access token for a grant that no code stands for (CIBA)."""
        token = new_secret()
        await self._redis.set(self._ks.oidc_access_token(token), _encode(grant), ex=ttl_s)
        return token

    async def access_token(self, token: str) -> Grant | None:
        if not token or len(token) > 128:
            return None
        raw = await self._redis.get(self._ks.oidc_access_token(token))
        return None if raw is None or raw == REVOKED else _grant_decode(raw)

    async def put_backchannel(self, auth_req_id: str, request: Backchannel) -> None:
        # A minute past the prompt's expiry: a poll after it is told expired_token, not an unknown id.
        ttl = max(1, request.expires_at - int(time.time())) + 60
        await self._redis.set(self._ks.oidc_ciba(auth_req_id), _encode(request), ex=ttl)

    async def backchannel(self, auth_req_id: str) -> Backchannel | None:
        if not auth_req_id or len(auth_req_id) > 128:
            return None
        raw = await self._redis.get(self._ks.oidc_ciba(auth_req_id))
        return None if raw is None else _backchannel_decode(raw)

    async def polled(self, auth_req_id: str, request: Backchannel) -> None:
        await self._redis.set(self._ks.oidc_ciba(auth_req_id), _encode(request), keepttl=True, xx=True)

    async def end_backchannel(self, auth_req_id: str) -> bool:
        return bool(await self._redis.delete(self._ks.oidc_ciba(auth_req_id)))

