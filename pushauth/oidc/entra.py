"""Microsoft Entra ID's external authentication method (EAM) profile of the provider.

Microsoft's contract ("Microsoft Entra multifactor authentication external method provider reference"):
Entra has checked the user's first factor and needs a second. It sends the browser to our authorization
endpoint with an OpenID request of its own shape:

    response_type=id_token, response_mode=form_post, scope=openid, client_id (the app registration that
    stands for pushauth), redirect_uri = Entra's fixed https://login.microsoftonline.com/common/federation/
    externalauthprovider, nonce, state, id_token_hint (a token Entra signed, naming the user: iss
    https://login.microsoftonline.com/<tenant>/v2.0, aud = client_id, sub, oid, tid,
    preferred_username; expired or about to expire), claims (acr "possessionorinherence", and the amr
    values Entra understands)

and expects, form-posted to that redirect URI, `id_token` and `state`: an ID token we signed (RS256; our
keys from our discovery) with iss = us, aud = client_id, sub = the hint's sub, the nonce, exactly one acr
("possessionorinherence") and exactly one amr value. Between the two, pushauth prompts the user's phone
with number matching, exactly as for any sign-in.

`EntraHints.verify` checks the hint: signature against Entra's keys (fetched from `jwks_url`, refreshed
when a kid is unknown, at most once a minute), RS256 only, iss = `<authority>/<tid>/v2.0` with `tid` one of
the configured tenants, aud = client_id, issued (iat) at most `hint_grace_s` ago.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from pushauth.oidc.rsa import RsaSigningKey
from pushauth.oidc.settings import EntraSettings

log = structlog.get_logger(__name__)

ACR = "possessionorinherence"
# RFC 8176 "pop": proof of possession of a key, hardware or software not said (the phone's key storage is not
# attested). One value, as the contract asks.
AMR = "pop"
JWKS_REFRESH_S = 60.0
JWKS_TIMEOUT_S = 5.0


class HintRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Hint:
    sub: str
    user: str  # preferred_username (the UPN): the pushauth user name, before canonicalisation
    tenant: str


class EntraHints:
    def __init__(self, settings: EntraSettings) -> None:
        self._settings = settings
        self._keys: KeySet | None = None
        self._fetched_at = -JWKS_REFRESH_S

    async def _key_set(self, *, refresh: bool) -> KeySet:
        now = time.monotonic()
        if self._keys is None or (refresh and now - self._fetched_at >= JWKS_REFRESH_S):
            timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as http, \
                    http.get(self._settings.jwks_url) as resp:
                if resp.status != 200:
                    raise HintRefused(f"Entra's keys could not be fetched ({resp.status})")
                self._keys = KeySet.import_key_set(await resp.json())
                self._fetched_at = now
        return self._keys

    async def verify(self, token: str) -> Hint:
        try:
            header = jws.extract_compact(token.encode()).protected  # unverified: only to find the key
        except (JoseError, ValueError):
            raise HintRefused("not a JWT") from None
        if header.get("alg") != "RS256":
            raise HintRefused("not RS256")
        kid = header.get("kid")
        keys = await self._key_set(refresh=False)
        if not any(k.kid == kid for k in keys.keys):
            keys = await self._key_set(refresh=True)
        try:
            claims: dict[str, Any] = jwt.decode(token, keys, algorithms=["RS256"]).claims
        except (JoseError, ValueError) as exc:
            raise HintRefused(f"signature: {type(exc).__name__}") from None
        s = self._settings
        tid = claims.get("tid")
        if not isinstance(tid, str) or tid not in s.tenants:
            raise HintRefused("a tenant this provider does not serve")
        if claims.get("iss") != f"{s.authority}/{tid}/v2.0":
            raise HintRefused("issuer is not the tenant's")
        if claims.get("aud") != s.client_id:
            raise HintRefused("audience is not this provider's app registration")
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise HintRefused("exp and iat are required")
        # Entra issues the hint already expired (its example: exp one second before iat), so its age is read
        # from iat: issued at most hint_grace_s ago, and not in the future (60 s of clock skew).
        if iat > now + 60 or now - iat > s.hint_grace_s:
            raise HintRefused("expired")
        sub, user = claims.get("sub"), claims.get("preferred_username")
        if not isinstance(sub, str) or not sub or not isinstance(user, str) or not user:
            raise HintRefused("sub and preferred_username are required")
        return Hint(sub, user, tid)


def id_token(key: RsaSigningKey, *, issuer: str, client_id: str, sub: str, nonce: str, auth_time: int,
             ttl_s: int) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": client_id, "sub": sub, "nonce": nonce, "iat": now, "exp": now + ttl_s,
              "auth_time": auth_time, "acr": ACR, "amr": [AMR]}
    return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": key.kid}, claims, key.key, algorithms=["RS256"])
