"""Microsoft Entra ID's external authentication method (EAM) profile of pushauth's provider, against a fake
Entra built from Microsoft's published provider contract (testkit/fakes/entra.py: no real tenant can be
reached from here). The fake form-posts the authorization request with its `id_token_hint`, the browser
(scripted) shows the number, the phone approves, and the answer pushauth form-posts is checked by the
fake exactly as Entra checks it (RS256 against our JWKS with x5c, iss, aud, sub = the hint's, nonce, one
acr, one amr). A hint from another tenant, one signed by a key Entra does not publish, or one issued too long
ago is refused; a denial on the phone goes back as an error.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from oidc_support import REDIRECT, Browser, approve_on_phone, auth_params
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit.fakes.entra import FakeEntra, fetch_provider_metadata

TENANT, CLIENT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47", "6d3a1b2c-0000-4000-8000-00000000eam1"
USER = "erin@nhs.net"
HINT_SUB = "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ"


@dataclass
class Setup:
    op: RunningServer
    entra: FakeEntra
    phone: Phone


@pytest.fixture
async def setup(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[Setup]:
    async with FakeEntra(TENANT, CLIENT_ID) as entra:
        oidc = {"enabled": True, "entra": {"enabled": True, "client_id": CLIENT_ID, "tenants": [TENANT],
                                           "application": "webmail", "redirect_uri": entra.redirect_uri,
                                           "jwks_url": entra.jwks_url}}
        op = await start_server(make_settings(redis_url, free_port(), quiet_detection=False, oidc=oidc),
                                keyring)
        try:
            async with aiohttp.ClientSession() as http:
                phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
                yield Setup(op, entra, phone)
        finally:
            await op.close()


def form_fields(page: str) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form method="post" action="([^"]+)" id="form-post">', page)
    assert action, page
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields.items()}


async def eam_signin(s: Setup, hint: str, *, deny: bool = False) -> tuple[str, dict[str, str], str, str]:
    """Entra's form post -> the number page -> the phone -> pushauth's form-post answer."""
    nonce, state = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    browser = Browser(s.op.url)
    try:
        params = s.entra.authorization_params(hint, nonce=nonce, state=state)
        status, page, location = await browser.post("/oidc/authorize", params)
        if status == 200:  # refused at once: the answer is already the form post
            action, fields = form_fields(page)
            return action, fields, nonce, state
        assert (status, location.split("?")[0]) == (303, "/oidc/wait"), page
        status, page, _ = await browser.get(location)
        number = re.search(r"<strong>(\d+)</strong>", page)
        refresh = re.search(r'url=([^"]+)"', page)
        assert number, page
        assert refresh, page
        answering = asyncio.create_task(approve_on_phone(s.phone, number.group(1),
                                                         deny="mistake" if deny else None))
        status, page, _ = await browser.get(html.unescape(refresh.group(1)))
        await answering
        assert status == 200, page
        action, fields = form_fields(page)
        return action, fields, nonce, state
    finally:
        await browser.close()


async def test_discovery_satisfies_entra(setup: Setup) -> None:
    meta = await fetch_provider_metadata(setup.op.url + "/.well-known/openid-configuration")
    assert "RS256" in meta["id_token_signing_alg_values_supported"]
    assert "id_token" in meta["response_types_supported"]
    assert "form_post" in meta["response_modes_supported"]
    assert meta["jwks_uri"] == setup.op.url + "/oidc/jwks"


async def test_an_approved_signin_is_answered_as_entra_requires(setup: Setup) -> None:
    hint = setup.entra.hint(HINT_SUB, USER, issued_ago=5, expires_in=-1)  # Entra sends it already expired
    action, fields, nonce, state = await eam_signin(setup, hint)
    assert action == setup.entra.redirect_uri
    claims = await setup.entra.validate_post(fields, provider_issuer=setup.op.url,
                                             provider_jwks_url=setup.op.url + "/oidc/jwks", hint_sub=HINT_SUB,
                                             nonce=nonce, state=state)
    assert claims["sub"] == HINT_SUB
    assert claims["acr"] == "possessionorinherence"
    assert claims["amr"] == ["pop"]


async def test_a_denial_goes_back_as_an_error(setup: Setup) -> None:
    _, fields, _, state = await eam_signin(setup, setup.entra.hint(HINT_SUB, USER), deny=True)
    assert fields["error"] == "access_denied"
    assert fields["state"] == state
    assert "id_token" not in fields


@pytest.mark.parametrize("bad", ["other_tenant", "foreign_key", "too_old", "other_audience"])
async def test_a_bad_hint_is_refused_before_any_prompt(setup: Setup, bad: str) -> None:
    hints = {
        "other_tenant": lambda: setup.entra.hint(HINT_SUB, USER, tid="0000aaaa-0000-4000-8000-00000000beef"),
        "foreign_key": lambda: setup.entra.hint(HINT_SUB, USER, foreign_key=True),
        "too_old": lambda: setup.entra.hint(HINT_SUB, USER, issued_ago=3600, expires_in=-3000),
        "other_audience": lambda: setup.entra.hint(HINT_SUB, USER, aud="another-app"),
    }
    _, fields, _, state = await eam_signin(setup, hints[bad]())
    assert fields["error"] == "invalid_request", fields
    assert fields["state"] == state
    assert await setup.phone.pending() == []


async def test_a_request_without_a_nonce_is_refused(setup: Setup) -> None:
    params = setup.entra.authorization_params(setup.entra.hint(HINT_SUB, USER), nonce="", state="s1")
    browser = Browser(setup.op.url)
    try:
        status, page, _ = await browser.post("/oidc/authorize", params)
    finally:
        await browser.close()
    _, fields = form_fields(page)
    assert (status, fields["error"], fields["state"]) == (200, "invalid_request", "s1")
    assert await setup.phone.pending() == []


async def test_the_answer_page_may_post_only_to_entra(setup: Setup) -> None:
    browser = Browser(setup.op.url)
    try:
        params = setup.entra.authorization_params(setup.entra.hint(HINT_SUB, USER, tid="1" * 8),
                                                  nonce="n", state="s")
        async with browser.session.post(setup.op.url + "/oidc/authorize", data=params) as resp:
            csp = resp.headers["Content-Security-Policy"]
    finally:
        await browser.close()
    assert f"form-action {setup.entra.url}" in csp
    assert "frame-ancestors 'none'" in csp


# -- first_factor = "none": pushauth as the second factor behind an upstream identity provider ---------------
# The upstream here is the same fake (an identity provider whose ID tokens name the user): what matters is
# a hint signed by a configured issuer, for pushauth, recent.


@pytest.fixture
async def behind(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[Setup]:
    async with FakeEntra(TENANT, "pushauth-upstream-audience") as upstream:
        client = {"client_id": "portal", "name": "Staff portal", "application": "webmail",
                  "secret_sha256": [sha256_hex(PORTAL_SECRET)], "redirect_uris": [REDIRECT],
                  "first_factor": "none", "upstream_issuer": upstream.issuer,
                  "upstream_jwks_url": upstream.jwks_url, "upstream_audience": "pushauth-upstream-audience"}
        op = await start_server(make_settings(redis_url, free_port(), oidc={"enabled": True,
                                                                           "clients": [client]}), keyring)
        try:
            async with aiohttp.ClientSession() as http:
                phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
                yield Setup(op, upstream, phone)
        finally:
            await op.close()


PORTAL_SECRET = "portal-secret-" + "q" * 30


async def test_behind_an_upstream_only_the_number_is_asked(behind: Setup) -> None:
    hint = behind.entra.hint("upstream-sub-1", USER)
    browser = Browser(behind.op.url)
    try:
        status, page, location = await browser.authorize(**auth_params("portal", id_token_hint=hint))
        assert (status, location.split("?")[0]) == (303, "/oidc/wait"), page  # no sign-in page at all
        status, page, _ = await browser.get(location)
        number = re.search(r"<strong>(\d+)</strong>", page)
        refresh = re.search(r'url=([^"]+)"', page)
        assert number, page
        assert refresh, page
        answering = asyncio.create_task(approve_on_phone(behind.phone, number.group(1)))
        status, _, location = await browser.get(html.unescape(refresh.group(1)))
        await answering
        assert status == 303, location
        code = parse_qs(urlsplit(location).query)["code"][0]
    finally:
        await browser.close()
    basic = base64.b64encode(f"portal:{PORTAL_SECRET}".encode()).decode()
    async with aiohttp.ClientSession() as http, http.post(
            behind.op.url + "/oidc/token", headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    claims = jwt.decode(body["id_token"], await _jwks(behind.op.url), algorithms=["ES256"]).claims
    assert claims["sub"] == USER
    assert claims["amr"] == ["pop", "swk"]  # what pushauth did; the upstream vouches for the password


@pytest.mark.parametrize("bad", ["missing", "foreign_key", "too_old", "other_audience"])
async def test_behind_an_upstream_a_bad_hint_prompts_nothing(behind: Setup, bad: str) -> None:
    hints: dict[str, Callable[[], str]] = {
        "missing": lambda: "", "foreign_key": lambda: behind.entra.hint("s", USER, foreign_key=True),
        "too_old": lambda: behind.entra.hint("s", USER, issued_ago=900),
        "other_audience": lambda: behind.entra.hint("s", USER, aud="someone-else")}
    browser = Browser(behind.op.url)
    try:
        status, _, location = await browser.authorize(**auth_params("portal", id_token_hint=hints[bad]()))
    finally:
        await browser.close()
    assert status == 303, location
    assert parse_qs(urlsplit(location).query)["error"] == ["login_required"]
    assert await behind.phone.pending() == []


async def _jwks(url: str) -> KeySet:
    async with aiohttp.ClientSession() as http, http.get(url + "/.well-known/jwks.json") as resp:
        return KeySet.import_key_set(await resp.json())
