"""The OpenID Provider (pushauth/oidc/, pushauth/web/oidc.py): the authorization code flow with PKCE, driven
here by a scripted browser (aiohttp with a cookie jar) and the reference phone, and every negative case the
specifications name: unknown client, unregistered redirect_uri (shown, never redirected), missing PKCE for a
public client, wrong verifier, reused code (and what it gave revoked), wrong redirect_uri at the token
endpoint, bad client secret, state and nonce round trips; prompt, max_age and acr_values against a
remembered browser; the auth-failure block; the sign-in page's words. Real relying parties are in
tests/test_oidc_rp.py (openid-client) and tests/test_oidc_apache.py (Apache mod_auth_openidc).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from oidc_support import REDIRECT, Browser, approve_on_phone, auth_params, form_field, pkce
from structlog.testing import capture_logs
from support import AdminClient, Clock, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from pushauth.web.oidc import PROVIDER
from pushauth.web.state import RUNTIME
from testkit import slapd
from testkit.fakes.sandbox import TestCA

USER = "erin@nhs.net"
SECRET = "wiki-client-secret-" + "x" * 24
CLIENTS = [
    {"client_id": "wiki", "name": "Staff wiki", "application": "webmail",
     "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [REDIRECT], "first_factor": "passwordless"},
    {"client_id": "spa", "name": "Rota app", "application": "webmail", "redirect_uris": [REDIRECT],
     "first_factor": "passwordless"},
]


@dataclass
class OP:
    server: RunningServer
    http: aiohttp.ClientSession
    login: LoginFlow
    admin: AdminClient

    @property
    def url(self) -> str:
        return self.server.url


@contextlib.asynccontextmanager
async def running_op(redis_url: str, keyring: KeyRingHolder, *, oidc: dict[str, Any] | None = None,
                     **sections: Any) -> AsyncIterator[OP]:
    settings = make_settings(redis_url, free_port(), quiet_detection=False,
                             oidc={"enabled": True, "clients": CLIENTS, **(oidc or {})}, **sections)
    server = await start_server(settings, keyring)
    try:
        async with aiohttp.ClientSession() as http:
            yield OP(server, http, LoginFlow(http, server.url), AdminClient(http, server.url))
    finally:
        await server.close()


@pytest.fixture
async def op(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[OP]:
    async with running_op(redis_url, keyring) as running:
        yield running


async def full_signin(op: OP, browser: Browser, phone: Phone, params: dict[str, str]) -> dict[str, list[str]]:
    """authorize -> user name -> the number page -> the phone approves -> the redirect with the code."""
    status, page, _ = await browser.authorize(**params)
    assert status == 200, page
    status, _, location = await browser.sign_in(page, USER)
    assert (status, location.split("?")[0]) == (303, "/oidc/wait"), location
    status, page, _ = await browser.get(location)
    assert status == 200, page
    return parse_qs(urlsplit(await approve_the_number(browser, phone, page)).query)


async def approve_the_number(browser: Browser, phone: Phone, page: str) -> str:
    """The number page -> the phone approves with that number -> the redirect to the client (Location)."""
    number = re.search(r'<p class="number"[^>]*><strong>(\d+)</strong>', page)
    assert number, page
    refresh = re.search(r'http-equiv="refresh" content="1; url=([^"]+)"', page)
    assert refresh, page
    approving = asyncio.create_task(approve_on_phone(phone, number.group(1)))
    status, _, location = await browser.get(html.unescape(refresh.group(1)))
    await approving
    assert status == 303, location
    assert location.startswith(REDIRECT + "?"), location
    return location


async def token(op: OP, form: dict[str, str], *, basic: tuple[str, str] | None = ("wiki", SECRET)
                ) -> tuple[int, dict[str, Any]]:
    headers = {}
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    async with op.http.post(op.url + "/oidc/token", data=form, headers=headers) as resp:
        return resp.status, await resp.json()


async def jwks(op: OP) -> KeySet:
    async with op.http.get(op.url + "/.well-known/openid-configuration") as resp:
        meta = await resp.json()
    async with op.http.get(meta["jwks_uri"]) as resp:
        return KeySet.import_key_set(await resp.json())


@pytest.fixture
async def browser(op: OP) -> AsyncIterator[Browser]:
    b = Browser(op.url)
    yield b
    await b.close()


@pytest.fixture
async def phone(op: OP) -> Phone:
    return await Phone.enroll(await op.login.enroll_uri(USER), session=op.http)


async def test_discovery_names_the_endpoints_and_what_is_supported(op: OP) -> None:
    async with op.http.get(op.url + "/.well-known/openid-configuration") as resp:
        assert resp.status == 200
        meta = await resp.json()
    assert meta["issuer"] == op.url
    assert meta["authorization_endpoint"] == op.url + "/oidc/authorize"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post",
                                                                   "none"}


async def test_code_flow_with_pkce_gives_a_verified_id_token(op: OP, browser: Browser, phone: Phone) -> None:
    verifier, challenge = pkce()
    params = auth_params(code_challenge=challenge, code_challenge_method="S256")
    answer = await full_signin(op, browser, phone, params)
    assert answer["state"] == [params["state"]]
    assert answer["iss"] == [op.url]  # RFC 9207
    status, body = await token(op, {"grant_type": "authorization_code", "code": answer["code"][0],
                                    "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    claims = jwt.decode(body["id_token"], await jwks(op), algorithms=["ES256"]).claims
    assert claims["iss"] == op.url
    assert claims["aud"] == "wiki"
    assert claims["sub"] == USER
    assert claims["nonce"] == params["nonce"]
    assert claims["amr"] == ["pop", "swk"]  # passwordless: the phone only
    assert claims["acr"] == "https://refeds.org/profile/sfa"
    async with op.http.get(op.url + "/oidc/userinfo",
                           headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["sub"] == USER


async def test_a_public_client_must_use_pkce(op: OP, browser: Browser) -> None:
    status, _, location = await browser.authorize(**auth_params("spa"))
    assert status == 303
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"]


async def test_unknown_client_and_unregistered_redirect_are_shown_not_redirected(op: OP,
                                                                                  browser: Browser) -> None:
    status, page, location = await browser.authorize(**auth_params("nobody"))
    assert (status, location) == (400, "")
    assert "not registered" in page
    status, page, location = await browser.authorize(**{**auth_params(), "redirect_uri": "https://evil.example/"})
    assert (status, location) == (400, "")
    assert "evil.example" not in page


@pytest.mark.parametrize(("change", "error"), [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "profile"}, "invalid_scope"),
    ({"code_challenge_method": "plain", "code_challenge": "x" * 43}, "invalid_request"),
    ({"prompt": "none"}, "login_required"),
])
async def test_bad_requests_go_back_to_the_client_with_their_state(browser: Browser, change: dict[str, str],
                                                                   error: str) -> None:
    params = {**auth_params(), **change}
    status, _, location = await browser.authorize(**params)
    assert status == 303, location
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == [error]
    assert query["state"] == [params["state"]]


async def test_token_endpoint_refuses_what_it_must(op: OP, browser: Browser, phone: Phone) -> None:
    verifier, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    code = answer["code"][0]
    good = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    status, body = await token(op, good, basic=("wiki", "wrong-secret"))
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await token(op, good, basic=("nobody", SECRET))
    assert (status, body["error"]) == (401, "invalid_client")
    # The code was not spent by the refused client authentication: a wrong verifier spends it.
    status, body = await token(op, {**good, "code_verifier": pkce()[0]})
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await token(op, good)
    assert (status, body["error"]) == (400, "invalid_grant")  # single use, even after a failed exchange


async def test_a_replayed_code_revokes_the_token_it_gave(op: OP, browser: Browser, phone: Phone) -> None:
    verifier, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    form = {"grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    status, first = await token(op, form)
    assert status == 200, first
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    async with op.http.get(op.url + "/oidc/userinfo", headers=bearer) as resp:
        assert resp.status == 200
    status, again = await token(op, form)
    assert (status, again["error"]) == (400, "invalid_grant")
    async with op.http.get(op.url + "/oidc/userinfo", headers=bearer) as resp:
        assert resp.status == 401  # revoked


async def test_redirect_uri_must_match_at_the_token_endpoint(op: OP, browser: Browser, phone: Phone) -> None:
    verifier, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    status, body = await token(op, {"grant_type": "authorization_code", "code": answer["code"][0],
                                    "redirect_uri": REDIRECT + "x", "code_verifier": verifier})
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_client_secret_post_and_a_missing_verifier(op: OP, browser: Browser, phone: Phone) -> None:
    _, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    status, body = await token(op, {"grant_type": "authorization_code", "code": answer["code"][0],
                                    "redirect_uri": REDIRECT, "client_id": "wiki", "client_secret": SECRET},
                               basic=None)
    assert (status, body["error"]) == (400, "invalid_grant")  # authenticated, but no verifier


async def test_not_me_ends_on_a_denial_page_and_alerts(op: OP, browser: Browser, phone: Phone) -> None:
    status, page, _ = await browser.authorize(**auth_params())
    status, _, location = await browser.sign_in(page, USER)
    status, page, _ = await browser.get(location)
    refresh = re.search(r'url=([^"]+)"', page)
    assert refresh
    denying = asyncio.create_task(approve_on_phone(phone, None, deny="not_me"))
    status, page, location = await browser.get(html.unescape(refresh.group(1)))
    await denying
    assert (status, location) == (403, "")
    assert "did not request this sign-in" in page
    [alert] = await op.admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("denied_not_me", "critical")


async def test_a_signin_is_bound_to_its_browser_and_its_form(op: OP, browser: Browser, phone: Phone) -> None:
    status, page, _ = await browser.authorize(**auth_params())
    other = Browser(op.url)
    try:
        # Another browser (no cookie) cannot use the sign-in, even with its id and CSRF token.
        status, _, _ = await other.sign_in(page, USER)
        assert status == 400
        status, _, _ = await browser.post("/oidc/signin", {"signin": form_field(page, "signin"), "csrf": "x",
                                                            "user": USER})
        assert status == 400
        assert await phone.pending() == []
    finally:
        await other.close()


async def test_pages_are_locked_down(op: OP, browser: Browser) -> None:
    async with browser.session.get(op.url + "/oidc/authorize?" + urlencode(auth_params())) as resp:
        csp = resp.headers["Content-Security-Policy"]
        cookie = resp.headers.get("Set-Cookie", "")
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'none'" in csp
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


async def test_a_remembered_browser_signs_in_without_the_phone(op: OP, browser: Browser,
                                                                 phone: Phone) -> None:
    verifier, challenge = pkce()
    pk = {"code_challenge": challenge, "code_challenge_method": "S256"}
    await full_signin(op, browser, phone, auth_params(**pk))
    assert any(c.key == "pushauth_oidc_remember" for c in browser.session.cookie_jar)
    # The same browser again: no prompt, straight back with a code.
    status, page, _ = await browser.authorize(**auth_params(**pk))
    status, _, location = await browser.sign_in(page, USER)
    status, _, location = await browser.get(location)
    assert status == 303, location
    code = parse_qs(urlsplit(location).query)["code"][0]
    assert await phone.pending() == []
    status, body = await token(op, {"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert status == 200, body
    claims = jwt.decode(body["id_token"], await jwks(op), algorithms=["ES256"]).claims
    assert claims["acr"] == "https://refeds.org/profile/sfa"  # no phone this time: no second factor claimed
    assert "amr" not in claims
    # Another browser (no cookies) is prompted as usual.
    other = Browser(op.url)
    try:
        status, page, _ = await other.authorize(**auth_params(**pk))
        status, _, location = await other.sign_in(page, USER)
        status, page, _ = await other.get(location)
        assert "Approve on your phone" in page
    finally:
        await other.close()


async def test_a_signin_logs_no_code_token_or_secret(op: OP, browser: Browser, phone: Phone) -> None:
    verifier, challenge = pkce()
    with capture_logs() as events:
        answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                                   code_challenge_method="S256"))
        status, body = await token(op, {"grant_type": "authorization_code", "code": answer["code"][0],
                                        "redirect_uri": REDIRECT, "code_verifier": verifier})
        await token(op, {"grant_type": "authorization_code", "code": answer["code"][0],
                         "redirect_uri": REDIRECT, "code_verifier": verifier})  # a replay, refused
    assert status == 200, body
    assert events, "the server logs its requests"
    text = "\n".join(repr(e) for e in events)
    for name, secret in {"code": answer["code"][0], "access token": body["access_token"],
                         "ID token": body["id_token"], "client secret": SECRET, "verifier": verifier,
                         "browser cookie": next(c.value for c in browser.session.cookie_jar
                                                if c.key == "pushauth_oidc")}.items():
        assert secret not in text, f"the {name} reached the logs"


# -- prompt, max_age, acr_values against a remembered browser ------------------------------------------------

MFA = "https://refeds.org/profile/mfa"


async def exchange(op: OP, location: str, verifier: str) -> dict[str, Any]:
    """The code in a redirect to the client -> the ID token's claims, verified."""
    code = parse_qs(urlsplit(location).query)["code"][0]
    status, body = await token(op, {"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert status == 200, body
    return dict(jwt.decode(body["id_token"], await jwks(op), algorithms=["ES256"]).claims)


async def remember_this_browser(op: OP, browser: Browser, phone: Phone) -> dict[str, Any]:
    """A sign-in approved on the phone, which makes the browser a remembered one: its ID token's claims."""
    verifier, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    assert any(c.key == "pushauth_oidc_remember" for c in browser.session.cookie_jar)
    return await exchange(op, f"{REDIRECT}?code={answer['code'][0]}", verifier)


async def sign_in_again(browser: Browser, **extra: str) -> tuple[str, str]:
    """authorize (with `extra`) -> user name -> /oidc/wait: ("prompted", the number page) when the phone is
    asked, ("skipped", the redirect to the client) when the remembered browser stood for it."""
    status, page, _ = await browser.authorize(**auth_params(**extra))
    assert status == 200, page
    status, _, location = await browser.sign_in(page, USER)
    assert status == 303, location
    status, page, location = await browser.get(location)
    if status == 303:
        return "skipped", location
    assert status == 200, page
    assert "Approve on your phone" in page, page
    return "prompted", page


@pytest.mark.parametrize("extra", [{"prompt": "login"}, {"max_age": "0"}, {"acr_values": MFA},
                                   {"acr_values": f"urn:example:loa:4 {MFA}"}],
                         ids=["prompt=login", "max_age=0", "acr mfa", "acr unknown then mfa"])
async def test_a_remembered_browser_does_not_stand_for_the_phone_when_the_client_asks_for_it(
        op: OP, browser: Browser, phone: Phone, extra: dict[str, str]) -> None:
    first = await remember_this_browser(op, browser, phone)
    verifier, challenge = pkce()
    pk = {"code_challenge": challenge, "code_challenge_method": "S256"}
    what, page = await sign_in_again(browser, **extra, **pk)
    assert what == "prompted"
    claims = await exchange(op, await approve_the_number(browser, phone, page), verifier)
    # acr_values is a voluntary claim (OpenID Connect Core 5.5.1.1): the phone alone is one factor, so a
    # passwordless client asking for mfa still signs in, and is told what it got.
    assert claims["acr"] == "https://refeds.org/profile/sfa"
    assert claims["amr"] == ["pop", "swk"]
    assert claims["auth_time"] >= first["auth_time"]


async def test_max_age_lets_a_remembered_browser_stand_for_the_phone_only_while_its_approval_is_younger(
        op: OP, browser: Browser, phone: Phone, clock: Clock) -> None:
    first = await remember_this_browser(op, browser, phone)
    clock.advance(120)
    verifier, challenge = pkce()
    what, location = await sign_in_again(browser, max_age="3600", code_challenge=challenge,
                                          code_challenge_method="S256")
    assert what == "skipped"
    claims = await exchange(op, location, verifier)
    # No one authenticated just now: auth_time is the phone's approval the remembered browser stands for.
    assert claims["auth_time"] == first["auth_time"]
    assert "amr" not in claims
    what, _ = await sign_in_again(browser, max_age="119", **pkce_params())
    assert what == "prompted"


async def test_without_max_age_a_remembered_browser_claims_its_approval_time(
        op: OP, browser: Browser, phone: Phone, clock: Clock) -> None:
    first = await remember_this_browser(op, browser, phone)
    clock.advance(600)
    verifier, challenge = pkce()
    what, location = await sign_in_again(browser, code_challenge=challenge, code_challenge_method="S256")
    assert what == "skipped"
    assert (await exchange(op, location, verifier))["auth_time"] == first["auth_time"]


def pkce_params() -> dict[str, str]:
    return {"code_challenge": pkce()[1], "code_challenge_method": "S256"}


@pytest.mark.parametrize("max_age", ["-1", "1.5", "ten", "", "\u00b2", "1e3"])
async def test_max_age_must_be_a_non_negative_integer(browser: Browser, max_age: str) -> None:
    params = auth_params(max_age=max_age, **pkce_params())
    status, _, location = await browser.authorize(**params)
    assert status == 303, location
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"]
    assert query["state"] == [params["state"]]


# -- the auth-failure block ----------------------------------------------------------------------------------


async def test_a_bad_client_secret_counts_once_toward_the_auth_failure_block(redis_url: str,
                                                                             keyring: KeyRingHolder) -> None:
    """client_secret_basic (an Authorization header, which the rate_limit middleware counts on a 401) once
    counted twice, blocking a relying party with a stale secret at half the limit; client_secret_post (no
    header) must count too."""
    async with running_op(redis_url, keyring, rate_limits={"auth_failures": 4}) as op:
        form = {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": REDIRECT}
        statuses = [(await token(op, form, basic=("wiki", "wrong-secret")))[0] for _ in range(2)]
        statuses += [(await token(op, {**form, "client_id": "wiki", "client_secret": "wrong-secret"},
                                  basic=None))[0] for _ in range(2)]
        assert statuses == [401, 401, 401, 401], statuses
        status, body = await token(op, form)  # the right secret, but the address is blocked now
        assert (status, body["error"]) == (429, "rate_limited"), body


# -- a replayed code ----------------------------------------------------------------------------------------


async def test_a_replay_during_the_first_exchange_still_revokes_what_it_gives(op: OP, browser: Browser,
                                                                              phone: Phone) -> None:
    """RFC 6749 4.1.2: a code used twice is refused, and what it gave revoked. The replay here arrives while
    the first exchange is between taking the code and issuing its token (once, nothing remembered the code
    as used then: the replay was told "unknown code" and the first exchange's token stood)."""
    verifier, challenge = pkce()
    answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                               code_challenge_method="S256"))
    form = {"grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    store = op.server.app[PROVIDER].store
    issuing, replayed = asyncio.Event(), asyncio.Event()
    issue = store.issue_code_token

    async def issue_after_the_replay(*args: Any, **kwargs: Any) -> Any:
        issuing.set()
        await replayed.wait()
        return await issue(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "issue_code_token", issue_after_the_replay)
        first = asyncio.create_task(token(op, form))
        await asyncio.wait_for(issuing.wait(), 5)
        status, again = await token(op, form)
        replayed.set()
        first_status, first_body = await first
    assert (status, again["error"]) == (400, "invalid_grant")
    if first_status == 200:  # given out, then it must be dead already
        async with op.http.get(op.url + "/oidc/userinfo",
                               headers={"Authorization": f"Bearer {first_body['access_token']}"}) as resp:
            assert resp.status == 401, "the token of a replayed code still works"
    else:
        assert (first_status, first_body["error"]) == (400, "invalid_grant")


# -- the sign-in page ----------------------------------------------------------------------------------------


def user_field(page: str) -> str:
    found = re.search(r'<input id="user" name="user"[^>]* value="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


async def test_login_hint_fills_in_the_user_name(browser: Browser) -> None:
    status, page, _ = await browser.authorize(**auth_params(login_hint=USER, **pkce_params()))
    assert status == 200, page
    assert user_field(page) == USER
    status, page, _ = await browser.authorize(**auth_params(login_hint='a"><script>x', **pkce_params()))
    assert user_field(page) == 'a"><script>x'  # escaped into the field, not the page
    status, page, _ = await browser.authorize(**auth_params(**pkce_params()))
    assert user_field(page) == ""


async def test_an_expired_code_is_refused(redis_url: str, keyring: KeyRingHolder) -> None:
    async with running_op(redis_url, keyring, oidc={"code_ttl_s": 10}) as op:
        phone = await Phone.enroll(await op.login.enroll_uri(USER), session=op.http)
        browser = Browser(op.url)
        try:
            verifier, challenge = pkce()
            answer = await full_signin(op, browser, phone, auth_params(code_challenge=challenge,
                                                                       code_challenge_method="S256"))
        finally:
            await browser.close()
        code = answer["code"][0]
        runtime = op.server.app[RUNTIME]
        key = runtime.keyspace.oidc_code(code)
        assert 0 < await runtime.redis.ttl(key) <= 10  # the code lives code_ttl_s ...
        await runtime.redis.pexpire(key, 1)  # ... and here that time has passed
        await asyncio.sleep(0.05)
        status, body = await token(op, {"grant_type": "authorization_code", "code": code,
                                        "redirect_uri": REDIRECT, "code_verifier": verifier})
        assert (status, body["error"]) == (400, "invalid_grant"), body


async def test_the_browser_cookie_is_secure_under_an_https_issuer(op: OP, redis_url: str,
                                                                   keyring: KeyRingHolder) -> None:
    async def cookie(url: str) -> str:
        query = urlencode(auth_params(**pkce_params()))
        async with aiohttp.ClientSession() as http, \
                http.get(f"{url}/oidc/authorize?{query}", allow_redirects=False) as resp:
            assert resp.status == 200
            [set_cookie] = resp.headers.getall("Set-Cookie")
            return set_cookie

    async with running_op(redis_url, keyring, oidc={"issuer": "https://signin.nhs.example"}) as https_op:
        secure = await cookie(https_op.url)
    plain = await cookie(op.url)  # an http issuer (a test, a laptop): a Secure cookie would never come back
    for set_cookie in (secure, plain):
        assert set_cookie.startswith("pushauth_oidc="), set_cookie
        assert "HttpOnly" in set_cookie
        assert "SameSite=Lax" in set_cookie
        assert "Path=/oidc" in set_cookie
    assert "Secure" in secure
    assert "Secure" not in plain


async def signin_refusal(op: OP, user: str) -> tuple[int, str]:
    """authorize -> the user name: the page that refuses the sign-in, and its status."""
    browser = Browser(op.url)
    try:
        _, page, _ = await browser.authorize(**auth_params(**pkce_params()))
        status, page, _ = await browser.sign_in(page, user)
        found = re.search(r'<p role="alert">([^<]*)</p>', page)
        assert found, page
        return status, html.unescape(found.group(1))
    finally:
        await browser.close()


async def test_locked_and_suspended_say_different_things(redis_url: str, keyring: KeyRingHolder) -> None:
    desk = "Call the IT service desk on 0300 200 3000."
    async with running_op(redis_url, keyring, policy={"user_message": desk}) as op:
        erin = await Phone.enroll(await op.login.enroll_uri(USER), session=op.http)
        finn = "finn@nhs.net"
        await Phone.enroll(await op.login.enroll_uri(finn), session=op.http)
        # Erin says "not me": her prompts are suspended (detection's suspend_on_not_me).
        browser = Browser(op.url)
        try:
            _, page, _ = await browser.authorize(**auth_params(**pkce_params()))
            _, _, location = await browser.sign_in(page, USER)
            _, page, _ = await browser.get(location)
            refresh = re.search(r'url=([^"]+)"', page)
            assert refresh, page
            denying = asyncio.create_task(approve_on_phone(erin, None, deny="not_me"))
            await browser.get(html.unescape(refresh.group(1)))
            await denying
        finally:
            await browser.close()
        status, suspended = await signin_refusal(op, USER)
        assert status == 403
        # The security team locks Finn's account.
        locked_status, _ = await op.admin.call("POST", f"/v1/users/{finn}/lock")
        assert locked_status == 200
        status, locked = await signin_refusal(op, finn)
        assert status == 403
    assert suspended != locked
    assert re.search(r"\blocked\b", locked)
    assert "service desk can unlock" in locked
    assert not re.search(r"\blocked\b", suspended)
    assert "on hold" in suspended
    assert desk in suspended


# -- a directory password first (first_factor = "ldap"), against a real slapd --------------------------------

LDAP_USER, LDAP_PASSWORD = "gwen", "Gwen's directory password 1"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    if (why := slapd.available()) is not None:
        pytest.skip(why)
    ca = TestCA.create(tmp_path_factory.mktemp("ldap-ca"))
    with slapd.Slapd(tmp_path_factory.mktemp("slapd"), ca, {LDAP_USER: LDAP_PASSWORD}) as running:
        yield running


def ldap_client(directory: slapd.Slapd) -> dict[str, Any]:
    client = {**CLIENTS[0], "client_id": "intranet", "name": "Intranet", "first_factor": "ldap"}
    ldap = {"url": directory.ldaps_url, "user_dn": directory.user_dn, "ca_file": str(directory.ca.ca_file)}
    return {"clients": [*CLIENTS, client], "ldap": ldap}


async def password_signin(op: OP, user: str, password: str,
                          browser: Browser | None = None) -> tuple[int, str]:
    """authorize (the ldap client) -> user name and password: the answer's status and page."""
    own = browser is None
    browser = browser or Browser(op.url)
    try:
        _, page, _ = await browser.authorize(**auth_params("intranet", **pkce_params()))
        status, page, _ = await browser.post("/oidc/signin", {
            "signin": form_field(page, "signin"), "csrf": form_field(page, "csrf"), "user": user,
            "password": password})
        return status, page
    finally:
        if own:
            await browser.close()


async def test_an_unknown_user_and_a_wrong_password_look_the_same_and_prompt_nothing(
        redis_url: str, keyring: KeyRingHolder, directory: slapd.Slapd) -> None:
    async with running_op(redis_url, keyring, oidc=ldap_client(directory)) as op:
        phone = await Phone.enroll(await op.login.enroll_uri(LDAP_USER), session=op.http)
        status, wrong = await password_signin(op, LDAP_USER, "not the password")
        assert status == 400
        unknown_user = "hugo"  # in no directory, with no phone
        status, unknown = await password_signin(op, unknown_user, "not the password")
        assert status == 400
        assert await phone.pending() == []

    def blank(page: str, user: str) -> str:  # the sign-in's own ids and the name typed differ, nothing else
        page = re.sub(r'name="(signin|csrf)" value="[^"]*"', r'name="\1" value=""', page)
        return page.replace(f'value="{user}"', 'value=""')

    assert "Wrong user name or password." in wrong
    assert blank(wrong, LDAP_USER) == blank(unknown, unknown_user)


async def test_the_auth_failure_block_applies_to_the_sign_in_page(redis_url: str, keyring: KeyRingHolder,
                                                                 directory: slapd.Slapd) -> None:
    async with running_op(redis_url, keyring, oidc=ldap_client(directory),
                          rate_limits={"auth_failures": 3}) as op:
        browser = Browser(op.url)
        try:
            _, shown, _ = await browser.authorize(**auth_params("intranet", **pkce_params()))
            statuses = [(await password_signin(op, LDAP_USER, f"guess {n}", browser))[0] for n in range(3)]
            assert statuses == [400, 400, 400]
            # The address is blocked now: the page is refused, and so is the right password in a form shown
            # before the block (the middleware refuses it before the handler checks a password or prompts).
            status, _, _ = await browser.authorize(**auth_params("intranet", **pkce_params()))
            assert status == 429
            status, _, _ = await browser.post("/oidc/signin", {
                "signin": form_field(shown, "signin"), "csrf": form_field(shown, "csrf"), "user": LDAP_USER,
                "password": LDAP_PASSWORD})
            assert status == 429
        finally:
            await browser.close()


async def test_a_blocked_browser_is_shown_a_page_and_a_blocked_client_json(redis_url: str,
                                                                           keyring: KeyRingHolder) -> None:
    """The sign-in pages answer a blocked address with a page a person can read (how long, whom to call),
    locked down as the provider's other pages; the token endpoint, a relying party's, keeps the JSON."""
    desk = "Call the IT service desk on 0300 200 3000."
    async with running_op(redis_url, keyring, policy={"user_message": desk},
                          rate_limits={"auth_failures": 2, "auth_failures_window_s": 600}) as op:
        browser = Browser(op.url)
        try:
            _, shown, _ = await browser.authorize(**auth_params(**pkce_params()))
            form = {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": REDIRECT}
            for _ in range(2):  # a relying party with a stale secret, behind the same address
                assert (await token(op, form, basic=("wiki", "wrong-secret")))[0] == 401
            answers = []
            async with browser.session.post(op.url + "/oidc/signin", allow_redirects=False, data={
                    "signin": form_field(shown, "signin"), "csrf": form_field(shown, "csrf"),
                    "user": USER}) as resp:
                answers.append((resp.status, resp.content_type, dict(resp.headers), await resp.text()))
            async with browser.session.get(op.url + "/oidc/authorize?" + urlencode(auth_params()),
                                           allow_redirects=False) as resp:
                answers.append((resp.status, resp.content_type, dict(resp.headers), await resp.text()))
        finally:
            await browser.close()
        for status, content_type, headers, page in answers:
            assert (status, content_type) == (429, "text/html"), page
            assert 590 <= int(headers["Retry-After"]) <= 600, headers
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert "script-src 'none'" in headers["Content-Security-Policy"]
            assert "Wait 10 minutes" in page
            assert desk in page
        async with op.http.post(op.url + "/oidc/token", data=form, headers={
                "Authorization": "Basic " + base64.b64encode(f"wiki:{SECRET}".encode()).decode()}) as resp:
            assert (resp.status, resp.content_type) == (429, "application/json")
            assert (await resp.json())["error"] == "rate_limited"
            assert 590 <= int(resp.headers["Retry-After"]) <= 600


async def test_the_provider_is_off_by_default(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/.well-known/openid-configuration", "/oidc/authorize", "/oidc/jwks"):
            async with http.get(server.url + path, allow_redirects=False) as resp:
                assert resp.status == 404, path
        async with http.post(server.url + "/oidc/token", data={"grant_type": "authorization_code"}) as resp:
            assert resp.status == 404
