"""A person signs in to the console with a push to their own pushauth phone (issue 21): number matching,
approve -> in, under their own name and role; "not me" -> refused, and alerted like any login's "not me";
no console account -> no prompt at all; a role taken away takes effect at the next page.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pyotp
import pytest
from browser import chromium, new_page, screenshot
from playwright.async_api import Browser, Page, expect
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone

ANALYST = "sam.analyst@nhs.net"


@pytest.fixture
async def srv(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False), keyring)
    yield running
    await running.close()


@pytest.fixture
async def sam(http: aiohttp.ClientSession, srv: RunningServer) -> Phone:
    """The analyst: enrolled like any user, with a console account an owner gave them."""
    phone = await Phone.enroll(await LoginFlow(http, srv.url).enroll_uri(ANALYST), session=http)
    status, body = await AdminClient(http, srv.url).call("PUT", f"/v1/console-accounts/{ANALYST}",
                                                         {"role": "responder"})
    assert status == 200, body
    return phone


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _send_prompt(page: Page, url: str, user: str) -> str:
    await page.goto(url + "/console/login")
    await page.get_by_label("Your user name").fill(user)
    await page.get_by_role("button", name="Send a sign-in prompt").click()
    number = page.locator("#push-number")
    await expect(number).to_have_text(re.compile(r"^\d{2}$"))
    return await number.inner_text()


async def test_approve_signs_in_under_the_persons_name(browser: Browser, srv: RunningServer, sam: Phone,
                                                       http: aiohttp.ClientSession) -> None:
    async with new_page(browser) as (page, problems):
        number = await _send_prompt(page, srv.url, ANALYST)
        await screenshot(page, "console-sign-in-push-waiting")
        [prompt] = await sam.pending()
        assert prompt.context is not None
        assert prompt.context["location"] == "pushauth console"
        assert await sam.approve(prompt, number=number) == "approved"
        await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")
        await expect(page.get_by_text(f"Signed in as console:{ANALYST} (responder)")).to_be_visible()
        assert not problems.seen, problems.seen

        # The person's role is read again on every page: an owner lowering it takes effect at once.
        admin = AdminClient(http, srv.url)
        await admin.call("PUT", f"/v1/console-accounts/{ANALYST}", {"role": "viewer"})
        await page.goto(f"{srv.url}/console/users/{ANALYST}")
        await expect(page.get_by_text(f"Signed in as console:{ANALYST} (viewer)")).to_be_visible()
        await expect(page.get_by_role("button", name="Lock the account")).to_have_count(0)
        # ... and removing the account ends the session.
        await admin.call("DELETE", f"/v1/console-accounts/{ANALYST}")
        await page.goto(srv.url + "/console")
        assert page.url == srv.url + "/console/login"

    status, body = await admin.call("GET", f"/v1/audit?user={ANALYST}&what=console_signed_in")
    assert status == 200, body
    assert [(e["who"], e["why"]) for e in body["entries"]] == [(f"console:{ANALYST}", "push")]


async def test_sign_out_is_audited_under_the_persons_name(srv: RunningServer, sam: Phone,
                                                        http: aiohttp.ClientSession) -> None:
    """Sign-out ends the session and is on the trail like the sign-in: under the person's name."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.post(srv.url + "/console/login/push", json={"user": ANALYST}) as resp:
            assert resp.status == 201, await resp.text()
            number = (await resp.json())["number"]
        [prompt] = await sam.pending()
        assert await sam.approve(prompt, number=number) == "approved"
        async with client.post(srv.url + "/console/login/push/wait") as resp:
            assert resp.status == 200, await resp.text()
        async with client.get(srv.url + "/console") as resp:
            m = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert m
        async with client.post(srv.url + "/console/logout", data={"csrf": m.group(1)},
                               allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/console/login"
        async with client.get(srv.url + "/console", allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/console/login"  # the session is gone

    status, body = await AdminClient(http, srv.url).call(
        "GET", f"/v1/audit?user={ANALYST}&what=console_signed_out")
    assert status == 200, body
    assert [(e["user"], e["who"], e["details"]) for e in body["entries"]] == [
        (ANALYST, f"console:{ANALYST}", {"role": "responder"})]


async def test_not_me_refuses_and_raises_a_critical_alert(browser: Browser, srv: RunningServer, sam: Phone,
                                                         http: aiohttp.ClientSession) -> None:
    async with new_page(browser) as (page, problems):
        await _send_prompt(page, srv.url, ANALYST)
        [prompt] = await sam.pending()
        assert await sam.deny(prompt, reason="not_me") == "denied"
        await expect(page.get_by_role("alert")).to_have_text("Refused: the sign-in was denied on the phone.")
        await screenshot(page, "console-sign-in-push-refused")
        assert not [c for c in await page.context.cookies() if c["name"] == "pushauth_console"]
        await page.goto(srv.url + "/console")
        assert page.url == srv.url + "/console/login"
        assert not problems.seen, problems.seen

    admin = AdminClient(http, srv.url)
    status, body = await admin.call("GET", f"/v1/alerts?user={ANALYST}")
    assert status == 200, body
    [alert] = body["alerts"]
    assert (alert["kind"], alert["severity"], alert["status"]) == ("denied_not_me", "critical", "open")
    assert alert["evidence"]["events"][0]["app"] == "pushauth-console"
    status, body = await admin.call("GET", f"/v1/audit?user={ANALYST}&what=console_sign_in_refused")
    assert [e["why"] for e in body["entries"]] == ["not_me"]


async def test_no_account_no_prompt_and_the_wait_needs_its_cookie(srv: RunningServer, sam: Phone,
                                                                  http: aiohttp.ClientSession) -> None:
    stranger = "nobody@nhs.net"
    await Phone.enroll(await LoginFlow(http, srv.url).enroll_uri(stranger), session=http)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.post(srv.url + "/console/login/push", json={"user": stranger}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "no_console_account"
        for body in ({}, {"user": ""}, {"user": "x", "role": "owner"}):
            async with client.post(srv.url + "/console/login/push", json=body) as resp:
                assert resp.status == 422, body
                assert set(await resp.json()) == {"error", "message"}
        async with client.post(srv.url + "/console/login/push", json={"user": ANALYST},
                               headers={"Sec-Fetch-Site": "cross-site"}) as resp:
            assert resp.status == 403
        async with client.post(srv.url + "/console/login/push/wait") as resp:
            assert resp.status == 401  # no sign-in was started from this client
    assert await sam.pending() == []  # none of it reached the analyst's phone


async def test_service_desk_enrolls_a_new_phone_on_screen(browser: Browser, srv: RunningServer, sam: Phone,
                                                          http: aiohttp.ClientSession) -> None:
    """The service desk call: the user lost their phone; the desk revokes nothing (a responder would), but
    starts an enrollment whose QR code is on screen; the new phone is active at once, and the record says
    who did it."""
    admin = AdminClient(http, srv.url)
    await admin.call("PUT", f"/v1/console-accounts/{ANALYST}", {"role": "service_desk"})
    user = "lost.phone@nhs.net"
    await Phone.enroll(await LoginFlow(http, srv.url).enroll_uri(user), session=http)
    async with new_page(browser) as (page, problems):
        number = await _send_prompt(page, srv.url, ANALYST)
        [prompt] = await sam.pending()
        assert await sam.approve(prompt, number=number) == "approved"
        await expect(page.get_by_text(f"Signed in as console:{ANALYST} (service desk)")).to_be_visible()
        await page.goto(f"{srv.url}/console/users/{user}")
        await expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
        await page.get_by_role("button", name="Enroll a new phone").click()
        await expect(page.locator("#enrollment-qr svg")).to_be_visible()
        await screenshot(page, "console-enrollment-qr")
        uri = await page.locator("#enrollment-uri").text_content()
        assert uri is not None
        assert uri.startswith("pushauth://")

        # The analyst's own account locked (their phone may be someone else's now): out of the console.
        await admin.call("POST", f"/v1/users/{ANALYST}/lock")
        await page.goto(srv.url + "/console")
        assert page.url == srv.url + "/console/login"
        assert not problems.seen, problems.seen
    new_phone = await Phone.enroll(uri, session=http)
    status, view = await admin.call("GET", f"/v1/users/{user}")
    assert status == 200, view
    assert new_phone.device_id in {d["id"] for d in view["devices"] if d["status"] == "active"}
    status, body = await admin.call("GET", f"/v1/audit?user={user}&who=console:{ANALYST}")
    assert "enrollment_issued" in {e["what"] for e in body["entries"]}, body


async def test_service_desk_sets_up_an_authenticator_app_on_screen(
        browser: Browser, srv: RunningServer, sam: Phone, http: aiohttp.ClientSession) -> None:
    """A user who cannot use the pushauth app: the desk shows an authenticator app's QR code once, a wrong
    code keeps it pending (and the key is not shown again), the right one activates it; its codes then
    sign the user in, and the user page lists it (never its key)."""
    admin = AdminClient(http, srv.url)
    await admin.call("PUT", f"/v1/console-accounts/{ANALYST}", {"role": "service_desk"})
    user = "no.app@nhs.net"
    async with new_page(browser) as (page, problems):
        number = await _send_prompt(page, srv.url, ANALYST)
        [prompt] = await sam.pending()
        assert await sam.approve(prompt, number=number) == "approved"
        await expect(page.get_by_text(f"Signed in as console:{ANALYST} (service desk)")).to_be_visible()
        await page.goto(f"{srv.url}/console/users/{user}")
        await page.get_by_role("button", name="Set up an authenticator app").click()
        await expect(page.locator("#otp-qr svg")).to_be_visible()
        secret = await page.locator("#otp-secret").text_content()
        assert secret
        app = pyotp.TOTP(secret)
        wrong = str((int(app.now()) + 1) % 1_000_000).zfill(6)
        await page.get_by_label("The code the app shows now").fill(wrong)
        await page.get_by_role("button", name="Activate").click()
        await expect(page.get_by_role("alert")).to_contain_text("not the method's current code")
        assert secret not in await page.content(), "the key is shown once only"
        await page.get_by_label("The code the app shows now").fill(app.now())
        await page.get_by_role("button", name="Activate").click()
        await expect(page.get_by_text("Authenticator app active")).to_be_visible()
        await expect(page.get_by_role("row", name="authenticator app")).to_contain_text("active")
        assert secret not in await page.content()
        assert not problems.seen, problems.seen
    status, body = await admin.call("GET", f"/v1/audit?user={user}&who=console:{ANALYST}")
    assert status == 200, body
    assert {"otp_enrolled", "otp_activated"} <= {e["what"] for e in body["entries"]}, body


async def test_guessing_account_names_is_throttled(redis_url: str, keyring: KeyRingHolder) -> None:
    """A name without a console account counts as a failed authentication: names cannot be tried in bulk
    to find who may sign in (or to push prompts at them)."""
    running = await start_server(make_settings(redis_url, free_port(), rate_limits={"auth_failures": 3}),
                                 keyring)
    try:
        async with aiohttp.ClientSession() as client:
            statuses = []
            for i in range(5):
                guess = {"user": f"guess{i}@nhs.net"}
                async with client.post(running.url + "/console/login/push", json=guess) as resp:
                    statuses.append(resp.status)
        assert statuses == [403, 403, 403, 429, 429], statuses
    finally:
        await running.close()
