"""ID tokens another issuer signed, presented to the provider as `id_token_hint`: by Microsoft Entra ID in
its external-method profile (pushauth/oidc/entra.py), and by an upstream identity provider that checked
the password and asks pushauth for the phone (`first_factor = "none"`).

`SignedHints` checks the signature against the issuer's JWKS (fetched, cached, refreshed when a `kid` is
unknown, at most once a minute, so a flood of made-up kids cannot make us fetch in a loop) with a pinned
list of algorithms; `check_upstream` then the claims an upstream's hint must carry.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

JWKS_REFRESH_S = 60.0
JWKS_TIMEOUT_S = 5.0
CLOCK_SKEW_S = 60


class HintRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(HintRefused):
    """The issuer's keys could not be fetched: nothing was judged, so not the sender's failure."""


class SignedHints:
    """`keys`: a fixed key set (a JWKS file) instead of fetching `jwks_url`."""

    def __init__(self, jwks_url: str, algorithms: Sequence[str], keys: KeySet | None = None) -> None:
        self._jwks_url = jwks_url
        self._algorithms = list(algorithms)
        self._keys: KeySet | None = keys
        self._fixed = keys is not None
        self._fetched_at = -JWKS_REFRESH_S

    async def _key_set(self, *, refresh: bool) -> KeySet:
        now = time.monotonic()
        if self._fixed and self._keys is not None:
            return self._keys
        if self._keys is None or (refresh and now - self._fetched_at >= JWKS_REFRESH_S):
            timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as http, http.get(self._jwks_url) as resp:
                    if resp.status != 200:
                        raise KeysUnavailable(f"the issuer's keys could not be fetched ({resp.status})")
                    self._keys = KeySet.import_key_set(await resp.json())
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                why = type(exc).__name__
                raise KeysUnavailable(f"the issuer's keys could not be fetched ({why})") from None
            self._fetched_at = now
        return self._keys

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a hint whose signature verifies; raises HintRefused."""
        try:
            header = jws.extract_compact(token.encode()).protected  # unverified: only to find the key
        except (JoseError, ValueError):
            raise HintRefused("not a JWT") from None
        if header.get("alg") not in self._algorithms:
            raise HintRefused(f"alg {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        keys = await self._key_set(refresh=False)
        if not any(k.kid == kid for k in keys.keys):
            keys = await self._key_set(refresh=True)
        try:
            return dict(jwt.decode(token, keys, algorithms=self._algorithms).claims)
        except (JoseError, ValueError) as exc:
            raise HintRefused(f"signature: {type(exc).__name__}") from None


def unverified_issuer(token: str) -> str | None:
    """The `iss` a compact JWS claims, unverified: only to choose whose keys verify it."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16384:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def check_upstream(claims: dict[str, Any], *, issuer: str, audience: str, user_claim: str,
                   max_age_s: int) -> str:
    """An upstream identity provider's ID token for this user, recent: its user name (the `user_claim`)."""
    if claims.get("iss") != issuer:
        raise HintRefused("issuer is not the configured upstream")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise HintRefused("audience is not pushauth")
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int):
        raise HintRefused("exp and iat are required")
    if iat > now + CLOCK_SKEW_S or now - iat > max_age_s or exp + CLOCK_SKEW_S < now:
        raise HintRefused("expired")
    user = claims.get(user_claim)
    if not isinstance(user, str) or not user:
        raise HintRefused(f"no {user_claim}")
    return user
