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

`EntraHints.verify` checks the hint: signature against Entra's keys (pushauth/oidc/hints.py), RS256 only,
iss = `<authority>/<tid>/v2.0` with `tid` one of the configured tenants, aud = client_id, issued (iat) at
most `hint_grace_s` ago.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from joserfc import jwt

from pushauth.oidc.hints import HintRefused, SignedHints
from pushauth.oidc.rsa import RsaSigningKey
from pushauth.oidc.settings import EntraSettings

log = structlog.get_logger(__name__)

ACR = "possessionorinherence"
# RFC 8176 "pop": proof of possession of a key, hardware or software not said (the phone's key storage is not
# attested). One value, as the contract asks.
AMR = "pop"


@dataclass(frozen=True)
class Hint:
    sub: str
    user: str  # preferred_username (the UPN): the pushauth user name, before canonicalisation
    tenant: str


class EntraHints:
    def __init__(self, settings: EntraSettings) -> None:
        self._settings = settings
        self._signed = SignedHints(settings.jwks_url, ["RS256"])  # Entra signs RS256 only

    async def verify(self, token: str) -> Hint:
        claims = await self._signed.claims(token)
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


__all__ = ["ACR", "AMR", "EntraHints", "Hint", "HintRefused", "id_token"]
