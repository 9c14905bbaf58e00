"""`[oidc]` settings: the OpenID Provider (off by default) and its relying parties.

    [oidc]
    enabled = true
    [oidc.ldap]                          # for clients with first_factor = "ldap"
    url = "ldaps://dc1.example.org"
    user_dn = "uid={user},ou=people,dc=example,dc=org"
    [[oidc.clients]]
    client_id = "wiki"
    name = "Staff wiki"
    application = "wiki"
    secret_sha256 = ["<sha256 of the client secret>"]
    redirect_uris = ["https://wiki.example.org/redirect_uri"]

Client secrets are stored as SHA-256 hashes (`pushauth apps new-key` makes a secret and its hash), compared in
constant time; a client without one is public and must use PKCE (S256).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from pushauth.directory import LdapSettings

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# REFEDS assurance profiles (https://refeds.org/profile/mfa): what relying parties already ask for.
ACR_MFA = "https://refeds.org/profile/mfa"
ACR_SFA = "https://refeds.org/profile/sfa"


class OidcClient(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    client_id: str
    # What the sign-in page calls it ("Sign in to Staff wiki").
    name: str
    # The pushauth application it signs in as: the phone shows that application's name, and its policy
    # (enforcement date, rate limit) applies.
    application: str
    # SHA-256 (hex) of the client secret(s); empty: a public client (a single-page or native app), which
    # must send a PKCE S256 challenge.
    secret_sha256: list[str] = []
    # Exact redirect URIs: anything else is refused on the page, never redirected to. None for a client that
    # signs in only through CIBA (no browser comes back to it).
    redirect_uris: list[str] = []
    # ldap: user name and directory password, then the phone (amr pwd + mfa). passwordless: user name, then
    # the phone with number matching only (a single factor: amr without mfa, acr REFEDS SFA). none: pushauth
    # is the second factor behind an identity provider (the `upstream_*` below) that checked the password
    # and sends its ID token for the user as `id_token_hint`; no page asks anything but the number.
    first_factor: Literal["ldap", "passwordless", "none"] = "ldap"
    # ES256 (the server keys) or RS256 (the provider's RSA key, published with x5c at /oidc/jwks) for a
    # relying party that cannot verify ES256.
    id_token_alg: Literal["ES256", "RS256"] = "ES256"  # noqa: S105 (an algorithm's name)
    # OpenID CIBA (a login flow that cannot redirect a browser: a service desk, a kiosk): "poll" (the client
    # asks the token endpoint) or "ping" (pushauth POSTs to ciba_notification_endpoint when the phone has
    # answered); empty: not allowed. Confidential clients only.
    ciba: Literal["", "poll", "ping"] = ""
    ciba_notification_endpoint: str = ""
    # For first_factor = "none", and for a CIBA client's id_token_hint from an upstream: the upstream's
    # issuer (its hint's `iss`), its keys, the audience its hint is for (default: this client_id), the claim
    # naming the user, and how old a hint may be.
    upstream_issuer: str = ""
    upstream_jwks_url: str = ""
    upstream_audience: str = ""
    upstream_user_claim: str = "preferred_username"
    upstream_max_age_s: int = 300

    def __post_init__(self) -> None:
        if not _CLIENT_ID.fullmatch(self.client_id):
            raise ValueError("client_id must be 1..128 of A-Z a-z 0-9 _ . : -")
        if not self.name.strip():
            raise ValueError("client name must not be empty")
        if not all(_HEX64.fullmatch(h) for h in self.secret_sha256):
            raise ValueError("secret_sha256 must be 64-char lower-case hex SHA-256 digests")
        if not self.redirect_uris and not self.ciba:
            raise ValueError("redirect_uris must list at least one URI")
        for uri in self.redirect_uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
                raise ValueError(f"redirect_uri {uri!r} must be an absolute http(s) URI without a fragment")
            if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"redirect_uri {uri!r}: plain http is for loopback only")
        if self.ciba and not self.secret_sha256:
            raise ValueError("ciba needs a confidential client (secret_sha256)")
        if self.ciba == "ping" and urlsplit(self.ciba_notification_endpoint).scheme not in ("https", "http"):
            raise ValueError("ciba = \"ping\" needs ciba_notification_endpoint")
        if self.first_factor == "none" and not (self.upstream_issuer and self.upstream_jwks_url):
            raise ValueError('first_factor = "none" needs upstream_issuer and upstream_jwks_url')
        if bool(self.upstream_issuer) != bool(self.upstream_jwks_url):
            raise ValueError("upstream_issuer and upstream_jwks_url go together")
        if not 10 <= self.upstream_max_age_s <= 3600:
            raise ValueError("upstream_max_age_s must be 10..3600")

    @property
    def public(self) -> bool:
        return not self.secret_sha256


ENTRA_AUTHORITY = "https://login.microsoftonline.com"


class EntraSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Microsoft Entra ID's external authentication method (EAM) profile: Entra, after its own first factor,
    sends the user here with an `id_token_hint` naming them; pushauth prompts the phone and form-posts an
    RS256 ID token back (pushauth/oidc/entra.py; README: the registration steps)."""

    enabled: bool = False
    # The Application (client) ID of the app registration that represents pushauth in Entra.
    client_id: str = ""
    # Directory (tenant) IDs whose users may be sent here; a hint from any other tenant is refused.
    tenants: list[str] = []
    # The pushauth application these sign-ins are (the phone shows its name; its policy applies).
    application: str = ""
    # Where Entra wants the answer, and its keys (for the hint's signature). Fixed by Microsoft; settings so
    # that the tests can point them at a fake Entra.
    redirect_uri: str = f"{ENTRA_AUTHORITY}/common/federation/externalauthprovider"
    jwks_url: str = f"{ENTRA_AUTHORITY}/common/discovery/v2.0/keys"
    authority: str = ENTRA_AUTHORITY
    # Entra sends a hint that is already expired (its contract says so): accepted up to this long after it
    # was issued (its iat), never later.
    hint_grace_s: int = 600

    def __post_init__(self) -> None:
        if self.enabled and not (self.client_id and self.tenants and self.application):
            raise ValueError("entra: client_id, tenants and application are required when enabled")
        if not 0 <= self.hint_grace_s <= 86400:
            raise ValueError("entra.hint_grace_s must be 0..86400")


# Asymmetric signatures only: a realm's HMAC key is its own secret, never shared with us.
KEYCLOAK_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


class KeycloakRealm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One Keycloak realm whose CIBA sends its authentication requests here (Keycloak's HTTP authentication
    channel: pushauth/oidc/keycloak.py)."""

    # The realm's issuer, exactly as its tokens carry it: https://sso.example.org/realms/staff
    issuer: str
    # The [[applications]] id these sign-ins are (the phone shows its name; its policy applies).
    application: str
    # The realm's keys: a JWKS file, or a URL fetched and cached (refetched, at most once a minute, for an
    # unknown kid). Neither: the realm's own <issuer>/protocol/openid-connect/certs.
    jwks_file: str = ""
    jwks_url: str = ""
    # The realm's token signature algorithm (Realm settings > Tokens > Default signature algorithm;
    # Keycloak's default is RS256). Nothing else is accepted.
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    # The longest a prompt may wait, whatever the realm's CIBA expiry (its bearer's exp) allows.
    max_prompt_s: int = 120

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc or self.issuer.endswith("/"):
            raise ValueError("keycloak realm issuer must be an http(s) URL without a trailing slash")
        if self.jwks_file and self.jwks_url:
            raise ValueError("keycloak realm: jwks_file or jwks_url, not both")
        if self.jwks_url and urlsplit(self.jwks_url).scheme not in ("https", "http"):
            raise ValueError("keycloak realm jwks_url must be an http(s) URL")
        if not self.algorithms or not set(self.algorithms) <= set(KEYCLOAK_ALGORITHMS):
            raise ValueError(f"keycloak realm algorithms must be some of {', '.join(KEYCLOAK_ALGORITHMS)}")
        if not 10 <= self.max_prompt_s <= 600:
            raise ValueError("keycloak realm max_prompt_s must be 10..600")

    @property
    def keys_url(self) -> str:
        return self.jwks_url or f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def callback_url(self) -> str:
        """Where the realm takes the answer (Keycloak's BackchannelAuthenticationCallbackEndpoint)."""
        return f"{self.issuer}/protocol/openid-connect/ext/ciba/auth/callback"


class KeycloakSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Keycloak's CIBA HTTP authentication channel (POST /keycloak/authentication-channel): off by default;
    independent of `[oidc] enabled` (Keycloak is the OpenID Provider there, pushauth only the phone)."""

    enabled: bool = False
    realms: list[KeycloakRealm] = []

    def __post_init__(self) -> None:
        if self.enabled and not self.realms:
            raise ValueError("keycloak: at least one [[oidc.keycloak.realms]] when enabled")
        issuers = [r.issuer for r in self.realms]
        if len(issuers) != len(set(issuers)):
            raise ValueError("keycloak realm issuers must be unique")

    def problems(self, application_ids: set[str]) -> list[str]:
        return [f"oidc.keycloak realm {r.issuer!r}: no application {r.application!r} in [[applications]]"
                for r in self.realms if r.application not in application_ids]


class OidcSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    # The issuer (`iss`); empty: server.base_url. Relying parties find everything else from
    # <issuer>/.well-known/openid-configuration.
    issuer: str = ""
    # How long a browser has to sign in, from the relying party's redirect to the phone's answer.
    signin_ttl_s: int = 600
    # How long the prompt on the phone waits (also the longest the number page waits).
    prompt_ttl_s: int = 120
    # Authorization codes: single use, this short.
    code_ttl_s: int = 60
    id_token_ttl_s: int = 300
    access_token_ttl_s: int = 600
    ldap: LdapSettings = LdapSettings()
    entra: EntraSettings = EntraSettings()
    keycloak: KeycloakSettings = KeycloakSettings()
    clients: list[OidcClient] = []

    def __post_init__(self) -> None:
        if self.issuer and urlsplit(self.issuer).scheme not in ("https", "http"):
            raise ValueError("issuer must be an http(s) URL")
        if not 60 <= self.signin_ttl_s <= 3600 or not 10 <= self.prompt_ttl_s <= 600:
            raise ValueError("signin_ttl_s must be 60..3600 and prompt_ttl_s 10..600")
        if not 10 <= self.code_ttl_s <= 600:
            raise ValueError("code_ttl_s must be 10..600")
        if not 60 <= self.id_token_ttl_s <= 3600 or not 60 <= self.access_token_ttl_s <= 86400:
            raise ValueError("id_token_ttl_s must be 60..3600 and access_token_ttl_s 60..86400")
        ids = [c.client_id for c in self.clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client_id must be unique")

    def problems(self, application_ids: set[str]) -> list[str]:
        """What stops the provider from starting with these settings (checked by the app factory when
        enabled)."""
        found = [f"oidc client {c.client_id!r}: no application {c.application!r} in [[applications]]"
                 for c in self.clients if c.application not in application_ids]
        if any(c.first_factor == "ldap" for c in self.clients) and not self.ldap.url:
            found.append('an oidc client uses first_factor = "ldap": set [oidc.ldap] url and user_dn')
        if self.entra.enabled and self.entra.application not in application_ids:
            found.append(f"oidc.entra: no application {self.entra.application!r} in [[applications]]")
        if self.entra.enabled and self.entra.client_id in {c.client_id for c in self.clients}:
            found.append("oidc.entra.client_id is also an [[oidc.clients]] client_id")
        return found
