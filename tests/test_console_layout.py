"""The console's layout (issue 21): every page at 1280 and 390 CSS pixels wide, a screenshot of each under
test-artifacts/screenshots/, and none may overflow horizontally (the page wider than the window). The
evidence table gives the browser's description the room and wraps the ids, not the other way round.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from browser import chromium, new_page, screenshot
from playwright.async_api import Browser, Page, expect
from support import ADMIN_TOKEN, AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone

USER = "alice.with-a-rather-long-name.smith@hospital-trust.nhs.net"
# A real Chrome on Android user agent: long, with spaces to wrap at.
AGENT = ("Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
         "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36")
IPV6 = "2001:db8:85a3:1234:5678:8a2e:370:7334"
NEVER = "bartholomew.never-enrolled-anywhere.featherstonehaugh@hospital-trust.nhs.net"
WIDTHS = (1280, 390)


@pytest.fixture
async def srv(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False), keyring)
    yield running
    await running.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _overflow(page: Page) -> int:
    """How many pixels the page is wider than its window (0: no horizontal scrolling)."""
    return int(await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"))


async def test_every_page_at_1280_and_390_without_horizontal_overflow(
        browser: Browser, srv: RunningServer, http: aiohttp.ClientSession) -> None:
    rp = LoginFlow(http, srv.url)
    phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    for ip in (IPV6, "185.220.101.4"):
        created = await rp.create(USER, context={"ip": ip, "user_agent": AGENT, "location": "Frankfurt, DE"})
        assert await phone.deny(created["id"], reason="not_me" if ip[0] == "1" else "mistake") == "denied"
    status, body = await AdminClient(http, srv.url).call("GET", "/v1/alerts")
    assert status == 200, body
    aid = body["alerts"][0]["id"]
    await AdminClient(http, srv.url).call("GET", "/v1/users/" + USER)
    overflowing: list[str] = []

    for width in WIDTHS:
        async with new_page(browser, width=width) as (page, problems):
            await page.goto(srv.url + "/console/login")
            await screenshot(page, f"layout-sign-in-{width}")
            overflowing += [f"sign-in@{width}"] if await _overflow(page) else []
            await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            await page.get_by_role("button", name="Sign in", exact=True).click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")
            icon = await page.locator('link[rel="icon"]').get_attribute("href")
            assert icon is not None
            async with http.get(srv.url + icon) as resp:
                assert (resp.status, resp.content_type) == (200, "image/svg+xml")

            pages = {"feed": "/console", "alert": f"/console/alerts/{aid}", "history": "/console/history",
                     "users": "/console/users?user=alice", "user": f"/console/users/{USER}",
                     "audit": "/console/audit", "accounts": "/console/accounts",
                     # a name never enrolled (404: what the desk can give them), and error pages
                     "user-never-enrolled": f"/console/users/{NEVER}",
                     "error-not-found": "/console/alerts/not-an-alert",
                     "error-not-valid": "/console/history?severity=urgent"}
            for name, path in pages.items():
                await page.goto(srv.url + path)
                await expect(page.locator("h1")).to_be_visible()
                await screenshot(page, f"layout-{name}-{width}")
                if await _overflow(page):
                    overflowing.append(f"{name}@{width}: {await _overflow(page)} px")
            for name, button in (("access-code", "Issue an access code"),
                                 ("enrollment", "Enroll a new phone"),
                                 ("authenticator-app", "Set up an authenticator app")):
                await page.goto(f"{srv.url}/console/users/{USER}")
                await page.get_by_role("button", name=button).click()
                await expect(page.locator("h1")).to_be_visible()
                await screenshot(page, f"layout-{name}-{width}")
                if await _overflow(page):
                    overflowing.append(f"{name}@{width}: {await _overflow(page)} px")
                if name == "enrollment":
                    await expect(page.locator("#enrollment-qr svg")).to_be_visible()
            await expect(page.locator("#otp-qr svg")).to_be_visible()
            # a wrong code: the activation page again, with the error and without the key
            await page.get_by_label("The code the app shows now").fill("000000")
            await page.get_by_role("button", name="Activate").click()
            await expect(page.get_by_role("alert")).to_be_visible()
            await screenshot(page, f"layout-authenticator-app-wrong-code-{width}")
            if await _overflow(page):
                overflowing.append(f"authenticator-app-wrong-code@{width}: {await _overflow(page)} px")
            assert not problems.seen, problems.seen
    assert not overflowing, overflowing


async def test_the_evidence_table_wraps_ids_not_the_browser(browser: Browser, srv: RunningServer,
                                                            http: aiohttp.ClientSession) -> None:
    rp = LoginFlow(http, srv.url)
    phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    created = await rp.create(USER, context={"ip": IPV6, "user_agent": AGENT, "location": "Frankfurt, DE"})
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    [alert] = (await AdminClient(http, srv.url).call("GET", "/v1/alerts"))[1]["alerts"]
    for width in WIDTHS:
        async with new_page(browser, width=width) as (page, problems):
            await page.goto(srv.url + "/console/login")
            await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            await page.get_by_role("button", name="Sign in", exact=True).click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")
            await page.goto(f"{srv.url}/console/alerts/{alert['id']}")
            ua = page.locator("table.evidence td.ua").first
            await expect(ua).to_have_text(AGENT)
            line = float(await ua.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)"))
            box = await ua.bounding_box()
            assert box is not None
            # The browser's description stays readable: a few lines, not a column of words; on a phone,
            # where a row is a card, it has the card's whole width.
            if width == 1280:
                assert box["height"] <= 6 * line, (width, box, line)
            else:
                table = await page.locator("table.evidence").bounding_box()
                assert table is not None
                assert box["width"] >= 0.9 * table["width"], (box, table)
            cid = page.locator("table.evidence td.id code", has_text=re.compile("^c"))
            cid_box = await cid.bounding_box()
            assert cid_box is not None
            assert cid_box["width"] <= box["width"] + 1, (width, cid_box, box)
            assert await _overflow(page) == 0
            await screenshot(page, f"layout-evidence-{width}")
            assert not problems.seen, problems.seen


async def test_overflow_check_fails_on_a_page_that_overflows(browser: Browser, srv: RunningServer) -> None:
    """The check above can fail: a page made wider than its window is caught."""
    async with new_page(browser, width=390) as (page, _):
        await page.goto(srv.url + "/console/login")
        assert await _overflow(page) == 0
        # (a long word would not do: the console's CSS breaks it; a fixed width does)
        await page.evaluate("(() => { const d = document.createElement('div'); d.style.width = '600px';"
                            " d.style.height = '1em';"
                            " document.querySelector('main').append(d); })()")
        assert await _overflow(page) > 0
