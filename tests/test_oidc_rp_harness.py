"""The openid-client harness (testkit/openid_client.py, tests/rp/openid-client/rp.mjs) proved on its own,
before pushauth's provider exists (issue 18): a stub OpenID Provider written here, on 127.0.0.1, with no
login at all, and the real relying party against it. What it proves is the harness, both ways: a provider
that does everything right gets its claims through openid-client, and openid-client refuses what a wrong
provider sends (another nonce or audience, an expired token, a signature by a key not in the JWKS, a
userinfo for someone else, an ID token without the nonce), so a green run against pushauth later means
openid-client checked, not that the harness let things through. And the harness's own edges: an https
issuer trusted through a test CA (`ca_file`) and nothing else, a hung token endpoint ending in an error.

The test plays the browser: it GETs the authorization URL and takes the Location, the redirect back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from testkit.fakes.sandbox import TestCA
from testkit.openid_client import ClientAuthMethod, RpClient, RpError, missing_node_rp, rp_finish, rp_start

pytestmark = pytest.mark.skipif(missing_node_rp() is not None, reason=missing_node_rp() or "")

CLIENT_ID = "webapp"
CLIENT_SECRET = "webapp-s3cret"  # the stub's own test client
PUBLIC_CLIENT_ID = "spa"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never fetched: the test reads the Location itself
USER = {"sub": "u-alice-0001", "name": "Alice Example", "email": "alice@example.test"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


def oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store"})


@dataclass
class Grant:
    """What an authorization request left for the token endpoint."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    scope: str


@dataclass
class StubProvider:
    """A minimal OpenID Provider: the code flow with PKCE S256, client_secret_basic, client_secret_post
    and a public client, single-use codes, ES256 ID tokens and userinfo. `tamper` makes its next ID tokens
    (or userinfo) wrong in one way: "nonce", "no-nonce", "aud", "expired", "foreign-key", "iss",
    "userinfo-sub"; "slow-token" makes the token endpoint hang. Over https with `tls`."""

    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", parameters={"kid": "stub-1"}))
    tamper: str | None = None
    tls: ssl.SSLContext | None = None
    port: int = 0
    grants: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)  # token -> sub
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)  # form + "client_auth"
    userinfo_requests: int = 0
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- endpoints -----------------------------------------------------------------------------------

    async def discovery(self, _: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email"],
            "grant_types_supported": ["authorization_code"],
        })

    async def jwks(self, _: web.Request) -> web.Response:
        public = self.key.as_dict(private=False)
        return web.json_response({"keys": [{**public, "use": "sig", "alg": "ES256"}]})

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        # Nothing to redirect to until client and redirect_uri are known: shown, not redirected.
        known = query.get("client_id") in (CLIENT_ID, PUBLIC_CLIENT_ID)
        if not known or query.get("redirect_uri") != REDIRECT_URI:
            return web.Response(status=400, text="unknown client or redirect_uri")
        if (query.get("response_type") != "code" or query.get("code_challenge_method") != "S256"
                or not query.get("code_challenge") or "openid" not in query.get("scope", "").split()):
            back = {"error": "invalid_request", "state": query.get("state", "")}
            raise web.HTTPFound(f"{REDIRECT_URI}?{urlencode(back)}")
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(query["client_id"], query["redirect_uri"], query["code_challenge"],
                                  query.get("nonce"), query["scope"])
        back = {"code": code}
        if "state" in query:
            back["state"] = query["state"]
        raise web.HTTPFound(f"{REDIRECT_URI}?{urlencode(back)}")

    def _client(self, request: web.Request, form: dict[str, str]) -> tuple[str | None, str]:
        """(the authenticated client id or None, the method it used)."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            # RFC 6749 2.3.1: both form-urlencoded before base64.
            client_id, secret = (parse_qs(f"a={user}")["a"][0], parse_qs(f"a={password}")["a"][0])
            ok = client_id == CLIENT_ID and secrets.compare_digest(secret, CLIENT_SECRET)
            return (client_id if ok else None), "client_secret_basic"
        if "client_secret" in form:
            ok = form.get("client_id") == CLIENT_ID and secrets.compare_digest(form["client_secret"],
                                                                              CLIENT_SECRET)
            return (CLIENT_ID if ok else None), "client_secret_post"
        if form.get("client_id") == PUBLIC_CLIENT_ID:
            return PUBLIC_CLIENT_ID, "none"
        return None, "none"

    async def token(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        if self.tamper == "slow-token":
            await asyncio.sleep(30)  # cancelled when the stub closes
        client_id, method = self._client(request, form)
        self.token_requests.append({**form, "client_auth": method})
        if client_id is None:
            return oauth_error("invalid_client", "client authentication failed", 401)
        if form.get("grant_type") != "authorization_code":
            return oauth_error("unsupported_grant_type", "authorization_code only")
        grant = self.grants.pop(form.get("code", ""), None)  # popped: a code is good once
        if grant is None or grant.client_id != client_id:
            return oauth_error("invalid_grant", "unknown, used or another client's code")
        if form.get("redirect_uri") != grant.redirect_uri:
            return oauth_error("invalid_grant", "redirect_uri differs from the authorization request's")
        if s256(form.get("code_verifier", "")) != grant.code_challenge:
            return oauth_error("invalid_grant", "PKCE verification failed")
        access_token = secrets.token_urlsafe(32)
        self.access_tokens[access_token] = USER["sub"]
        return web.json_response({
            "access_token": access_token, "token_type": "Bearer", "expires_in": 300, "scope": grant.scope,
            "id_token": self.id_token(client_id, grant, access_token),
        }, headers={"Cache-Control": "no-store"})

    def id_token(self, client_id: str, grant: Grant, access_token: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": USER["sub"], "aud": client_id, "iat": now, "exp": now + 300,
            "auth_time": now, "amr": ["mfa", "pop"],
            # OIDC Core 3.1.3.6: the left half of the access token's SHA-256, for ES256.
            "at_hash": b64url(hashlib.sha256(access_token.encode()).digest()[:16]),
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        key = self.key
        match self.tamper:
            case "nonce":
                claims["nonce"] = secrets.token_urlsafe(16)
            case "no-nonce":
                claims.pop("nonce", None)
            case "aud":
                claims["aud"] = "another-client"
            case "iss":
                claims["iss"] = "http://127.0.0.1:1"
            case "expired":  # well past openid-client's clock tolerance (none by default)
                claims.update(iat=now - 900, exp=now - 600, auth_time=now - 900)
            case "foreign-key":  # the same kid, another key: only the signature check can tell
                key = ECKey.generate_key("P-256", parameters={"kid": "stub-1"})
        return jwt.encode({"alg": "ES256", "kid": "stub-1", "typ": "JWT"}, claims, key, algorithms=["ES256"])

    async def userinfo(self, request: web.Request) -> web.Response:
        self.userinfo_requests += 1
        header = request.headers.get("Authorization", "")
        sub = self.access_tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if sub is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.tamper == "userinfo-sub":
            sub = "u-mallory-0666"
        return web.json_response({**USER, "sub": sub})

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/userinfo", self.userinfo)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def provider() -> AsyncIterator[StubProvider]:
    stub = await StubProvider().start()
    try:
        yield stub
    finally:
        await stub.close()


def confidential(provider: StubProvider, auth: ClientAuthMethod = "basic") -> RpClient:
    return RpClient(provider.issuer, CLIENT_ID, REDIRECT_URI, client_secret=CLIENT_SECRET, auth=auth)


async def follow(url: str, tls: ssl.SSLContext | None = None) -> str:
    """The browser's part: the authorization request, and where the provider sends it back."""
    async with aiohttp.ClientSession() as http, \
            http.get(url, allow_redirects=False, ssl=tls or True) as response:
        assert response.status == 302, (response.status, await response.text())
        return response.headers["Location"]


# ---------------------------------------------------------------------------------------------------------
# A provider that does everything right
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "post", "none"])
async def test_code_flow_with_pkce_gets_the_claims_through_openid_client(
        provider: StubProvider, tmp_path: Path, auth: ClientAuthMethod) -> None:
    client = (RpClient(provider.issuer, PUBLIC_CLIENT_ID, REDIRECT_URI, auth="none") if auth == "none"
              else confidential(provider, auth))
    start = await rp_start(client, tmp_path, login_hint="alice", scope="openid email",
                           extra={"prompt": "login"})
    sent = provider.authorize_requests  # nothing yet: rp_start only builds the URL
    assert sent == []
    params = start.params
    assert params["code_challenge_method"] == "S256"
    assert (params["login_hint"], params["prompt"]) == ("alice", "login")
    assert (params["redirect_uri"], params["response_type"]) == (REDIRECT_URI, "code")
    assert min(len(params["state"]), len(params["nonce"])) >= 20
    # The verifier is the RP's secret until the token request: on disk for the user only.
    assert start.state_file.stat().st_mode & 0o077 == 0

    callback = await follow(start.url)
    result = await rp_finish(client, start.state_file, callback)

    assert result.ok, result
    assert result.claims is not None
    assert result.claims["sub"] == USER["sub"]
    assert result.claims["nonce"] == start.nonce
    assert result.claims["aud"] == client.client_id
    assert result.claims["iss"] == provider.issuer
    assert result.claims["amr"] == ["mfa", "pop"]
    assert result.userinfo == USER
    assert result.token["token_type"].lower() == "bearer"
    assert result.token["id_token_header"]["alg"] == "ES256"
    # openid-client authenticated the way it was told, and proved the PKCE verifier.
    [request] = provider.token_requests
    assert request["client_auth"] == {"basic": "client_secret_basic", "post": "client_secret_post",
                                      "none": "none"}[auth]
    assert s256(request["code_verifier"]) == params["code_challenge"]
    assert request["redirect_uri"] == REDIRECT_URI
    assert "client_secret" not in request or auth == "post"


async def test_max_age_is_sent_and_auth_time_checked(provider: StubProvider, tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path, max_age=600)
    assert start.params["max_age"] == "600"
    result = await rp_finish(client, start.state_file, await follow(start.url))
    assert result.ok, result


# ---------------------------------------------------------------------------------------------------------
# openid-client refuses a wrong provider: the harness does not let things through
# ---------------------------------------------------------------------------------------------------------


CLAIM = "OAUTH_JWT_CLAIM_COMPARISON_FAILED"


# The signature case holds only because rp.mjs turns openid-client's signature check on (it skips it by
# default for an ID token from the token endpoint): without it, a token signed by anyone would pass.
@pytest.mark.parametrize(("tamper", "code", "reason"), [
    ("nonce", CLAIM, 'ID Token "nonce" claim'),
    ("no-nonce", "OAUTH_INVALID_RESPONSE", 'JWT "nonce" (nonce) claim missing'),
    ("aud", CLAIM, '"aud" (audience)'),
    ("iss", CLAIM, '"iss" (issuer)'),
    ("expired", "OAUTH_JWT_TIMESTAMP_CHECK_FAILED", '"exp" (expiration time)'),
    ("foreign-key", "OAUTH_INVALID_RESPONSE", "JWT signature verification failed"),
])
async def test_openid_client_refuses_a_wrong_id_token(provider: StubProvider, tmp_path: Path, tamper: str,
                                                      code: str, reason: str) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path)
    callback = await follow(start.url)
    provider.tamper = tamper
    result = await rp_finish(client, start.state_file, callback)
    assert not result.ok
    assert (result.claims, result.userinfo) == (None, None)
    assert reason in (result.message or ""), result
    assert (result.error, result.code) == ("ClientError", code), result
    assert len(provider.token_requests) == 1  # the token came, and was refused
    assert provider.userinfo_requests == 0  # nothing used once the ID token failed


async def test_openid_client_refuses_userinfo_for_another_subject(provider: StubProvider,
                                                                  tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path)
    callback = await follow(start.url)
    provider.tamper = "userinfo-sub"
    result = await rp_finish(client, start.state_file, callback)
    assert not result.ok
    assert '"sub"' in (result.message or ""), result
    assert provider.userinfo_requests == 1


async def test_a_wrong_code_verifier_is_invalid_grant(provider: StubProvider, tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path)
    callback = await follow(start.url)
    # Another verifier than the one the challenge was made from, as an attacker with a stolen code has.
    saved = json.loads(start.state_file.read_text())
    saved["code_verifier"] = b64url(secrets.token_bytes(32))
    start.state_file.write_text(json.dumps(saved))

    result = await rp_finish(client, start.state_file, callback)
    assert not result.ok
    assert result.error == "ResponseBodyError", result
    assert (result.oauth_error, result.status) == ("invalid_grant", 400)
    assert result.message is not None


async def test_a_replayed_code_is_invalid_grant(provider: StubProvider, tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path)
    callback = await follow(start.url)
    assert (await rp_finish(client, start.state_file, callback)).ok
    again = await rp_finish(client, start.state_file, callback)
    assert not again.ok
    assert again.oauth_error == "invalid_grant", again


async def test_a_bad_client_secret_is_invalid_client(provider: StubProvider, tmp_path: Path) -> None:
    good = confidential(provider)
    start = await rp_start(good, tmp_path)
    callback = await follow(start.url)
    bad = RpClient(provider.issuer, CLIENT_ID, REDIRECT_URI, client_secret="not-it", auth="basic")
    result = await rp_finish(bad, start.state_file, callback)
    assert not result.ok
    assert (result.oauth_error, result.status) == ("invalid_client", 401), result


async def test_a_callback_with_another_state_never_reaches_the_token_endpoint(
        provider: StubProvider, tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path)
    callback = urlsplit(await follow(start.url))
    query = {**{k: v[0] for k, v in parse_qs(callback.query).items()}, "state": "forged"}
    forged = callback._replace(query=urlencode(query)).geturl()
    result = await rp_finish(client, start.state_file, forged)
    assert not result.ok
    assert '"state"' in (result.message or ""), result
    assert provider.token_requests == []


async def test_an_error_redirect_is_reported(provider: StubProvider, tmp_path: Path) -> None:
    client = confidential(provider)
    start = await rp_start(client, tmp_path, extra={"code_challenge_method": "plain"})
    result = await rp_finish(client, start.state_file, await follow(start.url))
    assert not result.ok
    assert (result.error, result.oauth_error) == ("AuthorizationResponseError", "invalid_request"), result


async def test_an_https_issuer_is_trusted_through_ca_file_only(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    stub = await StubProvider(tls=ca.server_context("localhost", alpn=["http/1.1"])).start()
    try:
        trusting = RpClient(stub.issuer, CLIENT_ID, REDIRECT_URI, client_secret=CLIENT_SECRET,
                            ca_file=ca.ca_file)
        start = await rp_start(trusting, tmp_path)
        browser = ssl.create_default_context(cafile=ca.ca_file)
        result = await rp_finish(trusting, start.state_file, await follow(start.url, browser))
        assert result.ok, result
        # Without the CA, openid-client trusts nothing the test CA signed: discovery itself fails.
        untrusting = RpClient(stub.issuer, CLIENT_ID, REDIRECT_URI, client_secret=CLIENT_SECRET)
        with pytest.raises(RpError, match="certificate"):
            await rp_start(untrusting, tmp_path)
    finally:
        await stub.close()


async def test_a_hung_token_endpoint_is_an_error_not_a_hang(provider: StubProvider, tmp_path: Path) -> None:
    client = RpClient(provider.issuer, CLIENT_ID, REDIRECT_URI, client_secret=CLIENT_SECRET, http_timeout_s=1)
    start = await rp_start(client, tmp_path)
    callback = await follow(start.url)
    provider.tamper = "slow-token"
    result = await rp_finish(client, start.state_file, callback, timeout_s=20)
    assert (result.error, result.code) == ("ClientError", "OAUTH_TIMEOUT"), result
    assert result.elapsed_s < 10, result
    # Without an HTTP timeout, openid-client would wait (30 s by default): the driver's own timeout ends
    # the node process (its whole process group) and raises, so a hung provider cannot hang the suite.
    patient = RpClient(provider.issuer, CLIENT_ID, REDIRECT_URI, client_secret=CLIENT_SECRET)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await rp_finish(patient, start.state_file, callback, timeout_s=1.5)
    assert time.monotonic() - started < 5
