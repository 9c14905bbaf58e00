"""pushauth's OpenID Provider behind Apache 2 with mod_auth_openidc (Debian's packages), in headless Chromium.

Apache protects /private/; the browser opening it is sent to pushauth, signs in with a directory password
(a real OpenLDAP slapd on loopback), reads the number off the page, the simulated phone approves with it,
and Apache serves /private/ with the user's claims (mod_auth_openidc validated our ID token itself). A "not
me" ends on pushauth's denial page with the critical alert raised; a wrong password prompts no phone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from browser import chromium, new_page, screenshot
from oidc_support import approve_on_phone
from playwright.async_api import Browser, Page, expect
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone
from testkit import slapd
from testkit.apache import ApacheRP
from testkit.fakes.sandbox import TestCA

CLIENT_ID, CLIENT_SECRET = "wiki", "apache-client-secret-" + "z" * 22
USER, PASSWORD = "gwen", "Gwen's directory password 1"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    if (why := slapd.available()) is not None:
        pytest.skip(why)
    ca = TestCA.create(tmp_path_factory.mktemp("ldap-ca"))
    with slapd.Slapd(tmp_path_factory.mktemp("slapd"), ca, {USER: PASSWORD}) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@dataclass
class Site:
    op: RunningServer
    rp: ApacheRP
    phone: Phone
    admin: AdminClient


@asynccontextmanager
async def site(redis_url: str, keyring: KeyRingHolder, tmp_path: Path,
               directory: slapd.Slapd) -> AsyncIterator[Site]:
    rp_port = free_port()
    client = {"client_id": CLIENT_ID, "name": "Staff wiki", "application": "webmail",
              "secret_sha256": [sha256_hex(CLIENT_SECRET)],
              "redirect_uris": [f"http://127.0.0.1:{rp_port}/private/redirect_uri"], "first_factor": "ldap"}
    ldap = {"url": directory.ldaps_url, "user_dn": directory.user_dn, "ca_file": str(directory.ca.ca_file)}
    settings = make_settings(redis_url, free_port(), quiet_detection=False,
                             oidc={"enabled": True, "clients": [client], "ldap": ldap})
    op = await start_server(settings, keyring)
    try:
        async with aiohttp.ClientSession() as http:
            phone = await Phone.enroll(await LoginFlow(http, op.url).enroll_uri(USER), session=http)
            with ApacheRP(tmp_path / "apache", op.url, CLIENT_ID, CLIENT_SECRET, port=rp_port) as rp:
                yield Site(op, rp, phone, AdminClient(http, op.url))
    finally:
        await op.close()


async def sign_in(page: Page, s: Site, password: str) -> None:
    await page.goto(s.rp.url)
    await expect(page.get_by_role("heading", name="Sign in to Staff wiki")).to_be_visible()
    assert page.url.startswith(f"{s.op.url}/oidc/authorize?"), page.url
    await page.get_by_label("User name").fill(USER)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Continue").click()


async def the_number(page: Page) -> str:
    number = page.locator("p.number strong")
    await expect(number).to_be_visible()
    return (await number.text_content() or "").strip()


async def test_apache_serves_the_page_after_the_phone_approves(redis_url: str, keyring: KeyRingHolder,
                                                               tmp_path: Path, directory: slapd.Slapd,
                                                               browser: Browser) -> None:
    async with site(redis_url, keyring, tmp_path, directory) as s, new_page(browser, timeout_ms=30_000) as (
            page, problems):
        await sign_in(page, s, PASSWORD)
        number = await the_number(page)
        await screenshot(page, "oidc-apache-number")
        await approve_on_phone(s.phone, number)
        await expect(page.locator("#claim-sub")).to_have_text(USER)
        assert page.url == s.rp.url
        assert await page.locator("#claim-iss").text_content() == s.op.url
        assert await page.locator("#claim-aud").text_content() == CLIENT_ID
        assert await page.locator("#claim-amr").text_content() == "pwd,mfa,pop,swk"
        assert await page.locator("#claim-acr").text_content() == "https://refeds.org/profile/mfa"
        await screenshot(page, "oidc-apache-private")
        assert not problems.seen, problems.seen  # no CSP violation, no script error on our pages


async def test_not_me_ends_on_the_denial_page_with_the_alert(redis_url: str, keyring: KeyRingHolder,
                                                             tmp_path: Path, directory: slapd.Slapd,
                                                             browser: Browser) -> None:
    async with site(redis_url, keyring, tmp_path, directory) as s, new_page(browser, timeout_ms=30_000) as (
            page, _):
        await sign_in(page, s, PASSWORD)
        await the_number(page)
        await approve_on_phone(s.phone, None, deny="not_me")
        await expect(page.get_by_role("heading", name="Not signed in")).to_be_visible()
        await expect(page.get_by_role("alert")).to_contain_text("did not request this sign-in")
        [alert] = await s.admin.alerts()
        assert (alert["kind"], alert["severity"]) == ("denied_not_me", "critical")


async def test_a_wrong_password_prompts_no_phone(redis_url: str, keyring: KeyRingHolder, tmp_path: Path,
                                                 directory: slapd.Slapd, browser: Browser) -> None:
    async with site(redis_url, keyring, tmp_path, directory) as s, new_page(browser) as (page, _):
        await sign_in(page, s, "a guess")
        await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
        await asyncio.sleep(0.5)
        assert await s.phone.pending() == []
