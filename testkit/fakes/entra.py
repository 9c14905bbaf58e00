"""A protocol-faithful fake of Microsoft Entra ID in the external authentication method (EAM) flow.

No Entra tenant can be reached from here, so this fake stands in for one. It is built from Microsoft's
published provider contract, "Microsoft Entra multifactor authentication external method provider reference"
(learn.microsoft.com/entra/identity/authentication/concept-authentication-external-method-provider; the
source is MicrosoftDocs/entra-docs, docs/identity/authentication/concept-authentication-external-method-
provider.md). Section names below ("§ ...") are that page's headings. Where the page is silent, the fake
follows OpenID Connect Core 1.0, which the page points to, and says so.

What Entra does in the flow, and what this fake does in its place:

1. It sends the user's browser to the provider's authorization endpoint with a form POST (§ "Microsoft
   Entra ID call to the external identity provider": implicit flow, `response_type=id_token`,
   `response_mode=form_post`, a `claims` request for `acr`/`amr`, and an `id_token_hint` it signed for the
   user). `authorization_params()` builds those parameters; `start_url()` serves the auto-submitting page
   that a browser test opens, as Entra's login page does.
2. The `id_token_hint` is an RS256 JWT signed by Entra's keys, which Entra publishes (with `kid`, `x5t` and
   `x5c`) at `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`. `hint()` signs one; the keys
   are served on loopback at `.jwks_url`, and a discovery document at `.discovery_url`.
3. The provider form-posts its answer (`id_token`, `state`, or `error`) to Entra's fixed redirect URI,
   `https://login.microsoftonline.com/common/federation/externalauthprovider`; here `.redirect_uri` on
   loopback, which records every post (`received`) and answers 200.
4. Entra validates the provider's ID token (§ "Microsoft Entra ID processing of the provider response"):
   `validate_response()` / `validate_post()` make every check the page lists, and raise `EntraRejected`
   naming the failed check.

Not modelled: Entra's own sign-in (the first factor), Conditional Access, Microsoft Graph, the provider
discovery cache (Entra refreshes it every 24 hours: § "Provider metadata caching"; here every validation
fetches the JWKS afresh), and the https-only rule for the provider's URLs (§ "Discovery of provider
metadata": the fake accepts http on loopback, where tests run).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import html
import json
import secrets
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

# The public cloud's authority (§ "Discovery of Microsoft Entra ID metadata": Global Azure).
AUTHORITY = "https://login.microsoftonline.com"
# § "Example of a redirect URI": the one URI Entra (Global Azure) sends and expects the answer at.
ENTRA_REDIRECT_URI = f"{AUTHORITY}/common/federation/externalauthprovider"
REDIRECT_PATH = "/common/federation/externalauthprovider"
KEYS_PATH = "/discovery/v2.0/keys"

# § "Example of an external MFA method that satisfies MFA": the acr Entra asks for and the amr values it
# lists, in the page's order.
ACR_POSSESSION_OR_INHERENCE = "possessionorinherence"
AMR_VALUES: tuple[str, ...] = ("face", "fido", "fpt", "hwk", "iris", "otp", "pop", "retina", "sc", "sms",
                               "swk", "tel", "vbm")
# § "Supported acr claims".
ACR_VALUES: tuple[str, ...] = ("possessionorinherence", "knowledgeorpossession", "knowledgeorinherence",
                               "knowledgeorpossessionorinherence", "knowledge", "possession", "inherence")
# What each acr allows (§ "Supported acr claims": "Authentication must use a ... factor").
ACR_TYPES: Mapping[str, tuple[str, ...]] = {
    "possessionorinherence": ("possession", "inherence"),
    "knowledgeorpossession": ("knowledge", "possession"),
    "knowledgeorinherence": ("knowledge", "inherence"),
    "knowledgeorpossessionorinherence": ("knowledge", "possession", "inherence"),
    "knowledge": ("knowledge",), "possession": ("possession",), "inherence": ("inherence",),
}
# § "Supported amr claims", the type table ("Microsoft Entra ID validates the type mapping based on the
# following table").
AMR_TYPE: Mapping[str, str] = {
    "face": "inherence", "fido": "possession", "fpt": "inherence", "hwk": "possession", "iris": "inherence",
    "otp": "possession", "pop": "possession", "retina": "inherence", "sc": "possession", "sms": "possession",
    "swk": "possession", "tel": "possession", "vbm": "inherence",
}
# § "Discovery of provider metadata": id_token_signing_alg_values_supported, "Microsoft supports RS256".
# Nothing else is accepted: no other RSA or EC algorithm, no HMAC, no "none".
ACCEPTED_ALGORITHMS = ("RS256",)
# Clock skew allowed on exp/iat/nbf: the default of Microsoft's token validation library, which the page
# points to for validation (IdentityModel's TokenValidationParameters.DefaultClockSkew, 5 minutes).
CLOCK_SKEW_S = 300
# § "Microsoft Entra ID processing of the provider response": Entra abandons the attempt "about 5 minutes
# after the redirection to the provider" (an earlier revision of the page said 10).
ATTEMPT_LIFETIME_S = 300


class EntraRejected(Exception):
    """The provider's answer fails one of Entra's checks; `check` names it ("signature", "iss", ...)."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    """One of Entra's signing keys: an RSA key and the self-signed certificate Entra publishes it in."""

    private: rsa.RSAPrivateKey
    cert_der: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # Entra's key certificates are self-signed, CN=accounts.accesscontrol.windows.net.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.windows.net")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(private.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .sign(private, hashes.SHA256()))
        return cls(private, cert.public_bytes(serialization.Encoding.DER))

    @property
    def kid(self) -> str:
        # In Entra's JWKS, kid and x5t are the same value: the certificate's SHA-1 thumbprint, base64url.
        return self.x5t

    @property
    def x5t(self) -> str:
        digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - x5t is defined as the SHA-1 thumbprint (RFC 7517)
        digest.update(self.cert_der)
        return _b64url(digest.finalize())

    def jwk(self) -> dict[str, Any]:
        """The public key as Entra publishes it: kty, use, kid, x5t, n, e, x5c."""
        public = RSAKey.import_key(self.private.public_key()).as_dict(private=False)
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.x5t, "n": public["n"],
                "e": public["e"], "x5c": [base64.b64encode(self.cert_der).decode("ascii")]}

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None) -> str:
        # The header of Entra's v2.0 tokens: typ, alg, kid (§ "Example of id_token_hint").
        header = {"typ": "JWT", "alg": "RS256", "kid": kid or self.kid}
        return jwt.encode(header, dict(claims), RSAKey.import_key(self.private), algorithms=["RS256"])


class FakeEntra:
    """Entra ID for one tenant and one EAM registration, on 127.0.0.1.

    `client_id` is the client id the provider gave Entra (the `client_id` of the authorization request and
    the `aud` Entra requires in the provider's answer). `app_id` is the application id of the EAM app
    registration in Entra, which is the `aud` of the `id_token_hint` (§ "Default id_token_hint claims":
    "the external identity provider's client ID for Microsoft Entra ID"; the provider may use the app id
    as that client id, so by default they are the same).
    """

    def __init__(self, tenant_id: str, client_id: str, *, app_id: str | None = None) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.app_id = app_id or client_id
        self.keys: list[SigningKey] = [SigningKey.generate()]  # published; the last one signs
        self._foreign = SigningKey.generate()  # never published
        self.received: list[dict[str, str]] = []
        self._posted = asyncio.Condition()
        self._taken = 0  # posts next_post has returned
        self._pages: dict[str, tuple[str, dict[str, str]]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        # What Entra puts in `iss` for a v2.0 token of this tenant (§ "Example of id_token_hint").
        return f"{AUTHORITY}/{self.tenant_id}/v2.0"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}{KEYS_PATH}"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def redirect_uri(self) -> str:
        return f"{self.url}{REDIRECT_PATH}"

    # -- keys -----------------------------------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, *, retire_old: bool = False) -> SigningKey:
        """Publish a new key and sign with it from now on; keep the old ones published unless told."""
        new = SigningKey.generate()
        self.keys = [new] if retire_old else [*self.keys, new]
        return new

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk() for key in self.keys]}

    # -- what Entra sends -----------------------------------------------------------------------------------

    def hint_claims(self, sub: str, upn: str, *, oid: str | None = None, tid: str | None = None,
                    aud: str | None = None, name: str | None = None, issuer: str | None = None,
                    expires_in: int = 300, issued_ago: int = 0,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The claims of an `id_token_hint` (§ "Default id_token_hint claims" and § "Example of
        id_token_hint": ver, iss, sub, aud, exp, iat, nbf, name, preferred_username, oid, tid).

        `tid` makes it a token of another tenant (its `iss` too, unless `issuer` is given): still signed by
        Entra's keys, which all tenants share, so only the issuer/tid check catches it. The page says the
        token "is issued as expired" / "expired or nearly expired" and that exp is "a short time after the
        issuing time"; its example has exp one second before iat. By default exp is 5 minutes after iat;
        `expires_in` (negative: already expired) and `issued_ago` move them.
        """
        now = int(time.time())
        iat = now - issued_ago
        tenant = tid or self.tenant_id
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": issuer or f"{AUTHORITY}/{tenant}/v2.0",
            "sub": sub,
            "aud": aud or self.app_id,
            "exp": iat + expires_in,
            "iat": iat,
            "nbf": iat,
            "name": name or upn.split("@", 1)[0],
            "preferred_username": upn,
            "oid": oid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{upn}")),
            "tid": tenant,
        }
        claims.update(extra or {})
        return claims

    def hint(self, sub: str, upn: str, *, oid: str | None = None, tid: str | None = None,
             aud: str | None = None, name: str | None = None, issuer: str | None = None,
             expires_in: int = 300, issued_ago: int = 0, foreign_key: bool = False,
             extra: Mapping[str, Any] | None = None) -> str:
        """An `id_token_hint` as Entra sends it: RS256 with the current key's kid.

        `foreign_key=True` signs with a key that is not in the JWKS, under the kid of the published key (so
        that only the signature check, not the key lookup, can refuse it).
        """
        claims = self.hint_claims(sub, upn, oid=oid, tid=tid, aud=aud, name=name, issuer=issuer,
                                  expires_in=expires_in, issued_ago=issued_ago, extra=extra)
        if foreign_key:
            return self._foreign.sign(claims, kid=self.signing_key.kid)
        return self.signing_key.sign(claims)

    def claims_request(self, *, acr: Sequence[str] = (ACR_POSSESSION_OR_INHERENCE,),
                       amr: Sequence[str] = AMR_VALUES) -> str:
        """The `claims` parameter (§ "Example of an external MFA method that satisfies MFA")."""
        return json.dumps({"id_token": {"acr": {"essential": True, "values": list(acr)},
                                        "amr": {"essential": True, "values": list(amr)}}},
                          separators=(",", ":"))

    def authorization_params(self, hint: str, *, nonce: str, state: str, claims: str | None = None,
                             client_request_id: str | None = None) -> dict[str, str]:
        """The authorization request Entra form-posts to the provider's authorization_endpoint.

        Exactly the parameters of § "Microsoft Entra ID call to the external identity provider": scope,
        response_type, response_mode, client_id, redirect_uri, nonce, state, id_token_hint, claims,
        client-request-id (a GUID). No login_hint, no prompt, no acr_values: the page lists none, and says
        the provider should ignore any parameter it does not list. (Its table spells the response type
        "Id_token" and, in an older revision, the redirect parameter "redirect_url"; the example form and
        OIDC say `id_token` and `redirect_uri`, which is what is sent here.)
        """
        return {
            "scope": "openid",
            "response_type": "id_token",
            "response_mode": "form_post",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "nonce": nonce,
            "state": state,
            "id_token_hint": hint,
            "claims": claims if claims is not None else self.claims_request(),
            "client-request-id": client_request_id or str(uuid.uuid4()),
        }

    def start_url(self, authorization_endpoint: str, params: Mapping[str, str]) -> str:
        """A page on the fake that form-posts `params` to `authorization_endpoint` as soon as it loads:
        what the browser gets from Entra when the user picks the external method ("This call is made
        through a POST request")."""
        page = secrets.token_urlsafe(12)
        self._pages[page] = (authorization_endpoint, dict(params))
        return f"{self.url}/start/{page}"

    # -- what Entra receives --------------------------------------------------------------------------------

    async def next_post(self) -> dict[str, str]:
        """Wait for the next form post to the redirect URI (one not yet returned by this method); bound it
        with `asyncio.timeout`."""
        seen = self._taken
        async with self._posted:
            await self._posted.wait_for(lambda: len(self.received) > seen)
        self._taken = seen + 1
        return self.received[seen]

    async def validate_post(self, form: Mapping[str, str], *, provider_issuer: str, provider_jwks_url: str,
                            hint_sub: str, nonce: str, state: str | None,
                            acr_values: Collection[str] = (ACR_POSSESSION_OR_INHERENCE,),
                            amr_values: Collection[str] = AMR_VALUES) -> dict[str, Any]:
        """The whole form post, as Entra reads it: success only with an `id_token` that validates, and the
        `state` it sent echoed (absent if it sent none). § "Microsoft Entra ID processing of the provider
        response": parameters id_token and state; failure is an `error` parameter."""
        if "error" in form:
            raise EntraRejected("error", f"the provider answered error={form['error']!r}"
                                         f" ({form.get('error_description', '')})")
        if form.get("state") != state:
            raise EntraRejected("state", f"expected {state!r}, got {form.get('state')!r}")
        if not form.get("id_token"):
            raise EntraRejected("id_token", "the post has no id_token")
        return await validate_response(
            form["id_token"], client_id=self.client_id, provider_issuer=provider_issuer,
            provider_jwks_url=provider_jwks_url, hint_sub=hint_sub, nonce=nonce, acr_values=acr_values,
            amr_values=amr_values)

    async def validate_response(self, id_token: str, *, provider_issuer: str, provider_jwks_url: str,
                                hint_sub: str, nonce: str,
                                acr_values: Collection[str] = (ACR_POSSESSION_OR_INHERENCE,),
                                amr_values: Collection[str] = AMR_VALUES) -> dict[str, Any]:
        """`validate_response` (module level) with this registration's client id as the audience."""
        return await validate_response(
            id_token, client_id=self.client_id, provider_issuer=provider_issuer,
            provider_jwks_url=provider_jwks_url, hint_sub=hint_sub, nonce=nonce, acr_values=acr_values,
            amr_values=amr_values)

    # -- server ---------------------------------------------------------------------------------------------

    async def _keys(self, _: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        # The common endpoint's issuer is a template, as Entra's is; a tenant's names the tenant.
        issuer = f"{AUTHORITY}/{{tenantid}}/v2.0" if tenant == "common" else f"{AUTHORITY}/{tenant}/v2.0"
        return web.json_response({
            "issuer": issuer,
            "authorization_endpoint": f"{AUTHORITY}/{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{AUTHORITY}/{tenant}/oauth2/v2.0/token",
            "jwks_uri": self.jwks_url,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "name", "preferred_username",
                                 "oid", "tid", "ver"],
        })

    async def _redirect(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.Response(status=405, text="the answer must be POSTed (response_mode=form_post)")
        form = await request.post()
        got = {name: value for name, value in form.items() if isinstance(value, str)}
        async with self._posted:
            self.received.append(got)
            self._posted.notify_all()
        return web.Response(text="<!doctype html><title>Microsoft</title><p>Received.",
                            content_type="text/html")

    async def _start(self, request: web.Request) -> web.Response:
        found = self._pages.get(request.match_info["page"])
        if found is None:
            raise web.HTTPNotFound()
        action, params = found
        inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())
        body = (f'<!doctype html><title>Working...</title><form method="POST" name="hiddenform" '
                f'action="{html.escape(action)}">{inputs}<noscript><p>Script is disabled. Click Submit to '
                f'continue.<input type="submit" value="Submit"></noscript></form>'
                f"<script>document.forms[0].submit()</script>")
        return web.Response(text=body, content_type="text/html")

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get(KEYS_PATH, self._keys)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_route("*", REDIRECT_PATH, self._redirect)
        app.router.add_get("/start/{page}", self._start)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


# -- validation of the provider's answer, as Entra does it --------------------------------------------------


async def fetch_jwks(jwks_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(jwks_url) as resp:
        if resp.status != 200:
            raise EntraRejected("jwks", f"GET {jwks_url} answered {resp.status}")
        try:
            body = await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError) as exc:
            raise EntraRejected("jwks", f"{jwks_url} is not JSON: {exc}") from exc
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise EntraRejected("jwks", f"{jwks_url} has no \"keys\" array")
    return keys


def _select_key(header: Mapping[str, Any], keys: Sequence[Mapping[str, Any]]) -> RSAKey:
    # § "Discovery of Microsoft Entra ID metadata" (the same rule, for the other direction): the token's kid
    # picks the key in jwks_uri. A token without kid is matched only when the set holds a single key.
    kid = header.get("kid")
    rsa_keys = [k for k in keys if k.get("kty") == "RSA" and k.get("use", "sig") == "sig"]
    if kid is not None:
        candidates = [k for k in rsa_keys if k.get("kid") == kid]
        if not candidates:
            raise EntraRejected("kid", f"no RSA signing key with kid {kid!r} in the provider's JWKS")
    elif len(rsa_keys) == 1:
        candidates = rsa_keys
    else:
        raise EntraRejected("kid", "the token has no kid and the provider's JWKS has more than one key")
    jwk = candidates[0]
    try:
        key = RSAKey.import_key({name: value for name, value in jwk.items() if name in ("kty", "n", "e")})
    except (JoseError, ValueError) as exc:
        raise EntraRejected("jwks", f"key {kid!r} is not a valid RSA JWK: {exc}") from exc
    # § "Discovery of provider metadata": "The JWK x5c parameter must be present to provide X.509
    # representations of provided keys." Its first certificate must hold the same public key.
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise EntraRejected("x5c", f"key {kid!r} has no x5c certificate")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except ValueError as exc:
        raise EntraRejected("x5c", f"key {kid!r}: x5c[0] is not a DER certificate: {exc}") from exc
    cert_key = cert.public_key()
    jwk_numbers = rsa.RSAPublicNumbers(int.from_bytes(_b64url_decode(str(jwk["e"])), "big"),
                                       int.from_bytes(_b64url_decode(str(jwk["n"])), "big"))
    if not isinstance(cert_key, rsa.RSAPublicKey) or cert_key.public_numbers() != jwk_numbers:
        raise EntraRejected("x5c", f"key {kid!r}: the x5c certificate holds another key than n/e")
    return key


def _header(id_token: str) -> dict[str, Any]:
    parts = id_token.split(".")
    if len(parts) != 3:
        raise EntraRejected("format", "the id_token is not a compact JWS (three parts)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
    except ValueError as exc:
        raise EntraRejected("format", f"the JWS header is not base64url JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise EntraRejected("format", "the JWS header is not an object")
    return header


def _number(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EntraRejected(name, f"{name} is missing or not a number: {value!r}")
    return int(value)


async def validate_response(id_token: str, *, client_id: str, provider_issuer: str, provider_jwks_url: str,
                            hint_sub: str, nonce: str,
                            acr_values: Collection[str] = (ACR_POSSESSION_OR_INHERENCE,),
                            amr_values: Collection[str] = AMR_VALUES,
                            now: float | None = None) -> dict[str, Any]:
    """Check the provider's ID token as Entra does; return its claims, or raise `EntraRejected`.

    § "Microsoft Entra ID processing of the provider response" lists the claims and what each must be;
    "Microsoft Entra ID uses the published OIDC metadata to verify that the token contains the expected
    claims, and carries out any other token validation that OIDC requires" (OIDC Core 3.2.2.11 / 3.1.3.7).
    """
    header = _header(id_token)
    # § "Discovery of provider metadata": "Microsoft supports RS256". Checked before any key is touched.
    alg = header.get("alg")
    if alg not in ACCEPTED_ALGORITHMS:
        raise EntraRejected("alg", f"alg {alg!r} is not accepted (only {', '.join(ACCEPTED_ALGORITHMS)})")
    # The signature, with the provider's key named by kid from its jwks_uri (fetched over HTTP).
    key = _select_key(header, await fetch_jwks(provider_jwks_url))
    try:
        claims: dict[str, Any] = dict(jwt.decode(id_token, key, algorithms=list(ACCEPTED_ALGORITHMS)).claims)
    except JoseError as exc:
        raise EntraRejected("signature", f"failed signature verification (kid {header.get('kid')!r}): "
                                         f"{exc}") from exc
    # iss: "must match the issuer from the provider's discovery metadata", character for character
    # (§ "Discovery of provider metadata", Issuer row).
    if claims.get("iss") != provider_issuer:
        raise EntraRejected("iss", f"expected {provider_issuer!r}, got {claims.get('iss')!r}")
    # aud: "the Microsoft Entra ID client ID" (the client_id of the request). OIDC Core 3.1.3.7: it may be an
    # array, and then an azp other than the client is refused.
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != client_id):
        raise EntraRejected("aud", f"expected {client_id!r}, got {aud!r}")
    # sub: "must match the sub from the id_token_hint sent to initiate this request".
    if claims.get("sub") != hint_sub:
        raise EntraRejected("sub", f"expected the hint's sub {hint_sub!r}, got {claims.get('sub')!r}")
    # nonce: "The same nonce value that was passed in the request."
    if "nonce" not in claims:
        raise EntraRejected("nonce", "the token has no nonce")
    if claims["nonce"] != nonce:
        raise EntraRejected("nonce", f"expected {nonce!r}, got {claims['nonce']!r}")
    # exp, iat: "set as usual" (OIDC Core 3.1.3.7 items 9-10), with Microsoft's default clock skew.
    t = time.time() if now is None else now
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if exp <= t - CLOCK_SKEW_S:
        raise EntraRejected("exp", f"the token expired {int(t - exp)} s ago")
    if iat > t + CLOCK_SKEW_S:
        raise EntraRejected("iat", f"the token is issued {int(iat - t)} s in the future")
    if iat < t - ATTEMPT_LIFETIME_S - CLOCK_SKEW_S:
        raise EntraRejected("iat", f"the token was issued {int(t - iat)} s ago, after Entra abandoned the "
                                   f"attempt")
    if exp <= iat:
        raise EntraRejected("exp", "exp is not after iat")
    if "nbf" in claims and _number(claims, "nbf") > t + CLOCK_SKEW_S:
        raise EntraRejected("nbf", "the token is not valid yet")
    # acr: "should match one of the values from the request ... Only one acr claim should be returned."
    # OIDC Core 2: acr is a string; an array (even of one) is not one acr value.
    acr = claims.get("acr")
    if not isinstance(acr, str):
        raise EntraRejected("acr", f"exactly one acr value (a string) is required, got {acr!r}")
    if acr not in acr_values:
        raise EntraRejected("acr", f"acr {acr!r} is not one of the requested {sorted(acr_values)}")
    # amr: "should be returned as an array, and only one method claim should be returned", one of the
    # supported amr claims (and of those requested).
    amr = claims.get("amr")
    if not isinstance(amr, list) or len(amr) != 1 or not isinstance(amr[0], str):
        raise EntraRejected("amr", f"exactly one amr value in an array is required, got {amr!r}")
    method = amr[0]
    if method not in AMR_TYPE:
        raise EntraRejected("amr", f"amr {method!r} is not one of Entra's supported amr claims")
    if method not in amr_values:
        raise EntraRejected("amr", f"amr {method!r} was not requested")
    # The type table: the method's type (possession, inherence) must be one the acr allows.
    if AMR_TYPE[method] not in ACR_TYPES.get(acr, ()):
        raise EntraRejected("amr", f"amr {method!r} is a {AMR_TYPE[method]} method, which acr {acr!r} does "
                                   f"not allow")
    return claims


async def fetch_provider_metadata(discovery_url: str) -> dict[str, Any]:
    """The provider's discovery document, checked against § "Discovery of provider metadata" (issuer,
    authorization_endpoint, jwks_uri, openid, id_token, RS256, claim_types normal if present, a
    Content-Length header, the URL ending in /.well-known/openid-configuration with no query)."""
    suffix = "/.well-known/openid-configuration"
    if not discovery_url.endswith(suffix) or "?" in discovery_url or "#" in discovery_url:
        raise EntraRejected("discovery", f"{discovery_url} must end with {suffix}, no query or fragment")
    async with aiohttp.ClientSession() as session, session.get(discovery_url) as resp:
        if resp.status != 200:
            raise EntraRejected("discovery", f"GET {discovery_url} answered {resp.status}")
        if resp.headers.get("Content-Length") is None:
            raise EntraRejected("discovery", "no Content-Length header")
        meta = await resp.json(content_type=None)
    if not isinstance(meta, dict):
        raise EntraRejected("discovery", "the document is not a JSON object")
    if meta.get("issuer") != discovery_url[: -len(suffix)]:
        raise EntraRejected("discovery", f"issuer {meta.get('issuer')!r} is not the discovery URL's prefix")
    for name in ("authorization_endpoint", "jwks_uri"):
        if not isinstance(meta.get(name), str):
            raise EntraRejected("discovery", f"{name} is missing")
    for name, value in (("scopes_supported", "openid"), ("response_types_supported", "id_token"),
                        ("id_token_signing_alg_values_supported", "RS256")):
        if value not in (meta.get(name) or []):
            raise EntraRejected("discovery", f"{name} does not include {value!r}")
    if "subject_types_supported" not in meta:
        raise EntraRejected("discovery", "subject_types_supported is missing")
    if "claim_types_supported" in meta and "normal" not in meta["claim_types_supported"]:
        raise EntraRejected("discovery", "claim_types_supported does not include 'normal'")
    return meta
