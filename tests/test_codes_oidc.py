"""Offline codes on the OpenID sign-in page: "use a code" instead of the phone, through to a verified ID
token whose amr says `otp`; a wrong code shows the form again and counts as a failed authentication. Staff
without a phone are asked for the code, behind an upstream identity provider too; a lock and a suspension
are worded on the code form as on the sign-in page."""

from __future__ import annotations

import base64
import contextlib
import html
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pyotp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from oidc_support import REDIRECT, Browser, approve_on_phone, auth_params, form_field
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit.fakes.entra import FakeEntra

USER = "erin@nhs.net"
SECRET = "wiki-client-secret-" + "x" * 24
CLIENTS = [{"client_id": "wiki", "name": "Staff wiki", "application": "webmail",
            "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [REDIRECT],
            "first_factor": "passwordless"}]


@contextlib.asynccontextmanager
async def running_op(redis_url: str, keyring: KeyRingHolder, clients: list[dict[str, Any]],
                     **sections: Any) -> AsyncIterator[RunningServer]:
    settings = make_settings(redis_url, free_port(), oidc={"enabled": True, "clients": clients}, **sections)
    server = await start_server(settings, keyring)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def op(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    settings = make_settings(redis_url, free_port(), oidc={"enabled": True, "clients": CLIENTS})
    server = await start_server(settings, keyring)
    yield server
    await server.close()


async def test_use_a_code_instead_of_the_phone(op: RunningServer, http: aiohttp.ClientSession) -> None:
    login, admin = LoginFlow(http, op.url), AdminClient(http, op.url)
    phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    status, body = await admin.call("POST", f"/v1/users/{USER}/otp-methods", {})
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    status, _ = await admin.call("POST", f"/v1/users/{USER}/otp-methods/{body['id']}/activate",
                                 {"code": app.now()})
    assert status == 200
    code = app.at(int(time.time()) + 30)  # the next step: the activation spent this one
    browser = Browser(op.url)
    try:
        params = auth_params()
        status, page, _ = await browser.authorize(**params)
        status, _, location = await browser.sign_in(page, USER)
        assert status == 303, location
        status, page, _ = await browser.get(location)
        link = re.search(r'<a href="(/oidc/code\?[^"]+)">No signal on your phone\? Use a code', page)
        assert link, page
        status, form, _ = await browser.get(html.unescape(link.group(1)))
        assert status == 200, form
        fields = {"signin": form_field(form, "signin"), "csrf": form_field(form, "csrf")}
        wrong = "000000" if code != "000000" else "111111"
        status, again, _ = await browser.post("/oidc/code", {**fields, "code": wrong})
        assert status == 400
        assert "That code is not valid." in again
        status, _, location = await browser.post("/oidc/code", {**fields, "code": code})
        assert (status, location) == (303, f"/oidc/wait?signin={fields['signin']}")
        assert await phone.pending() == []  # the prompt was withdrawn
        status, _, location = await browser.get(location)
        assert status == 303, location
        answer = parse_qs(urlsplit(location).query)
        assert answer["state"] == [params["state"]]
    finally:
        await browser.close()
    basic = base64.b64encode(f"wiki:{SECRET}".encode()).decode()
    form_data = {"grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": REDIRECT}
    async with http.post(op.url + "/oidc/token", data=form_data,
                         headers={"Authorization": f"Basic {basic}"}) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    async with http.get(op.url + "/oidc/jwks") as resp:
        keys = KeySet.import_key_set(await resp.json())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["ES256"]).claims
    assert (claims["sub"], claims["amr"]) == (USER, ["otp"])
    whats = [(e["what"], e["why"]) for e in await admin.audit(USER) if e["what"].startswith("otp_")][:2]
    assert whats == [("otp_used", "valid"), ("otp_refused", "invalid")]


async def _app_only(admin: AdminClient, user: str) -> pyotp.TOTP:
    """An authenticator app enrolled and activated for `user`, who has no phone."""
    status, body = await admin.call("POST", f"/v1/users/{user}/otp-methods", {})
    assert status == 201, body
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    status, done = await admin.call("POST", f"/v1/users/{user}/otp-methods/{body['id']}/activate",
                                    {"code": app.now()})
    assert status == 200, done
    return app


async def _token_claims(op: RunningServer, http: aiohttp.ClientSession, code: str) -> dict[str, object]:
    basic = base64.b64encode(f"wiki:{SECRET}".encode()).decode()
    form_data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    async with http.post(op.url + "/oidc/token", data=form_data,
                         headers={"Authorization": f"Basic {basic}"}) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    async with http.get(op.url + "/oidc/jwks") as resp:
        keys = KeySet.import_key_set(await resp.json())
    return dict(jwt.decode(tokens["id_token"], keys, algorithms=["ES256"]).claims)


async def test_staff_without_a_phone_are_asked_for_a_code(op: RunningServer,
                                                         http: aiohttp.ClientSession) -> None:
    """Staff with only an authenticator app: the sign-in page asks for the code instead of saying that no
    phone is set up; nothing is issued before a valid code, and a wrong one counts as a wrong code."""
    admin = AdminClient(http, op.url)
    app = await _app_only(admin, "frank@nhs.net")
    code = app.at(int(time.time()) + 30)  # the next step: the activation spent this one
    browser = Browser(op.url)
    try:
        params = auth_params()
        status, page, _ = await browser.authorize(**params)
        status, page, location = await browser.sign_in(page, "frank@nhs.net")
        assert status == 303, page
        assert location.startswith("/oidc/code?signin="), location
        signin = parse_qs(urlsplit(location).query)["signin"][0]
        status, _, _ = await browser.get(f"/oidc/wait?signin={signin}")
        assert status == 400  # no authorization code before the second factor
        status, form, _ = await browser.get(location)
        assert status == 200, form
        fields = {"signin": form_field(form, "signin"), "csrf": form_field(form, "csrf")}
        assert fields["signin"] == signin
        wrong = "000000" if code != "000000" else "111111"
        status, again, _ = await browser.post("/oidc/code", {**fields, "code": wrong})
        assert status == 400
        assert "That code is not valid." in again
        status, _, location = await browser.post("/oidc/code", {**fields, "code": code})
        assert (status, location) == (303, f"/oidc/wait?signin={signin}")
        status, _, location = await browser.get(location)
        assert status == 303, location
        answer = parse_qs(urlsplit(location).query)
        assert answer["state"] == [params["state"]]
        status, _, _ = await browser.post("/oidc/code", {**fields, "code": code})
        assert status == 400  # the sign-in is over: the form is gone with it
    finally:
        await browser.close()
    claims = await _token_claims(op, http, answer["code"][0])
    assert (claims["sub"], claims["amr"]) == ("frank@nhs.net", ["otp"])
    entries = await admin.audit("frank@nhs.net")
    whats = [(e["what"], e["why"]) for e in entries if e["what"].startswith("otp_")]
    assert whats[:2] == [("otp_used", "valid"), ("otp_refused", "invalid")]


async def test_a_locked_user_without_a_phone_gets_no_code_form(op: RunningServer,
                                                               http: aiohttp.ClientSession) -> None:
    """The lock wins over the code form, and a user with neither phone nor code is still told no phone is
    set up."""
    admin = AdminClient(http, op.url)
    await _app_only(admin, "frank@nhs.net")
    status, body = await admin.call("POST", "/v1/users/frank@nhs.net/lock")
    assert status == 200, body
    browser = Browser(op.url)
    try:
        for user, words in (("frank@nhs.net", "Sign-in is blocked"), ("gina@nhs.net", "No phone is set up")):
            status, page, _ = await browser.authorize(**auth_params())
            status, page, location = await browser.sign_in(page, user)
            assert (status, location) == (403, ""), location
            assert words in page
    finally:
        await browser.close()


async def test_behind_an_upstream_staff_without_a_phone_are_asked_for_a_code(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """first_factor = "none": the upstream named the user, who has no phone but an authenticator app; the
    code form, as on the sign-in page, not "No phone is set up"; the token says only what pushauth did."""
    async with FakeEntra("72f988bf-86f1-41af-91ab-2d7cd011db47", "pushauth-upstream") as upstream:
        portal = {"client_id": "portal", "name": "Staff portal", "application": "webmail",
                  "secret_sha256": [sha256_hex(SECRET)], "redirect_uris": [REDIRECT], "first_factor": "none",
                  "upstream_issuer": upstream.issuer, "upstream_jwks_url": upstream.jwks_url,
                  "upstream_audience": "pushauth-upstream"}
        async with running_op(redis_url, keyring, [*CLIENTS, portal]) as op:
            app = await _app_only(AdminClient(http, op.url), "frank@nhs.net")
            code = app.at(int(time.time()) + 30)  # the next step: the activation spent this one
            browser = Browser(op.url)
            try:
                params = auth_params("portal", id_token_hint=upstream.hint("upstream-sub-2", "frank@nhs.net"))
                status, page, location = await browser.authorize(**params)
                assert status == 303, page
                assert location.startswith("/oidc/code?signin="), location
                status, form, _ = await browser.get(location)
                assert status == 200, form
                fields = {"signin": form_field(form, "signin"), "csrf": form_field(form, "csrf")}
                status, _, location = await browser.post("/oidc/code", {**fields, "code": code})
                assert (status, location) == (303, f"/oidc/wait?signin={fields['signin']}")
                status, _, location = await browser.get(location)
                assert status == 303, location
                answer = parse_qs(urlsplit(location).query)
                assert answer["state"] == [params["state"]]
            finally:
                await browser.close()
            basic = base64.b64encode(f"portal:{SECRET}".encode()).decode()
            async with http.post(op.url + "/oidc/token", headers={"Authorization": f"Basic {basic}"}, data={
                    "grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": REDIRECT
                    }) as resp:
                assert resp.status == 200, await resp.text()
                tokens = await resp.json()
            async with http.get(op.url + "/oidc/jwks") as resp:
                keys = KeySet.import_key_set(await resp.json())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["ES256"]).claims
    assert (claims["sub"], claims["amr"]) == ("frank@nhs.net", ["otp"])


def _alert(page: str) -> str:
    found = re.search(r'<p role="alert">([^<]*)</p>', page)
    assert found, page
    return html.unescape(found.group(1))


async def _refused_on_the_sign_in_page(op: RunningServer, user: str) -> str:
    browser = Browser(op.url)
    try:
        _, page, _ = await browser.authorize(**auth_params())
        status, page, _ = await browser.sign_in(page, user)
        assert status == 403, page
        return _alert(page)
    finally:
        await browser.close()


async def test_the_code_form_words_a_lock_and_a_suspension_as_the_sign_in_page_does(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    """A user locked, or suspended (a "not me"), while the code form is open: the code form refuses them in
    the sign-in page's words, which tell the two apart (only the service desk unlocks an account)."""
    async with running_op(redis_url, keyring, CLIENTS, quiet_detection=False,
                          containment={"suspend_on_not_me": True}) as op:
        admin = AdminClient(http, op.url)
        phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
        codes = {"frank@nhs.net": await _app_only(admin, "frank@nhs.net"), USER: await _app_only(admin, USER)}
        forms: dict[str, dict[str, str]] = {}
        browser = Browser(op.url)
        try:
            for user in codes:  # frank has no phone (sent to the form), erin has one (the page's link)
                _, page, _ = await browser.authorize(**auth_params())
                status, _, location = await browser.sign_in(page, user)
                assert status == 303, location
                signin = parse_qs(urlsplit(location).query)["signin"][0]
                status, form, _ = await browser.get(f"/oidc/code?signin={signin}")
                assert status == 200, form
                forms[user] = {"signin": signin, "csrf": form_field(form, "csrf")}
            status, body = await admin.call("POST", "/v1/users/frank@nhs.net/lock")
            assert status == 200, body
            await approve_on_phone(phone, None, deny="not_me")  # erin's prompts are suspended
            refused = {}
            for user, fields in forms.items():
                code = codes[user].at(int(time.time()) + 30)
                status, page, _ = await browser.post("/oidc/code", {**fields, "code": code})
                assert status == 403, page
                refused[user] = _alert(page)
        finally:
            await browser.close()
        assert refused["frank@nhs.net"] == await _refused_on_the_sign_in_page(op, "frank@nhs.net")
        assert refused[USER] == await _refused_on_the_sign_in_page(op, USER)
    assert refused["frank@nhs.net"] != refused[USER]
    assert "service desk can unlock" in refused["frank@nhs.net"]
    assert "on hold" in refused[USER]
