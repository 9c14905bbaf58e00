"""The security team's console and the sample login page, end to end: a real pushauth server on a real
Redis, a simulated phone, and headless Chromium (tests/browser.py) clicking through the pages as a person
would. Forgery and header checks use a plain HTTP client holding the console's session cookie.

Screenshots of each page: test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from browser import Problems, chromium, new_page, screenshot
from playwright.async_api import Browser, Dialog, Page, expect
from support import (
    ADMIN_TOKEN,
    API_KEY,
    Clock,
    LoginFlow,
    RunningServer,
    free_port,
    make_settings,
    start_server,
)

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.errors import ConfigError
from pushauth.phone import Phone
from pushauth.web import console
from pushauth.web.console.html.layout import CSP
from testkit.redis_server import RedisServer

USER = "alice@nhs.net"
WHO = "admin:" + sha256_hex(ADMIN_TOKEN)[:12]
# What an attacker's browser may claim; the login flow passes it on, the console must show it as text.
HOSTILE = {"ip": "198.51.100.7", "user_agent": '<img src=x onerror="window.__xss=1">Evil/1.0',
           "location": "<script>window.__xss=2</script>Nowhere"}
DEMO = {"enabled": True, "application": "webmail"}
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def srv(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    """A server with the production detection defaults (a "not me" raises a critical alert and suspends)
    and the sample login page on."""
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False, demo=DEMO),
                                 keyring)
    yield running
    await running.close()


@pytest.fixture
def rp(http: aiohttp.ClientSession, srv: RunningServer) -> LoginFlow:
    return LoginFlow(http, srv.url)


@pytest.fixture
async def alice(rp: LoginFlow, http: aiohttp.ClientSession) -> Phone:
    return await Phone.enroll(await rp.enroll_uri(USER), session=http)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    async with new_page(browser) as (p, problems):
        yield p
        _no_problems(problems)


def _no_problems(problems: Problems) -> None:
    assert not problems.seen, problems.seen


class AdminApi:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str) -> Any:
        async with self.http.get(self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def user(self, user: str = USER) -> dict[str, Any]:
        return dict(await self.get(f"/v1/users/{user}"))


@pytest.fixture
def api(http: aiohttp.ClientSession, srv: RunningServer) -> AdminApi:
    return AdminApi(http, srv.url)


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/console/login")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")


async def not_me(rp: LoginFlow, phone: Phone) -> dict[str, Any]:
    created = await rp.create(USER, context=HOSTILE)
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    return created


# -- sign-in ---------------------------------------------------------------------------------------------


async def test_sign_in_refuses_a_wrong_token_then_signs_in_and_out(page: Page, srv: RunningServer) -> None:
    await page.goto(srv.url + "/console")
    assert page.url == srv.url + "/console/login"  # not signed in: to the sign-in page
    await screenshot(page, "console-sign-in")

    for wrong in ("not-a-token", API_KEY):  # an application's API key is not an admin token either
        await page.get_by_label("Admin token").fill(wrong)
        async with page.expect_response(srv.url + "/console/login") as refused:
            await page.get_by_role("button", name="Sign in").click()
        assert (await refused.value).status == 401
        await expect(page.get_by_role("alert")).to_have_text("That is not an admin token of this server.")
    assert not await page.context.cookies()
    await screenshot(page, "console-sign-in-refused")

    await sign_in(page, srv.url)
    await expect(page.get_by_text(f"Signed in as {WHO}")).to_be_visible()
    [cookie] = await page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (
        console.COOKIE, True, "Strict", False)
    assert cookie["path"] == "/console"

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await page.goto(srv.url + "/console")
    assert page.url == srv.url + "/console/login"


async def test_an_admin_tokens_sign_out_is_audited(srv: RunningServer, api: AdminApi) -> None:
    client = await _signed_in_client(srv.url)
    try:
        async with client.get(srv.url + "/console") as resp:
            m = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert m
        async with client.post(srv.url + "/console/logout", data={"csrf": m.group(1)},
                               allow_redirects=False) as resp:
            assert resp.status == 303
    finally:
        await client.close()
    entries = (await api.get("/v1/audit?what=console_signed_out"))["entries"]
    assert [(e["user"], e["who"], e["details"]) for e in entries] == [("", WHO, {"role": "owner"})]


# -- the live feed, an incident, acknowledging it ------------------------------------------------------


async def test_not_me_appears_live_as_critical_and_is_acknowledged(
        page: Page, srv: RunningServer, rp: LoginFlow, alice: Phone, api: AdminApi) -> None:
    # Alice once signed in from the office, so a prompt from elsewhere is a new_context (low) alert.
    usual = await rp.create(USER, context={"ip": "10.1.2.15", "user_agent": "Firefox", "location": "Leeds"})
    assert await alice.approve(usual["id"], number=usual["number"]) == "approved"
    await sign_in(page, srv.url)
    await expect(page.locator("#feed-empty")).to_be_visible()
    # The event stream is open: what follows arrives through the live fan-out, not a page load.
    await expect(page.locator("#feed-status")).to_contain_text("Live:")

    attack = await rp.create(USER, context=HOSTILE)
    low = page.locator("#feed li.sev-low")
    await expect(low).to_contain_text("new_context", timeout=10_000)
    await expect(low).to_contain_text(f"{USER} was asked to approve a sign-in from a new network and place "
                                      "from 198.51.100.7")
    await expect(page.locator("#feed-empty")).to_be_hidden()
    await screenshot(page, "console-feed-live-low")

    assert await alice.deny(attack["id"], reason="not_me") == "denied"
    item = page.locator("#feed li.sev-critical")  # the same incident, escalated in place
    await expect(item).to_be_visible(timeout=10_000)
    await expect(item).to_contain_text("CRITICAL")
    await expect(item).to_contain_text("denied_not_me")
    # in words, live as on a page load
    await expect(item).to_contain_text(f"{USER} said they did not request this sign-in from 198.51.100.7")
    await expect(item).to_contain_text("2 events")
    await expect(item).to_contain_text("ESCALATED")
    await expect(page.locator("#feed li")).to_have_count(1)
    await screenshot(page, "console-feed-live-critical")
    [alert] = (await api.get("/v1/alerts?status=open"))["alerts"]
    assert await item.get_attribute("id") == f"alert-{alert['id']}"

    await item.get_by_role("link").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("CRITICAL denied_not_me")
    evidence = page.get_by_role("table")
    await expect(evidence).to_contain_text(HOSTILE["user_agent"])  # shown as text, not run
    await expect(evidence).to_contain_text(HOSTILE["location"])
    await expect(evidence).to_contain_text("198.51.100.7")
    await expect(evidence).to_contain_text("127.0.0.1")  # the phone's IP
    await expect(evidence).to_contain_text("denied (not_me)")
    await expect(evidence).to_contain_text(attack["id"])
    await expect(page.locator("ul.contained")).to_contain_text("prompts_suspended")
    assert await page.evaluate("window.__xss") is None
    await screenshot(page, "console-incident")

    await page.get_by_role("button", name="Acknowledge").click()
    await expect(page.get_by_role("status").filter(has_text="Alert acknowledged.")).to_be_visible()
    await expect(page.locator(f"#alert-{alert['id']}")).to_have_count(0)
    await screenshot(page, "console-feed-after-ack")
    acked = await api.get(f"/v1/alerts/{alert['id']}")
    assert (acked["status"], acked["acked_by"]) == ("acked", WHO)  # the admin API's "who"
    assert (await api.get("/v1/alerts?status=open"))["alerts"] == []


# -- a user: lift the suspension, lock, unlock, access code, revoke ---------------------------------------


async def test_user_lookup_and_containment_actions(page: Page, srv: RunningServer, rp: LoginFlow,
                                                   alice: Phone, api: AdminApi) -> None:
    await not_me(rp, alice)
    assert (await api.user())["suspended"]
    await sign_in(page, srv.url)

    await page.get_by_role("link", name="Users").click()
    await page.get_by_label("User name").fill("  Alice@NHS.net ")  # canonicalised as everywhere
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(USER)
    await expect(page.locator("dl.facts")).to_contain_text("yes, since")
    await expect(page.locator("ul.blocks")).to_contain_text("Prompts suspended")
    await expect(page.locator("ul.blocks")).to_contain_text("until the security team acts")
    await expect(page.locator("body")).to_contain_text(HOSTILE["user_agent"])
    await expect(page.locator("ul.open-alerts")).to_contain_text(
        f"CRITICAL {USER} said they did not request this sign-in from 198.51.100.7")
    await screenshot(page, "console-user-suspended")

    await page.get_by_role("button", name="Lift the suspension").click()
    await expect(page.get_by_role("status").filter(has_text="Suspension lifted")).to_be_visible()
    view = await api.user()
    assert (view["suspended"], view["locked"]) == (False, False)

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))  # lock asks first
    await page.get_by_role("button", name="Lock the account").click()
    await expect(page.get_by_role("status").filter(has_text="Account locked.")).to_be_visible()
    assert (await api.user())["locked"]
    await page.get_by_role("button", name="Unlock").click()
    await expect(page.get_by_role("status").filter(has_text="Account unlocked.")).to_be_visible()
    assert not (await api.user())["locked"]

    await page.get_by_role("button", name="Issue an access code").click()
    code = await page.locator("#access-code").inner_text()
    assert re.fullmatch(r"[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}", code)
    await screenshot(page, "console-access-code")
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": code})
    assert (status, body) == (200, {"valid": True})
    await page.get_by_role("link", name=f"Back to {USER}").click()

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))  # so does revoke
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status").filter(has_text="Device revoked.")).to_be_visible()
    assert (await api.user())["devices"] == []  # a revoked phone is no longer the user's
    await screenshot(page, "console-user-after-actions")

    audit = (await api.get(f"/v1/audit?user={USER}"))["entries"]
    console_actions = {e["what"] for e in audit if e.get("who") == WHO}
    assert {"unlocked", "locked", "access_code_issued", "device_revoked"} <= console_actions, audit


async def test_the_user_page_shows_each_phones_push_state(srv: RunningServer, rp: LoginFlow, alice: Phone,
                                                          http: aiohttp.ClientSession) -> None:
    """The Devices table's Push column: the provider and whether pushauth holds a token it can push to."""
    bob = await Phone.enroll(await rp.enroll_uri("bob@nhs.net"), session=http, name="Bob's Pixel",
                             platform="android", push_provider="fcm", push_token="fcm-token-" + "x" * 40)
    push = re.compile(r'<tr><th scope="row">([^<]+)</th><td>[^<]*</td><td>[^<]*</td><td>([^<]+)</td>')
    client = await _signed_in_client(srv.url)
    try:
        async def pushes(user: str) -> list[tuple[str, str]]:
            async with client.get(f"{srv.url}/console/users/{user}") as resp:
                assert resp.status == 200, await resp.text()
                return push.findall(await resp.text())

        assert await pushes("bob@nhs.net") == [("Bob&#x27;s Pixel", "fcm (ok)")]
        assert await pushes(USER) == [("Simulated phone", "none (none)")]
        await bob.update_push_token("none", None)  # notifications turned off: the phone polls
        assert await pushes("bob@nhs.net") == [("Bob&#x27;s Pixel", "none (none)")]
    finally:
        await client.close()


async def test_the_user_page_shows_every_block_and_lets_the_user_back_in(
        page: Page, srv: RunningServer, rp: LoginFlow, alice: Phone, api: AdminApi) -> None:
    """The service desk's walk-through (issue 14): the user is refused for too many prompts; the page says
    so and until when, and one action lets them back in."""
    for _ in range(5):
        await rp.create(USER)
    status, body = await rp.call("POST", "/v1/challenges", {"user": USER})
    assert status == 429, body
    await sign_in(page, srv.url)
    await page.goto(f"{srv.url}/console/users/{USER}")
    blocks = page.locator("ul.blocks")
    await expect(blocks).to_contain_text("Too many prompts (push-bombing limit)")
    until = (await api.user())["blocks"][0]["until"]
    # shown in the browser's zone; UTC in the markup and on hover
    await expect(blocks.locator(f'time[datetime="{until}"]')).to_have_attribute("title", f"UTC {until}")
    await screenshot(page, "console-user-blocked")
    await page.get_by_role("button", name="Let the user back in now").click()
    await expect(blocks).to_contain_text("None: the user can sign in")
    assert (await api.user())["blocks"] == []
    assert (await rp.call("POST", "/v1/challenges", {"user": USER}))[0] == 201


async def _answer_wrong(rp: LoginFlow, phone: Phone, user: str, clock: Clock, times: int) -> None:
    """Approvals with the wrong number, two minutes apart: one incident, never the push-bombing limit."""
    for _ in range(times):
        created = await rp.create(user)
        await phone.approve(created["id"], number="00" if created["number"] != "00" else "01")
        clock.advance(120)


async def test_a_lock_by_wrong_numbers_says_so_on_the_alert_card(
        srv: RunningServer, rp: LoginFlow, alice: Phone, api: AdminApi, http: aiohttp.ClientSession,
        clock: Clock) -> None:
    """Issue 14 item 12: an account locked by wrong numbers says so in the alert's headline, in the feed and
    on the alert's page; also when a critical alert already heads the incident and the lock cannot."""
    bob = await Phone.enroll(await rp.enroll_uri("bob@nhs.net"), session=http)
    await _answer_wrong(rp, bob, "bob@nhs.net", clock, 10)
    # Alice: three wrong numbers, then an approval (MFA fatigue that worked: critical), then ten more.
    await _answer_wrong(rp, alice, USER, clock, 3)
    created = await rp.create(USER)
    assert await alice.approve(created["id"], number=created["number"]) == "approved"
    clock.advance(120)
    await _answer_wrong(rp, alice, USER, clock, 10)
    alerts = {a["user"]: a for a in (await api.get("/v1/alerts?status=open"))["alerts"]}
    assert alerts["bob@nhs.net"]["kind"] == "account_locked"
    assert alerts[USER]["kind"] == "approved_after_denials"  # critical: the lock cannot take the headline
    assert "account_locked" in {c["action"] for c in alerts[USER]["evidence"]["containment"]}
    client = await _signed_in_client(srv.url)
    try:
        async with client.get(srv.url + "/console") as resp:
            feed = await resp.text()
        cards = {user: re.search(rf'<li id="alert-{a["id"]}".*?</li>', feed, re.S)
                 for user, a in alerts.items()}
        bob_card, alice_card = cards["bob@nhs.net"], cards[USER]
        assert bob_card is not None, feed
        assert alice_card is not None, feed
        assert "bob@nhs.net&#x27;s account was locked" in bob_card.group(0)
        assert "MFA fatigue may have worked; the account was locked" in alice_card.group(0)
        async with client.get(f"{srv.url}/console/alerts/{alerts[USER]['id']}") as resp:
            lead = re.search(r'<p class="lead[^"]*">(.*?)</p>', await resp.text(), re.S)
        assert lead is not None
        assert lead.group(1).endswith("; the account was locked")
    finally:
        await client.close()


async def test_unknown_user_and_alert_are_pages_not_json(page: Page, srv: RunningServer) -> None:
    await sign_in(page, srv.url)
    response = await page.goto(srv.url + "/console/users/nobody@nhs.net")
    assert response is not None
    assert response.status == 404
    # a name never enrolled: a page saying so, with what the desk can do for a first sign-in
    await expect(page.get_by_role("status")).to_contain_text("no phone and no one-time-code method yet")
    await expect(page.get_by_role("button", name="Set up an authenticator app")).to_be_visible()
    await page.goto(srv.url + "/console/alerts/not-an-alert")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")


# -- forgery ---------------------------------------------------------------------------------------------


async def _signed_in_client(url: str) -> aiohttp.ClientSession:
    # unsafe=True: aiohttp's cookie jar otherwise ignores cookies from an IP address (127.0.0.1).
    client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with client.post(url + "/console/login", headers=BEARER) as resp:
        assert resp.status == 204, await resp.text()
    return client


async def test_post_without_the_csrf_token_is_refused_and_changes_nothing(
        srv: RunningServer, rp: LoginFlow, alice: Phone, api: AdminApi) -> None:
    await not_me(rp, alice)
    [alert] = (await api.get("/v1/alerts?status=open"))["alerts"]
    client = await _signed_in_client(srv.url)
    try:
        async with client.get(f"{srv.url}/console/users/{USER}") as resp:
            html = await resp.text()
        m = re.search(r'name="csrf" value="([^"]+)"', html)
        assert m
        csrf = m.group(1)
        unlock = f"{srv.url}/console/users/{USER}/unlock"
        ack = f"{srv.url}/console/alerts/{alert['id']}/ack"

        forged: list[tuple[str, dict[str, str], dict[str, str]]] = [
            (unlock, {"what": "suspension"}, {}),                             # no token
            (unlock, {"what": "suspension", "csrf": "x" * 43}, {}),           # a wrong one
            (unlock, {"what": "suspension", "csrf": csrf}, {"Origin": "https://evil.example"}),
            (unlock, {"what": "suspension", "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
            (ack, {}, {}),
            (ack, {"csrf": csrf}, {"Origin": "https://evil.example"}),
            (ack, {"csrf": csrf}, {"Origin": "null", "Sec-Fetch-Site": "same-site"}),  # a sibling host
        ]
        for url, form, headers in forged:
            async with client.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                assert resp.status == 403, (form, headers)
                assert "text/html" in resp.headers["Content-Type"]
        # The right token without the session cookie is no better.
        async with aiohttp.ClientSession() as stranger, stranger.post(
                unlock, data={"what": "suspension", "csrf": csrf}, allow_redirects=False) as resp:
            assert resp.status == 403
        async with client.post(srv.url + "/console/login",
                               headers={**BEARER, "Origin": "https://evil.example"}) as resp:
            assert resp.status == 403

        view = await api.user()
        assert view["suspended"]
        assert (await api.get(f"/v1/alerts/{alert['id']}"))["status"] == "open"

        # With the token, from the console itself, the same request works: the refusals above were the
        # CSRF check, not something else.
        async with client.post(unlock, data={"what": "suspension", "csrf": csrf},
                               headers={"Origin": srv.url, "Sec-Fetch-Site": "same-origin"},
                               allow_redirects=False) as resp:
            assert resp.status == 303
        assert not (await api.user())["suspended"]
    finally:
        await client.close()


# -- headers ---------------------------------------------------------------------------------------------


def _assert_page_headers(resp: aiohttp.ClientResponse) -> None:
    h = resp.headers
    assert h["Content-Security-Policy"] == CSP, resp.url
    assert h["X-Content-Type-Options"] == "nosniff", resp.url
    assert h["Referrer-Policy"] == "no-referrer", resp.url
    assert h["Cache-Control"] == "no-store", resp.url


async def test_security_headers(srv: RunningServer, redis_url: str, keyring: KeyRingHolder) -> None:
    assert CSP == ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                   "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(srv.url + "/console/login") as resp:
            assert resp.status == 200
            _assert_page_headers(resp)
            text = await resp.text()
            assert "<script>" not in text  # no inline script (only <script src=...>)
            assert "style=" not in text
        async with client.get(srv.url + "/console/events") as resp:
            assert resp.status == 401
        async with client.post(srv.url + "/console/login", data={"token": ADMIN_TOKEN}) as resp:
            assert resp.status == 400  # the token goes in the Authorization header, not a form body
            assert not resp.cookies
        async with client.post(srv.url + "/console/login", headers=BEARER) as resp:
            assert resp.status == 204
            _assert_page_headers(resp)
            cookie = resp.headers["Set-Cookie"]
            for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
                assert flag in cookie, cookie
            assert "Secure" not in cookie  # plain http on 127.0.0.1
        for path in ("/console", "/console/users", f"/console/users/{USER}", "/console/alerts/nope",
                     "/demo/login"):
            async with client.get(srv.url + path) as resp:
                assert resp.content_type == "text/html", path
                _assert_page_headers(resp)
        async with client.get(srv.url + "/console/events") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            assert resp.headers["Cache-Control"] == "no-store"
            assert (await resp.content.readline()).startswith(b"retry:")
        for name, kind in (("console.css", "text/css"), ("console.js", "text/javascript"),
                           ("demo.js", "text/javascript")):
            async with client.get(f"{srv.url}/console/static/{name}") as resp:
                assert (resp.status, resp.content_type) == (200, kind)
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with client.get(srv.url + "/console/static/..%2fconsole.py") as resp:
            assert resp.status == 404

    # Behind a TLS proxy (an https base_url) the cookie is Secure even though the hop to us is http.
    port = free_port()
    behind_tls = await start_server(make_settings(redis_url, port, server={"base_url": "https://pa.example"}),
                                    keyring)
    try:
        async with aiohttp.ClientSession() as client, client.post(
                f"http://127.0.0.1:{port}/console/login", headers=BEARER) as resp:
            assert resp.status == 204
            assert "Secure" in resp.headers["Set-Cookie"]
        async with aiohttp.ClientSession() as client, client.get(
                f"http://127.0.0.1:{port}/demo/login") as resp:
            assert resp.status == 404  # [demo] is off by default
    finally:
        await behind_tls.close()


# -- the sample login page -------------------------------------------------------------------------------


async def test_demo_login_page_shows_the_number_and_the_answer(page: Page, srv: RunningServer,
                                                               alice: Phone) -> None:
    await page.goto(srv.url + "/demo/login")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to NHSmail webmail")
    await screenshot(page, "demo-login")

    await page.get_by_label("User name").fill(USER)
    await page.get_by_role("button", name="Sign in").click()
    number = page.locator("#demo-number")
    await expect(number).to_have_text(re.compile(r"^\d{2}$"))
    await expect(page.locator("#demo-result")).to_have_text("Waiting for your phone…")
    await screenshot(page, "demo-number")
    [challenge] = await alice.pending()
    assert challenge.context is not None
    assert challenge.context["location"] == "sample login page"
    # the phone gets the browser in words, never the User-Agent string itself
    assert challenge.context["user_agent"] == "Chrome (headless) on Linux"

    assert await alice.approve(challenge, number=await number.inner_text()) == "approved"
    await expect(page.locator("#demo-result")).to_have_text("Approved")
    await screenshot(page, "demo-approved")

    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#demo-result")).to_have_text("Waiting for your phone…")
    [challenge] = await alice.pending()
    assert await alice.deny(challenge, reason="mistake") == "denied"
    await expect(page.locator("#demo-result")).to_have_text("Denied (mistake)")
    await screenshot(page, "demo-denied")


async def test_demo_endpoints_refuse_other_sites(srv: RunningServer, alice: Phone) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(srv.url + "/demo/login") as resp:
            m = re.search(r'data-csrf="([^"]+)"', await resp.text())
        assert m
        create = srv.url + "/demo/challenges"
        for headers in ({}, {"X-CSRF-Token": "wrong"},
                        {"X-CSRF-Token": m.group(1), "Origin": "https://evil.example"}):
            async with client.post(create, json={"user": USER}, headers=headers) as resp:
                assert resp.status == 403, headers
        assert await alice.pending() == []
        async with client.post(create, json={"user": USER}, headers={"X-CSRF-Token": m.group(1)}) as resp:
            assert resp.status == 201
            assert set(await resp.json()) == {"status", "id", "number", "expires_at"}


def test_demo_application_must_be_configured(redis_url: str) -> None:
    from pushauth.web import create_app

    with pytest.raises(ConfigError, match=r"demo\.application"):
        create_app(make_settings(redis_url, free_port(), demo={"enabled": True, "application": "nope"}))
    with pytest.raises(ConfigError, match="demo"):
        make_settings(redis_url, free_port(), demo={"enabled": True})


# -- the feed task ---------------------------------------------------------------------------------------


async def _read_events(resp: aiohttp.ClientResponse, want: int) -> list[str]:
    """`data:` lines of the first `want` alert events."""
    found: list[str] = []
    while len(found) < want:
        line = await resp.content.readline()
        if line.startswith(b"data: ") and line.strip() != b"data: {}":
            found.append(line[6:].decode().strip())
    return found


async def test_feed_survives_a_redis_restart(private_redis: RedisServer, keyring: KeyRingHolder,
                                             http: aiohttp.ClientSession) -> None:
    running = await start_server(make_settings(private_redis.url, free_port(), quiet_detection=False),
                                 keyring)
    try:
        rp = LoginFlow(http, running.url)
        phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
        client = await _signed_in_client(running.url)
        # A hang anywhere below fails here, with the await it hung on, rather than at the suite's timeout.
        async with asyncio.timeout(30):
            await _restart_while_watching(private_redis, rp, phone, client, running.url)
    finally:
        await running.close()


async def _restart_while_watching(private_redis: RedisServer, rp: LoginFlow, phone: Phone,
                                  client: aiohttp.ClientSession, url: str) -> None:
    try:
        async with client.get(url + "/console/events") as events:
            assert events.status == 200
            await events.content.readline()  # retry:
            private_redis.stop()  # the feed's blocked read fails; it keeps trying
            await asyncio.sleep(0.5)
            private_redis.start()  # appendonly: the session and the phone are still there
            for _ in range(20):  # a pooled connection may fail once after the restart (503)
                status, created = await rp.call("POST", "/v1/challenges", {"user": USER, "context": HOSTILE})
                if status != 503:
                    break
                await asyncio.sleep(0.1)
            assert status == 201, created
            assert await phone.deny(created["id"], reason="not_me") == "denied"
            async with asyncio.timeout(10):
                [data] = await _read_events(events, 1)
            assert '"severity":"critical"' in data
    finally:
        await client.close()


async def test_a_slow_client_is_dropped_not_waited_for() -> None:
    feed = console.LiveFeed(None, _FakeAlerts(), block_ms=100)  # type: ignore[arg-type]
    slow, fast = feed.subscribe(), feed.subscribe()
    for i in range(console.QUEUE_MAX):
        feed.publish((f"{i}-0", b"x"))
        await fast.get()
    assert feed.clients == 2
    feed.publish(("9999-0", b"x"))  # the slow one's queue is full: dropped, told to end
    assert feed.clients == 1
    assert slow.qsize() == 1
    assert slow.get_nowait() is None
    assert await fast.get() == ("9999-0", b"x")


class _FakeAlerts:
    class names:  # mirrors AlertStore.names
        stream = "s"


# -- pushauth demo --serve -------------------------------------------------------------------------------


async def test_demo_serve_keeps_running_with_console_login_page_and_terminal_phone() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pushauth", "demo", "--serve", "--no-qr", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    assert proc.stdin is not None
    assert proc.stdout is not None
    out: list[str] = []

    async def until(marker: str) -> str:
        assert proc.stdout is not None
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "".join(out)
            out.append(line)
            if marker in line:
                return line

    try:
        async with asyncio.timeout(45):
            console_url = (await until(" console ")).split()[-1]
            token = (await until("admin_token")).split()[1]
            login_url = (await until("login_page")).split()[-1]
            base = login_url.removesuffix("/demo/login")
            assert console_url == base + "/console"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
                async with client.post(base + "/console/login",
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 204  # the printed token signs in to the console
                async with client.get(login_url) as resp:
                    m = re.search(r'data-csrf="([^"]+)"', await resp.text())
                assert m
                async with client.post(base + "/demo/challenges", json={"user": "alice.smith@nhs.net"},
                                       headers={"X-CSRF-Token": m.group(1)}) as resp:
                    assert resp.status == 201, await resp.text()
                    created = await resp.json()
                await until("approve: type the number")  # the phone asks on the terminal
                proc.stdin.write(created["number"].encode() + b"\n")
                await proc.stdin.drain()
                assert "approved" in await until("the server says")
                async with client.get(f"{base}/demo/challenges/{created['id']}") as resp:
                    assert (await resp.json())["status"] == "approved"
            proc.send_signal(signal.SIGINT)
            rest, _ = await proc.communicate()
            out.append(rest.decode())
            assert proc.returncode == 0, "".join(out)
            assert "stopped" in "".join(out)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_lock_and_revoke_ask_first_and_work_from_the_keyboard(
        page: Page, srv: RunningServer, alice: Phone, api: AdminApi) -> None:
    """Lock and revoke cut a user off: each asks for confirmation, and saying no changes nothing. Both are
    reachable and confirmed with the keyboard alone."""
    await sign_in(page, srv.url)
    await page.goto(f"{srv.url}/console/users/{USER}")
    asked: list[str] = []
    answered = asyncio.Event()

    async def answer(dialog: Dialog, accept: bool) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())
        answered.set()

    for button, accept in (("Lock the account", False), ("Revoke", False), ("Lock the account", True)):
        answered.clear()

        def on_dialog(dialog: Dialog, accept: bool = accept) -> None:
            asyncio.ensure_future(answer(dialog, accept))  # noqa: RUF006 - awaited through `answered`

        page.once("dialog", on_dialog)
        await page.get_by_role("button", name=button).focus()
        await page.keyboard.press("Enter")
        await asyncio.wait_for(answered.wait(), 5)
        if not accept:  # dismissed: nothing was posted, nothing changed
            view = await api.user()
            assert (view["locked"], [d["status"] for d in view["devices"]]) == (False, ["active"])
    await expect(page.get_by_role("status").filter(has_text="Account locked.")).to_be_visible()
    assert [m.split("?")[0] for m in asked] == [f"Lock {USER}", "Revoke Simulated phone", f"Lock {USER}"]
    assert (await api.user())["locked"]


async def test_a_refused_browser_is_shown_a_page(redis_url: str, keyring: KeyRingHolder,
                                                 http: aiohttp.ClientSession) -> None:
    """A console page refused by the address's request limit answers a page in words with Retry-After (a
    browser shows the REST contract's JSON as raw text); the push sign-in's script call keeps the JSON."""
    running = await start_server(make_settings(redis_url, free_port(), rate_limits={"ip_requests": 3}),
                                 keyring)
    try:
        statuses = []
        for _ in range(8):
            async with http.get(running.url + "/console/login") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.content_type == "text/html", resp.content_type
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert "Content-Security-Policy" in resp.headers
                    text = await resp.text()
                    assert "Too many requests" in text
                    assert "Wait 1 minute and try again." in text
                    break
        assert statuses[-1] == 429, statuses
        async with http.post(running.url + "/console/login/push", json={"user": USER},
                             headers={"Origin": running.url}) as resp:
            assert (resp.status, resp.content_type) == (429, "application/json")
            assert (await resp.json())["error"] == "rate_limited"
    finally:
        await running.close()
