"""The OpenID Connect protocol: the authorization code flow with PKCE (OpenID Connect Core 1.0, RFC 6749,
RFC 7636), independent of the web framework. pushauth/web/oidc.py calls it from its routes.

    authorize   `check_authorization(params)`: the client, the exact redirect URI, then everything else;
                until the redirect URI is known to be the client's, an error is shown, never redirected
                (no open redirector, RFC 6749 4.1.2.1); after, it goes back to the client as `error=`;
                prompt, max_age and acr_values become how old a remembered browser's approval may be
                (`remembered_max_age`)
    token       `exchange(form, authorization)`: client authentication (client_secret_basic,
                client_secret_post, or none for a public client), the code (single use; a replay revokes
                the token it gave, even while that exchange is under way: store.py), redirect_uri equal to
                the authorization's, the PKCE verifier (S256)
    ID token    ES256 with the server's current key (the keys at /.well-known/jwks.json), or RS256 with the
                provider's RSA key for a client that asks (`id_token_alg`): iss, sub, aud, exp, iat,
                auth_time, nonce, acr, amr (RFC 8176)

Hand-written rather than Authlib: Authlib's server side is built around Flask/Django/Starlette request
objects, and the part that matters here (the checks below) is short; tests/test_oidc.py drives each
negative case the specifications list, and openid-client (certified RP) and Apache mod_auth_openidc
validate what it issues independently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from joserfc import jwt
from joserfc.errors import JoseError

from pushauth.crypto import jws
from pushauth.crypto.keys import KeyRing
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.oidc.hints import CLOCK_SKEW_S, HintRefused
from pushauth.oidc.rsa import RsaSigningKey
from pushauth.oidc.settings import ACR_MFA, OidcClient, OidcSettings
from pushauth.oidc.store import REPLAYED, Grant, OidcStore, SignIn, new_secret

# RFC 7636 4.1: 43-128 characters of [A-Z a-z 0-9 - . _ ~]; a challenge (S256) is 43 of base64url.
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_MAX_AGE = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
MAX_PARAM = 512  # state, nonce, login_hint, acr_values, max_age: generous, bounded
# A CIBA client's id_token_hint: one of our ID tokens issued to it at most this long ago (a service desk's
# app holds on to the caller's last sign-in for a working day).
ID_TOKEN_HINT_MAX_AGE_S = 86400


class ShownError(Exception):
    """An authorization request that cannot go back to its client (unknown client, unregistered redirect
    URI): the browser is shown this, never redirected."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedirectError(Exception):
    """An authorization error for the client, sent to its (verified) redirect URI."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error, self.description = error, description
        self.redirect_uri, self.state = redirect_uri, state


class TokenError(Exception):
    """RFC 6749 5.2: the token endpoint's error (400, or 401 for a client that failed to authenticate)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass(frozen=True)
class Authorization:
    client: OidcClient
    signin: SignIn
    prompt: str


def _rsa(client: OidcClient) -> bool:
    return client.id_token_alg == "RS256"  # noqa: S105 (an algorithm's name)


def jwt_header_alg(token: str) -> str | None:
    """The `alg` a compact JWS's header names, unverified: only to choose the key."""
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):
        return None
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else None


def remembered_max_age(prompt: list[str], max_age: str | None, acr_values: list[str]) -> int | None:
    """How old the phone's approval behind a remembered browser may be for it to stand for the phone in this
    sign-in, in seconds; None: as old as the policy's remember_days allow.

    0 (the phone is asked whatever the browser) for `prompt=login` (OpenID Connect Core 3.1.2.1: "SHOULD
    prompt the End-User for reauthentication"), for `max_age=0` (the same, as most providers read it), and
    when `acr_values` names the mfa profile: a remembered browser is no factor, so the provider does the
    most it can, the phone. `acr_values` is otherwise a voluntary claim (Core 5.5.1.1): a value this
    provider cannot reach (mfa for a passwordless client, an unknown one) is not an error; the ID token's
    `acr` says what was done. Any other `max_age`: an approval older than that is no longer current
    (Core 3.1.2.1: "the OP MUST attempt to actively re-authenticate")."""
    if "login" in prompt or ACR_MFA in acr_values or max_age == "0":
        return 0
    return int(max_age) if max_age is not None else None


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class Provider:
    def __init__(self, settings: OidcSettings, issuer: str, store: OidcStore) -> None:
        self.settings = settings
        self.issuer = issuer.rstrip("/")
        self.store = store
        self.clients: Mapping[str, OidcClient] = {c.client_id: c for c in settings.clients}

    # -- discovery ----------------------------------------------------------------------------------------

    def metadata(self, base: str) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0, section 3."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/oidc/authorize",
            "token_endpoint": f"{base}/oidc/token",
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [jws.ALG],
            "scopes_supported": ["openid", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr",
                                 "preferred_username"],
            "acr_values_supported": ["https://refeds.org/profile/mfa", "https://refeds.org/profile/sfa"],
            "prompt_values_supported": ["login", "none"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
        }

    # -- authorize ----------------------------------------------------------------------------------------

    def check_authorization(self, params: Mapping[str, str], browser: str) -> Authorization:
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise ShownError("This application is not registered with this sign-in service.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:  # exact match (OpenID Connect Core 3.1.2.1)
            raise ShownError("The application sent a return address it has not registered.")
        state = params.get("state")

        def fail(error: str, description: str) -> RedirectError:
            return RedirectError(error, description, redirect_uri, state)

        if any(len(params.get(k, "")) > MAX_PARAM
               for k in ("state", "nonce", "login_hint", "scope", "acr_values", "max_age", "prompt")):
            raise fail("invalid_request", "a parameter is too long")
        if "request" in params or "request_uri" in params:
            raise fail("request_not_supported", "request objects are not supported")
        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "only response_type=code is supported")
        scopes = params.get("scope", "").split()
        if "openid" not in scopes:
            raise fail("invalid_scope", "the openid scope is required")
        if params.get("response_mode", "query") != "query":
            raise fail("invalid_request", "only response_mode=query is supported")
        challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
        if challenge is not None or method is not None:
            if method != "S256":
                raise fail("invalid_request", "code_challenge_method must be S256")
            if challenge is None or not _CHALLENGE.fullmatch(challenge):
                raise fail("invalid_request", "code_challenge must be an S256 challenge (43 base64url)")
        elif client.public:
            raise fail("invalid_request", "a public client must use PKCE (S256)")
        prompt = params.get("prompt", "")
        if "none" in prompt.split():
            # No silent sign-in: every sign-in here asks for the user name at least.
            raise fail("login_required", "a sign-in needs the user")
        max_age = params.get("max_age")
        if max_age is not None and not _MAX_AGE.fullmatch(max_age):
            raise fail("invalid_request", "max_age must be a non-negative integer (seconds)")
        signin = SignIn(id=new_secret(), client_id=client.client_id, redirect_uri=redirect_uri, state=state,
                        nonce=params.get("nonce"), code_challenge=challenge, scope=" ".join(scopes),
                        login_hint=params.get("login_hint", ""), browser=browser, csrf=new_secret(),
                        remembered_max_age=remembered_max_age(prompt.split(), max_age,
                                                              params.get("acr_values", "").split()))
        return Authorization(client, signin, prompt)

    # -- token --------------------------------------------------------------------------------------------

    def authenticate_client(self, form: Mapping[str, str], authorization: str | None) -> OidcClient:
        """client_secret_basic (RFC 6749 2.3.1: the id and secret form-urlencoded, then Basic), or
        client_secret_post, or a public client's bare client_id. One method per request."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization:
            if secret is not None:
                raise TokenError("invalid_request", "one client authentication method at a time")
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise TokenError("invalid_client", "unsupported client authentication", 401)
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise TokenError("invalid_client", "malformed Basic credentials", 401) from None
            basic_id, sep, basic_secret = decoded.partition(":")
            if not sep or (client_id is not None and client_id != unquote(basic_id)):
                raise TokenError("invalid_client", "malformed Basic credentials", 401)
            client_id, secret = unquote(basic_id), unquote(basic_secret)
        client = self.clients.get(client_id or "")
        if client is None:
            raise TokenError("invalid_client", "unknown client", 401)
        if client.public:
            if secret:
                raise TokenError("invalid_client", "a public client has no secret", 401)
            return client
        if not secret:
            raise TokenError("invalid_client", "client authentication required", 401)
        digest = sha256_hex(secret)
        if not any(equal(digest, h) for h in client.secret_sha256):
            raise TokenError("invalid_client", "client authentication failed", 401)
        return client

    async def exchange(self, form: Mapping[str, str], authorization: str | None,
                       keyring: KeyRing, rsa_key: RsaSigningKey | None = None) -> dict[str, Any]:
        client = self.authenticate_client(form, authorization)
        if form.get("grant_type") != "authorization_code":
            raise TokenError("unsupported_grant_type", "only authorization_code is supported")
        access_token = new_secret()  # named before the code is taken: a replay can revoke it from then on
        grant = await self.store.take_code(form.get("code", ""), access_token)
        if grant is REPLAYED:
            raise TokenError("invalid_grant", "the code was already used; what it gave is revoked")
        if not isinstance(grant, Grant):
            raise TokenError("invalid_grant", "unknown or expired code")
        if grant.client_id != client.client_id:
            raise TokenError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise TokenError("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier")
        if grant.code_challenge is not None:
            if verifier is None or not _VERIFIER.fullmatch(verifier) or \
                    not equal(s256(verifier), grant.code_challenge):
                raise TokenError("invalid_grant", "PKCE verification failed")
        elif verifier is not None:
            raise TokenError("invalid_grant", "no code_challenge was sent with the authorization request")
        if not await self.store.issue_code_token(access_token, grant, self.settings.access_token_ttl_s):
            raise TokenError("invalid_grant", "the code was used again meanwhile; nothing is issued for it")
        return {"access_token": access_token, "token_type": "Bearer",
                "expires_in": self.settings.access_token_ttl_s, "scope": grant.scope,
                "id_token": self.id_token(grant, keyring, rsa_key if _rsa(client) else None)}

    def id_token(self, grant: Grant, keyring: KeyRing, rsa_key: RsaSigningKey | None = None) -> str:
        """ES256 with the current server key, or RS256 with the provider's RSA key when given."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": grant.user, "aud": grant.client_id, "iat": now,
            "exp": now + self.settings.id_token_ttl_s, "auth_time": grant.auth_time, "acr": grant.acr,
            "preferred_username": grant.user,
        }
        if grant.amr:  # (none at all for a passwordless sign-in that asked no phone: a remembered browser)
            claims["amr"] = grant.amr
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        if rsa_key is not None:
            return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": rsa_key.kid}, claims, rsa_key.key,
                              algorithms=["RS256"])
        current = keyring.current
        return jws.sign(claims, current.key, typ="JWT", kid=current.kid)

    def own_hint_user(self, token: str, client_id: str, keyring: KeyRing,
                      rsa_key: RsaSigningKey | None = None) -> str:
        """The user of an ID token this provider issued to `client_id` (a CIBA `id_token_hint`, CIBA Core
        7.1): ES256 with a server key still in the ring, or RS256 with the provider's RSA key; issued at most
        ID_TOKEN_HINT_MAX_AGE_S ago. It may have expired: it names the user, the phone still decides.
        Raises HintRefused."""
        try:
            alg = jwt_header_alg(token)
            if alg == jws.ALG:
                header = jws.read_header(token, typ="JWT")
                claims = jws.verify(token, keyring.verifying_key(header["kid"]))
            elif alg == "RS256" and rsa_key is not None:
                claims = dict(jwt.decode(token, rsa_key.key, algorithms=["RS256"]).claims)
            else:
                raise HintRefused(f"alg {alg!r} is not one this provider signs with")
        except (jws.InvalidJWS, JoseError, ValueError) as exc:
            raise HintRefused(f"signature: {type(exc).__name__}") from None
        if claims.get("iss") != self.issuer:
            raise HintRefused("not issued by this provider")
        aud = claims.get("aud")
        if not (aud == client_id or (isinstance(aud, list) and client_id in aud)):
            raise HintRefused("issued to another client")
        iat, sub = claims.get("iat"), claims.get("sub")
        now = time.time()
        if type(iat) is not int or iat > now + CLOCK_SKEW_S or now - iat > ID_TOKEN_HINT_MAX_AGE_S:
            raise HintRefused("too old, or issued in the future")
        if not isinstance(sub, str) or not sub:
            raise HintRefused("no sub")
        return sub

    async def userinfo(self, token: str) -> dict[str, Any] | None:
        grant = await self.store.access_token(token)
        if grant is None:
            return None
        return {"sub": grant.user, "preferred_username": grant.user}


__all__ = ["Authorization", "Provider", "RedirectError", "ShownError", "TokenError", "new_secret", "s256"]
