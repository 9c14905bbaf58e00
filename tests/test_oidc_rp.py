"""pushauth's OpenID Provider behind relying parties nobody here wrote: openid-client v6 (npm; panva's
certified RP library) runs the code flow with PKCE and validates the ID token itself (signature against
our JWKS, iss, aud, exp, nonce), and fetches userinfo. The browser in between is the scripted one of
tests/oidc_support.py; the phone is the reference simulator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from oidc_support import REDIRECT, Browser, sign_in_and_approve
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit.openid_client import RpClient, missing_node_rp, rp_finish, rp_start

if (why := missing_node_rp()) is not None:
    pytest.skip(why, allow_module_level=True)

USER = "erin@nhs.net"
SECRET = "openid-client-secret-" + "y" * 22


@pytest.fixture
async def op(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    clients = [
        {"client_id": "webapp", "name": "Staff portal", "application": "webmail",
         "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [REDIRECT], "first_factor": "passwordless"},
        {"client_id": "spa", "name": "Rota app", "application": "webmail", "redirect_uris": [REDIRECT],
         "first_factor": "passwordless"},
        {"client_id": "legacy", "name": "Old portal", "application": "webmail",
         "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [REDIRECT], "first_factor": "passwordless",
         "id_token_alg": "RS256"},
    ]
    server = await start_server(make_settings(redis_url, free_port(), oidc={"enabled": True,
                                                                           "clients": clients}), keyring)
    yield server
    await server.close()


async def browse(op: RunningServer, authorization_url: str, phone: Phone) -> str:
    """What a person does in the browser: sign in, read the number, approve on the phone. The redirect."""
    browser = Browser(op.url)
    try:
        return await sign_in_and_approve(browser, authorization_url.removeprefix(op.url), USER, phone)
    finally:
        await browser.close()


@pytest.mark.parametrize(("client_id", "secret", "auth", "alg"), [("webapp", SECRET, "basic", "ES256"),
                                                                  ("webapp", SECRET, "post", "ES256"),
                                                                  ("spa", None, "none", "ES256"),
                                                                  ("legacy", SECRET, "basic", "RS256")])
async def test_openid_client_signs_in_and_validates_the_id_token(op: RunningServer, tmp_path: Path,
                                                                 client_id: str, secret: str | None,
                                                                 auth: str, alg: str) -> None:
    async with aiohttp.ClientSession() as http:
        phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
        rp = RpClient(op.url, client_id, REDIRECT, client_secret=secret, auth=auth,  # type: ignore[arg-type]
                      id_token_alg=alg)
        start = await rp_start(rp, tmp_path, login_hint=USER)
        callback = await browse(op, start.url, phone)
        result = await rp_finish(rp, start.state_file, callback)
    assert result.ok, (result.error, result.message)
    assert result.claims is not None
    assert result.userinfo is not None
    assert result.claims["iss"] == op.url
    assert result.claims["aud"] == client_id
    assert result.claims["sub"] == USER
    assert result.claims["nonce"] == start.nonce
    assert result.claims["amr"] == ["pop", "swk"]
    assert result.token["id_token_header"]["alg"] == alg  # checked by openid-client against our JWKS
    assert result.userinfo["sub"] == USER


async def test_openid_client_refuses_a_replayed_callback(op: RunningServer, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
        rp = RpClient(op.url, "webapp", REDIRECT, client_secret=SECRET)
        start = await rp_start(rp, tmp_path)
        callback = await browse(op, start.url, phone)
        first = await rp_finish(rp, start.state_file, callback, skip_userinfo=True)
        again = await rp_finish(rp, start.state_file, callback, skip_userinfo=True)
    assert first.ok, first.message
    assert not again.ok
    assert again.oauth_error == "invalid_grant", again
