"""The harness that drives a real relying party, Apache 2 with mod_auth_openidc (testkit/apache.py), with
headless Chromium works, proved against a stub OpenID Provider written here, before pushauth's own
provider exists (issue 18).

The stub is the least a provider must be for mod_auth_openidc: discovery, a JWKS with one ES256 key, an
authorize endpoint that shows a form with a "Sign in" button (its POST answers with a redirect to the
redirect URI, carrying the code and the state), a token endpoint (client_secret_basic; the PKCE S256
verifier checked when a challenge was sent) that returns an ES256 ID token with the nonce, and userinfo. It
records what it was sent, so the tests also see what the relying party asked for. `bad` makes it sign the
ID token wrongly in one way, and Apache must then refuse the sign-in with an error page.

Not skipped when Apache or mod_auth_openidc is missing: ApacheRP fails and says what to install (`make test`
installs both through scripts/ensure-apache-oidc), so a run cannot pass without the relying party.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from browser import chromium, new_page, screenshot
from joserfc import jwt
from joserfc.jwk import ECKey
from playwright.async_api import Browser, Page, expect

from testkit.apache import ApacheRP, quote

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "apache-rp"
CLIENT_SECRET = "apache-rp-secret"
SUB = "alice"
AMR = ["mfa", "pop", "hwk"]
ACR = "urn:pushauth:acr:push"


# ---------------------------------------------------------------------------------------------------------
# The stub OpenID Provider
# ---------------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _es256_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": "ES256"})


@dataclass
class Pending:
    """An authorization request between the form and its POST, then a code until it is redeemed."""

    redirect_uri: str
    state: str | None
    nonce: str | None
    challenge: str | None
    method: str | None


@dataclass
class StubProvider:
    redirect_uri: str = ""  # the one registered redirect URI (set once Apache's port is known)
    # How the ID token is wrong: None, "other-key", "nonce", "audience".
    bad: str | None = None
    key: ECKey = field(default_factory=lambda: _es256_key("stub-1"))
    port: int = 0
    authorize_queries: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    userinfo_requests: int = 0
    _pending: dict[str, Pending] = field(default_factory=dict)
    _codes: dict[str, Pending] = field(default_factory=dict)
    _tokens: set[str] = field(default_factory=set)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/authorize", self.approve)
        app.router.add_post("/token", self.token)
        app.router.add_get("/userinfo", self.userinfo)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "amr", "acr", "auth_time"],
        })

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_queries.append(query)
        if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != self.redirect_uri:
            # Never redirect to a URI that is not registered: say so on the page.
            return web.Response(status=400, text="unknown client or redirect_uri")
        if query.get("response_type") != "code" or "openid" not in query.get("scope", "").split():
            return web.Response(status=400, text="unsupported request")
        ticket = secrets.token_urlsafe(16)
        self._pending[ticket] = Pending(self.redirect_uri, query.get("state"), query.get("nonce"),
                                        query.get("code_challenge"), query.get("code_challenge_method"))
        form = (f'<!doctype html><html><head><title>stub provider</title></head><body>'
                f'<h1>Stub provider</h1><form method="post" action="/authorize">'
                f'<input type="hidden" name="ticket" value="{ticket}">'
                f'<button type="submit">Sign in</button></form></body></html>')
        return web.Response(text=form, content_type="text/html")

    async def approve(self, request: web.Request) -> web.Response:
        pending = self._pending.pop(str((await request.post()).get("ticket", "")), None)
        if pending is None:
            return web.Response(status=400, text="no such request")
        code = secrets.token_urlsafe(24)
        self._codes[code] = pending
        answer = {"code": code} | ({"state": pending.state} if pending.state is not None else {})
        raise web.HTTPFound(f"{pending.redirect_uri}?{urlencode(answer)}")

    def _client_ok(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return False
        return client_id == CLIENT_ID and hmac.compare_digest(secret, CLIENT_SECRET)

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        basic = request.headers.get("Authorization", "").lower().startswith("basic ")
        seen: dict[str, Any] = {"basic": basic, "form": sorted(form), "pkce": None}
        self.token_requests.append(seen)
        if not self._client_ok(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self._codes.pop(form.get("code", ""), None)  # single use
        if (form.get("grant_type") != "authorization_code" or grant is None
                or form.get("redirect_uri") != grant.redirect_uri):
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            expected = _b64url(hashlib.sha256(verifier.encode()).digest())
            seen["pkce"] = grant.method == "S256" and hmac.compare_digest(expected, grant.challenge)
            if not seen["pkce"]:
                return web.json_response({"error": "invalid_grant"}, status=400)
        access_token = secrets.token_urlsafe(24)
        self._tokens.add(access_token)
        return web.json_response({"access_token": access_token, "token_type": "Bearer", "expires_in": 300,
                                  "id_token": self.id_token(grant.nonce)},
                                 headers={"Cache-Control": "no-store"})

    def id_token(self, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": SUB, "aud": CLIENT_ID, "iat": now,
                                  "exp": now + 300, "auth_time": now, "amr": AMR, "acr": ACR}
        if nonce is not None:
            claims["nonce"] = nonce
        key = self.key
        if self.bad == "other-key":
            key = _es256_key(self.key.kid or "stub-1")  # same kid, another key: only the signature is wrong
        elif self.bad == "nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        elif self.bad == "audience":
            claims["aud"] = "another-client"
        return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["ES256"])

    async def userinfo(self, request: web.Request) -> web.Response:
        self.userinfo_requests += 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self._tokens:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"sub": SUB})


@asynccontextmanager
async def running(stub: StubProvider) -> AsyncIterator[StubProvider]:
    runner = web.AppRunner(stub.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        stub.port = runner.addresses[0][1]
        yield stub
    finally:
        await runner.cleanup()


@asynccontextmanager
async def relying_party(tmp_path: Path, bad: str | None = None, *, extra: Sequence[str] = (),
                        server_extra: Sequence[str] = ()) -> AsyncIterator[tuple[StubProvider, ApacheRP]]:
    async with running(StubProvider(bad=bad)) as stub:
        with ApacheRP(tmp_path / "apache", stub.issuer, CLIENT_ID, CLIENT_SECRET, extra=extra,
                      server_extra=server_extra) as rp:
            stub.redirect_uri = rp.redirect_uri
            yield stub, rp


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def sign_in_at_the_stub(page: Page, rp: ApacheRP, stub: StubProvider) -> None:
    """Open /private/, be sent to the stub, press its "Sign in"."""
    await page.goto(rp.url)
    await expect(page.get_by_role("heading", name="Stub provider")).to_be_visible()
    assert page.url.startswith(f"{stub.issuer}/authorize?"), page.url
    await page.get_by_role("button", name="Sign in").click()


# ---------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------


async def test_a_browser_signs_in_through_apache_and_reads_the_claims(tmp_path: Path,
                                                                      browser: Browser) -> None:
    async with relying_party(tmp_path) as (stub, rp), new_page(browser) as (page, problems):
        await sign_in_at_the_stub(page, rp, stub)
        await expect(page.locator("#private")).to_be_visible()
        await screenshot(page, "oidc-apache-harness-private")
        assert page.url == rp.url
        assert await page.locator("#claim-sub").text_content() == SUB
        assert await page.locator("#claim-iss").text_content() == stub.issuer
        assert await page.locator("#claim-aud").text_content() == CLIENT_ID
        # mod_auth_openidc joins an array claim with "," (OIDCClaimDelimiter).
        assert await page.locator("#claim-amr").text_content() == ",".join(AMR)
        assert await page.locator("#claim-acr").text_content() == ACR
        assert (await page.locator("#remote-user").text_content() or "").startswith(SUB)
        assert not problems.seen, problems.seen

        # What the relying party asked for: the code flow with PKCE S256, a state and a nonce.
        [query] = stub.authorize_queries
        asked = {name: query.get(name) for name in
                 ("response_type", "scope", "client_id", "redirect_uri", "code_challenge_method")}
        assert asked == {"response_type": "code", "scope": "openid", "client_id": CLIENT_ID,
                         "redirect_uri": rp.redirect_uri, "code_challenge_method": "S256"}, query
        assert all(query.get(name) for name in ("code_challenge", "state", "nonce")), query
        [token] = stub.token_requests
        assert token["basic"], token
        assert token["pkce"] is True, token
        assert "client_secret" not in token["form"], token  # client_secret_basic, not _post

        # Its cookies work in Chromium on http://127.0.0.1: the session is kept, the state cookie is gone.
        cookies = {cookie.get("name"): cookie for cookie in await page.context.cookies(rp.base_url)}
        session = cookies.get("mod_auth_openidc_session")
        assert session is not None, cookies
        assert session.get("httpOnly"), session
        assert session.get("sameSite") == "Lax", session
        assert not any(str(name).startswith("mod_auth_openidc_state") for name in cookies), cookies
        await page.goto(rp.url)
        await expect(page.locator("#claim-sub")).to_have_text(SUB)
        assert len(stub.authorize_queries) == 1  # signed in already: not sent to the provider again
    assert "state not found" not in rp.log_text(), rp.log_tail()


# Each wrong ID token, and what mod_auth_openidc logs when it refuses it: the reason, not just any failure.
REFUSALS = {
    "other-key": "id_token signature could not be validated",
    "nonce": "oidc_proto_validate_nonce: the nonce value",
    "audience": "did not match the \"aud\" claim value (another-client)",
}


@pytest.mark.parametrize("bad", sorted(REFUSALS))
async def test_apache_refuses_an_id_token_it_must_not_trust(tmp_path: Path, browser: Browser,
                                                             bad: str) -> None:
    async with relying_party(tmp_path, bad) as (stub, rp), new_page(browser) as (page, _):
        await sign_in_at_the_stub(page, rp, stub)
        # mod_auth_openidc's own error page, on the relying party, instead of /private/.
        await expect(page.get_by_text("OpenID Connect Provider error")).to_be_visible()
        await screenshot(page, f"oidc-apache-harness-refused-{bad}")
        assert urlsplit(page.url).port == rp.port, page.url
        await expect(page.locator("#private")).to_have_count(0)
        assert len(stub.token_requests) == 1  # the code was redeemed: the ID token itself was refused
        names = {cookie.get("name") for cookie in await page.context.cookies(rp.base_url)}
        assert "mod_auth_openidc_session" not in names, names
        assert REFUSALS[bad] in rp.log_text(), rp.log_tail()


async def test_extra_directives_reach_the_authorization_request(tmp_path: Path) -> None:
    """The provider's tests will ask for login_hint, acr_values or prompt: per location and server-wide."""
    extra = ["OIDCPathAuthRequestParams login_hint=alice"]
    server_extra = ["OIDCAuthRequestParams acr_values=urn%3Apushauth%3Amfa"]
    # A browser-like request (Accept: text/html) is redirected to the provider, not answered 401.
    async with (relying_party(tmp_path, extra=extra, server_extra=server_extra) as (stub, rp),
                aiohttp.ClientSession() as http,
                http.get(rp.url, headers={"Accept": "text/html"}, allow_redirects=False) as resp):
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(f"{stub.issuer}/authorize?"), location
    query = {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}
    assert query.get("login_hint") == "alice", query
    assert query.get("acr_values") == "urn:pushauth:mfa", query


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """The process has exited (no /proc entry, or a zombie waiting for its parent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_apache_ends_when_the_test_process_is_killed(tmp_path: Path) -> None:
    """Apache drops root, which clears the parent-death signal: the guard must still end it."""
    workdir = tmp_path / "apache"
    script = ("import os, signal, sys\n"
              "from pathlib import Path\n"
              "from testkit.apache import ApacheRP\n"
              "rp = ApacheRP(Path(sys.argv[1]), 'http://127.0.0.1:9', 'c', 's').start()\n"
              "print(rp.apache_pid(), flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(workdir)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout.strip())
    assert _gone(pid), f"Apache {pid} outlived the test process that started it"
    assert "shutdown" in (workdir / "error.log").read_text()  # SIGTERM, a clean stop


def test_stop_kills_an_apache_whose_guard_was_killed(tmp_path: Path) -> None:
    rp = ApacheRP(tmp_path / "apache", "http://127.0.0.1:9", "c", "s").start()
    try:
        pid = rp.apache_pid()
        assert pid is not None
        assert rp.child is not None
        rp.child.kill9()  # the guard, with no chance to pass anything on
        assert not _gone(pid, 0.5)
    finally:
        rp.stop()
    assert _gone(pid)
    assert rp.apache_pid() is None


def test_config_values_cannot_break_out_of_their_directive() -> None:
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with pytest.raises(ValueError, match="line break"):
        quote("secret\nOIDCSSLValidateServer Off")
