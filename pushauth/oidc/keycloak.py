"""Keycloak's CIBA HTTP authentication channel: Keycloak is the OpenID Provider (it runs CIBA for its own
clients) and hands the user's authentication to an external server over HTTP; pushauth is that server.

What Keycloak does, read from its source as of Keycloak 26.4 (github.com/keycloak/keycloak, the 26.4.x
release line; services/src/main/java/org/keycloak/protocol/oidc/grants/ciba/):

- `endpoints/BackchannelAuthenticationEndpoint.java`: a client's backchannel request is checked (its
  `binding_message` against `^[a-zA-Z0-9-._+/!?#]{1,50}$`), the user resolved, and a
  `channel/CIBAAuthenticationRequest` made: `iss` and `aud` the realm's issuer, `sub` the user's Keycloak
  id, `azp` the client, `iat` now, `exp` = `iat` + the requested (or the realm's) expiry, and a fresh
  `auth_result_id`.
- `channel/HttpAuthenticationChannelProvider.java` POSTs, to the URI configured as the provider's
  `httpAuthenticationChannelUri` (`channel/HttpAuthenticationChannelProviderFactory.java`, provider id
  `ciba-http-auth-channel`), the JSON of `channel/AuthenticationChannelRequest.java`: `login_hint` (what the
  realm's user resolver names the user by: the username), `scope`, `binding_message`, `is_consent_required`,
  `acr_values`, and (26.4; older releases sent only those) the request's other parameters as further top-level
  members; with `Authorization: Bearer <token>`, an access token the realm signs with its own key
  (`session.tokens().encode`: the realm's default signature algorithm, `kid` in the header) whose claims are
  `typ` "Bearer", `iss`, `aud` (both the realm's issuer), `jti` (= the `auth_result_id`), `azp`, `sub`, `iat`,
  `exp`. Only a 201 counts; any other status and Keycloak tells its client 503.
- `endpoints/BackchannelAuthenticationCallbackEndpoint.java` (at `<issuer>/protocol/openid-connect/ext/ciba/
  auth/callback`) takes the result: JSON `{"status": "SUCCEED" | "UNAUTHORIZED" | "CANCELLED"}`
  (`channel/AuthenticationChannelResponse.java`) with the same bearer, which it verifies (issuer, audience,
  `typ`, active); 200 when taken, 401 without a bearer, 403 `invalid_token` for a bad bearer or a request
  no longer pending, 400 for a missing status or a bearer whose `azp` is not the request's client.

`KeycloakChannel.verify` checks the bearer as Keycloak would on its own callback: signature with a pinned
algorithm against the realm's JWKS, `iss` one configured realm, `aud` the same, `typ` "Bearer", `exp` in
the future, `iat` not in it, and `jti`, `azp`, `sub` present. The result goes to the realm's callback
through the outbox (pushauth/oidc/outbox.py), as `CALLBACK_STATUS` maps the prompt's outcome, retried while
the realm is unreachable or failing (5xx, 408, 429, Retry-After honoured); any other 4xx is the realm's
final word (a 400 from 26.4's callback can also mean its own ping to a ping-mode client failed, after the
decision was recorded: final too).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from pushauth.errors import ConfigError, ServiceUnavailable, Unauthorized
from pushauth.oidc.hints import CLOCK_SKEW_S, HintRefused, KeysUnavailable, SignedHints, unverified_issuer
from pushauth.oidc.settings import KeycloakRealm, KeycloakSettings

# The phone's answer, as Keycloak's callback reads it (AuthenticationChannelResponse.Status). An expired or
# cancelled prompt is nobody's denial: CANCELLED, which Keycloak records as "not allowed" rather than
# "consent denied"; its client is told access_denied either way.
CALLBACK_STATUS: Final = {"approved": "SUCCEED", "denied": "UNAUTHORIZED", "expired": "CANCELLED",
                          "cancelled": "CANCELLED"}
MAX_TOKEN = 8192  # a realm's bearer is ~1 KiB; anything far beyond is not one
MAX_JTI = 128


class ChannelRequest(msgspec.Struct, kw_only=True):
    """AuthenticationChannelRequest's members. Others (Keycloak's additional parameters) are ignored."""

    login_hint: str
    scope: str | None = None
    is_consent_required: bool | None = None
    binding_message: str | None = None
    acr_values: str | None = None


@dataclass(frozen=True)
class Bearer:
    """A verified realm bearer: the request it stands for. `token` is sent back on the callback, never
    logged (repr leaves it out)."""

    realm: KeycloakRealm
    jti: str
    client_id: str  # azp: the realm's client that asked
    exp: int
    token: str = field(repr=False)


def _keys_from_file(path: str) -> KeySet:
    try:
        return KeySet.import_key_set(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, JoseError) as exc:
        raise ConfigError(f"oidc.keycloak jwks_file {path!r}: {type(exc).__name__}: {exc}") from None


class KeycloakChannel:
    """Owns the configured realms and their keys (fetched and cached, or read from a file at start)."""

    def __init__(self, settings: KeycloakSettings) -> None:
        self._realms = {realm.issuer: realm for realm in settings.realms}
        self._keys = {realm.issuer: SignedHints(
            realm.keys_url, realm.algorithms, _keys_from_file(realm.jwks_file) if realm.jwks_file else None)
            for realm in settings.realms}

    async def verify(self, authorization: str | None) -> Bearer:
        """The realm's bearer on a channel request; raises Unauthorized (401) naming what failed."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            raise _refused("a realm's bearer token is required")
        # The realm is chosen by the unverified iss, then everything is checked with that realm's keys.
        issuer = unverified_issuer(token)
        realm = self._realms.get(issuer or "")
        if realm is None:
            raise _refused("the bearer is not from a configured realm")
        try:
            claims = await self._keys[realm.issuer].claims(token)
        except KeysUnavailable as exc:
            # The realm's JWKS is unreachable (Keycloak restarting): a 503 Keycloak passes on to its client
            # as one, and not an authentication failure that would end in blocking Keycloak's address.
            raise ServiceUnavailable(f"the realm's keys are unavailable ({exc.reason})",
                                     code="realm_keys_unavailable") from None
        except HintRefused as exc:
            raise _refused(f"the bearer was refused ({exc.reason})") from None
        return _check_claims(realm, claims, token)


def _check_claims(realm: KeycloakRealm, claims: dict[str, Any], token: str) -> Bearer:
    if claims.get("iss") != realm.issuer:
        raise _refused("issuer")
    aud = claims.get("aud")  # Keycloak addresses the bearer to the realm itself
    if not (aud == realm.issuer or (isinstance(aud, list) and realm.issuer in aud)):
        raise _refused("audience")
    if claims.get("typ") != "Bearer":
        raise _refused("token type")
    now = time.time()
    exp, iat = claims.get("exp"), claims.get("iat")
    if type(exp) is not int or exp <= now:  # no skew: Keycloak's own check on the callback has none
        raise _refused("expired")
    if iat is not None and (type(iat) is not int or iat > now + CLOCK_SKEW_S):
        raise _refused("issued in the future")
    jti, azp, sub = claims.get("jti"), claims.get("azp"), claims.get("sub")
    if not (isinstance(jti, str) and 0 < len(jti) <= MAX_JTI):
        raise _refused("jti")
    if not (isinstance(azp, str) and azp and isinstance(sub, str) and sub):
        raise _refused("azp and sub are required")
    return Bearer(realm=realm, jti=jti, client_id=azp, exp=exp, token=token)


def _refused(why: str) -> Unauthorized:
    return Unauthorized(f"bearer refused: {why}", code="invalid_token",
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


__all__ = ["CALLBACK_STATUS", "Bearer", "ChannelRequest", "KeycloakChannel"]
