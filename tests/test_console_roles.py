"""Roles (issue 21): each role can do exactly its actions, and every other is refused by the server, through
the admin API (tokens with a role) and through the console (sessions with a role); console accounts are
an owner's to change, and audited. The table of who may do what is written out here, not derived from
pushauth/operators.py, so a change there that widens a role fails a test.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from browser import chromium, new_page
from playwright.async_api import expect
from support import ADMIN_TOKEN, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone

USER = "alice@nhs.net"
ROLES = ("viewer", "service_desk", "responder", "owner")
TOKENS = {role: f"test-{role.replace('_', '-')}-token-0123456789abcdef" for role in ROLES[:3]}
TOKENS["owner"] = ADMIN_TOKEN  # the old admin token: an owner
ALL = set(ROLES)
DESK = {"service_desk", "responder", "owner"}
RESPONDER = {"responder", "owner"}
OWNER = {"owner"}


@pytest.fixture
async def srv(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    tokens = [{"sha256": sha256_hex(TOKENS[r]), "role": r, "name": f"{r.replace('_', '-')}-bot"}
              for r in ROLES[:3]]
    running = await start_server(make_settings(redis_url, free_port(), admin={"tokens": tokens}), keyring)
    yield running
    await running.close()


class RoleClient:
    """The admin API with one role's token."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url, self.headers = http, url, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=json, headers=self.headers) as resp:
            return resp.status, await resp.json()


def _client(http: aiohttp.ClientSession, url: str, role: str) -> RoleClient:
    return RoleClient(http, url, TOKENS[role])


async def _alice_with_an_alert(http: aiohttp.ClientSession, url: str) -> tuple[Phone, str]:
    rp = LoginFlow(http, url)
    phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    created = await rp.create(USER, context={"ip": "198.51.100.7"})
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    status, body = await _client(http, url, "owner").call("GET", f"/v1/alerts?user={USER}")
    assert status == 200, body
    return phone, body["alerts"][0]["id"]


async def test_admin_api_each_role_does_exactly_its_actions(srv: RunningServer,
                                                          http: aiohttp.ClientSession) -> None:
    phone, aid = await _alice_with_an_alert(http, srv.url)
    did = phone.device_id
    routes: list[tuple[str, str, Any, set[str]]] = [
        ("GET", "/v1/alerts", None, ALL),
        ("GET", f"/v1/alerts/{aid}", None, ALL),
        ("GET", f"/v1/users/{USER}", None, ALL),
        ("GET", f"/v1/users/{USER}/remembered", None, ALL),
        ("GET", "/v1/audit", None, ALL),
        ("GET", "/v1/alert-sinks", None, ALL),
        ("GET", "/v1/alert-deliveries/dead", None, ALL),
        ("POST", f"/v1/users/{USER}/unlock", {"what": "suspension"}, DESK),
        ("POST", f"/v1/users/{USER}/access-codes", None, DESK),
        ("POST", "/v1/enrollments", {"user": "carol@nhs.net"}, DESK),
        ("GET", f"/v1/users/{USER}/otp-methods", None, ALL),
        ("POST", f"/v1/users/{USER}/otp-methods", None, DESK),
        ("POST", f"/v1/users/{USER}/otp-methods/tnotamethod/activate", {"code": "123456"}, DESK),
        ("POST", "/v1/otp-methods/import", {"format": "csv", "data": "x"}, DESK),
        ("DELETE", f"/v1/users/{USER}/otp-methods/tnotamethod", None, RESPONDER),
        ("POST", f"/v1/alerts/{aid}/ack", None, RESPONDER),
        ("POST", f"/v1/users/{USER}/lock", None, RESPONDER),
        ("DELETE", f"/v1/users/{USER}/remembered", None, RESPONDER),
        ("POST", f"/v1/users/{USER}/devices/{did}/allow-revoke", None, RESPONDER),
        ("DELETE", f"/v1/users/{USER}/devices/dnotadevice", None, RESPONDER),
        ("PUT", f"/v1/users/{USER}/policy", {"exempt": False}, OWNER),
        ("POST", "/v1/alert-sinks/nope/enable", None, OWNER),
        ("POST", "/v1/alert-deliveries/dead/1-1/replay", None, OWNER),
        ("GET", "/v1/console-accounts", None, OWNER),
        ("PUT", "/v1/console-accounts/bob@nhs.net", {"role": "viewer"}, OWNER),
        ("DELETE", "/v1/console-accounts/zed@nhs.net", None, OWNER),
    ]
    wrong: list[str] = []
    for method, path, body, allowed in routes:
        for role in ROLES:
            status, reply = await _client(http, srv.url, role).call(method, path, body)
            refused = status == 403 and reply.get("error") == "role_forbidden"
            if refused:
                assert set(reply) == {"error", "message"}, reply  # the contract's error shape
                assert role in reply["message"], reply
            if refused == (role in allowed) or status >= 500:
                wrong.append(f"{role} {method} {path}: {status} {reply}")
    assert not wrong, "\n".join(wrong)

    # What the allowed calls did is on the record under each token's name, not a hash prefix.
    status, body = await _client(http, srv.url, "viewer").call("GET", f"/v1/audit?user={USER}&limit=500")
    assert status == 200, body
    by = {(e["what"], e["who"]) for e in body["entries"]}
    assert {("unlocked", "admin:service-desk-bot"), ("access_code_issued", "admin:service-desk-bot"),
            ("locked", "admin:responder-bot")} <= by, by
    owner = "admin:" + sha256_hex(ADMIN_TOKEN)[:12]
    # a vouched enrollment (an admin caller's) names the token that vouched, as the console's names the person
    status, body = await _client(http, srv.url, "viewer").call(
        "GET", "/v1/audit?user=carol@nhs.net&what=enrollment_issued")
    assert status == 200, body
    issued = sorted((e["who"], sorted(e["details"])) for e in body["entries"])
    assert issued == [(owner, ["enrollment"]), ("admin:responder-bot", ["enrollment"]),
                      ("admin:service-desk-bot", ["enrollment"])], issued
    status, body = await _client(http, srv.url, "viewer").call("GET", f"/v1/alerts/{aid}")
    assert body["acked_by"] == "admin:responder-bot"
    status, body = await _client(http, srv.url, "owner").call("GET", "/v1/console-accounts")
    accounts = [(a["user"], a["role"], a["set_by"]) for a in body["accounts"]]
    assert accounts == [("bob@nhs.net", "viewer", owner)]
    status, body = await _client(http, srv.url, "owner").call(
        "GET", "/v1/audit?what=console_account_set&who=" + owner)
    assert [(e["user"], e["details"]) for e in body["entries"]] == [("bob@nhs.net", {"role": "viewer"})]


async def test_no_role_can_give_a_higher_console_account_a_way_in(srv: RunningServer,
                                                                  http: aiohttp.ClientSession) -> None:
    """The escalation a review found: a service desk vouching a phone of its own for an owner's account,
    then signing in to the console as that owner with it. A new phone (vouched), an access code or a code
    method for a person with a console account needs a role at least theirs; for anyone else the desk's
    powers are unchanged."""
    owner_person, desk_person = "olive@nhs.net", "dana@nhs.net"
    owner = _client(http, srv.url, "owner")
    for person_, role_ in ((owner_person, "owner"), (desk_person, "service_desk")):
        assert (await owner.call("PUT", f"/v1/console-accounts/{person_}", {"role": role_}))[0] == 200
    attempts: list[tuple[str, str, Any]] = [
        ("POST", "/v1/enrollments", {"user": owner_person}),
        ("POST", f"/v1/users/{owner_person}/access-codes", None),
        ("POST", f"/v1/users/{owner_person}/otp-methods", None),
        ("POST", "/v1/otp-methods/import",
         {"format": "csv", "data": f"HW-1,JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP,{owner_person}\n"}),
    ]
    for role in ("service_desk", "responder"):
        for method, path, body in attempts:
            status, reply = await _client(http, srv.url, role).call(method, path, body)
            assert (status, reply.get("error")) == (403, "role_forbidden"), (role, path, status, reply)
    # a peer's account (service desk for service desk) and a plain user are fine
    desk = _client(http, srv.url, "service_desk")
    assert (await desk.call("POST", "/v1/enrollments", {"user": desk_person}))[0] == 201
    assert (await desk.call("POST", "/v1/enrollments", {"user": "plain@nhs.net"}))[0] == 201
    assert (await owner.call("POST", "/v1/enrollments", {"user": owner_person}))[0] == 201
    # and through the console's forms
    client, csrf = await _console(srv.url, "service_desk")
    try:
        for form in ("enrollment", "access-code", "otp-methods"):
            async with client.post(f"{srv.url}/console/users/{owner_person}/{form}", data={"csrf": csrf},
                                   allow_redirects=False) as resp:
                assert resp.status == 403, (form, resp.status)
    finally:
        await client.close()


async def test_console_accounts_refuse_bad_input(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    owner = _client(http, srv.url, "owner")
    for body in ({"role": "admin"}, {}, {"role": "owner", "extra": 1}):
        status, reply = await owner.call("PUT", "/v1/console-accounts/bob@nhs.net", body)
        assert status == 422, (body, reply)
        assert set(reply) == {"error", "message"}, reply
    status, reply = await owner.call("DELETE", "/v1/console-accounts/nobody@nhs.net")
    assert (status, reply["error"]) == (404, "not_found")
    for query in ("severity=urgent", "since=yesterday", "range=2h", "order=oldest", "kind=Not%20A%20Kind"):
        status, reply = await owner.call("GET", f"/v1/alerts?{query}")
        assert (status, reply["error"]) == (422, "invalid_query"), (query, reply)
    status, reply = await owner.call("GET", "/v1/audit?before=nope")
    assert (status, reply["error"]) == (422, "invalid_query")

    # Acknowledging through the API takes an optional note, kept on the alert and in the audit trail.
    _, aid = await _alice_with_an_alert(http, srv.url)
    bad_notes: list[dict[str, object]] = [{"note": "x" * 501}, {"note": 5}, {"notes": "typo"}]
    for bad in bad_notes:
        status, reply = await owner.call("POST", f"/v1/alerts/{aid}/ack", bad)
        assert status == 422, (bad, reply)
        assert set(reply) == {"error", "message"}, reply
    status, reply = await owner.call("POST", f"/v1/alerts/{aid}/ack", {"note": " SOAR: password reset "})
    assert (status, reply["status"], reply["ack_note"]) == (200, "acked", "SOAR: password reset")
    status, reply = await owner.call("GET", f"/v1/audit?what=alert_acked&user={USER}")
    assert [(e["why"], e["details"]) for e in reply["entries"]] == [("SOAR: password reset", {"alert": aid})]


# -- through the console ---------------------------------------------------------------------------------


async def _console(url: str, role: str) -> tuple[aiohttp.ClientSession, str]:
    """A console session signed in with `role`'s token, and its CSRF token."""
    client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    bearer = {"Authorization": f"Bearer {TOKENS[role]}"}
    async with client.post(url + "/console/login", headers=bearer) as resp:
        assert resp.status == 204, await resp.text()
    async with client.get(f"{url}/console/users/{USER}") as resp:
        m = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert m
    return client, m.group(1)


async def test_console_each_role_does_exactly_its_actions(srv: RunningServer,
                                                          http: aiohttp.ClientSession) -> None:
    _, aid = await _alice_with_an_alert(http, srv.url)
    base = f"{srv.url}/console/users/{USER}"
    forms: list[tuple[str, dict[str, str], set[str]]] = [
        (f"{base}/unlock", {"what": "suspension"}, DESK),
        (f"{base}/access-code", {}, DESK),
        (f"{base}/enrollment", {}, DESK),
        (f"{base}/otp-methods", {}, DESK),
        (f"{base}/otp-methods/tnotamethod/activate", {"code": "123456"}, DESK),
        (f"{base}/otp-methods/tnotamethod/revoke", {}, RESPONDER),
        (f"{srv.url}/console/alerts/{aid}/ack", {"note": "checked with Alice"}, RESPONDER),
        (f"{base}/lock", {}, RESPONDER),
        (f"{base}/devices/dnotadevice/revoke", {}, RESPONDER),
        (f"{srv.url}/console/accounts", {"user": "bob@nhs.net", "role": "viewer"}, OWNER),
        (f"{srv.url}/console/accounts/zed@nhs.net/remove", {}, OWNER),
    ]
    wrong: list[str] = []
    for role in ROLES:
        client, csrf = await _console(srv.url, role)
        try:
            for url, form, allowed in forms:
                async with client.post(url, data={**form, "csrf": csrf}, allow_redirects=False) as resp:
                    text = await resp.text()
                refused = resp.status == 403 and "may not do this" in text
                if refused == (role in allowed) or resp.status >= 500:
                    wrong.append(f"{role} {url}: {resp.status}")
            async with client.get(f"{srv.url}/console/accounts") as resp:
                if (resp.status == 403) == (role in OWNER):
                    wrong.append(f"{role} GET /console/accounts: {resp.status}")
        finally:
            await client.close()
    assert not wrong, "\n".join(wrong)
    _, alert = await _client(http, srv.url, "owner").call("GET", f"/v1/alerts/{aid}")
    assert (alert["acked_by"], alert["ack_note"]) == ("admin:responder-bot", "checked with Alice")


async def test_console_shows_each_role_only_its_buttons(srv: RunningServer,
                                                        http: aiohttp.ClientSession) -> None:
    await _alice_with_an_alert(http, srv.url)
    await _client(http, srv.url, "owner").call("POST", f"/v1/users/{USER}/lock")  # "Unlock" is on offer
    buttons = {
        "viewer": set(),
        "service_desk": {"Unlock", "Issue an access code", "Enroll a new phone",
                         "Set up an authenticator app"},
        "responder": {"Unlock", "Issue an access code", "Enroll a new phone", "Set up an authenticator app",
                      "Revoke"},
    }
    async with chromium() as browser:
        for role, want in buttons.items():
            async with new_page(browser) as (page, problems):
                await page.goto(srv.url + "/console/login")
                await page.get_by_label("Admin token").fill(TOKENS[role])
                await page.get_by_role("button", name="Sign in", exact=True).click()
                await expect(page.get_by_text(f"({role.replace('_', ' ')})")).to_be_visible()
                await page.goto(f"{srv.url}/console/users/{USER}")
                shown = set(await page.locator("main form button").all_inner_texts())
                assert shown == want, (role, shown)
                assert not problems.seen, problems.seen


async def test_an_owner_manages_console_accounts_in_the_console(srv: RunningServer,
                                                               http: aiohttp.ClientSession) -> None:
    async with chromium() as browser, new_page(browser) as (page, problems):
        await page.goto(srv.url + "/console/login")
        await page.get_by_label("Admin token").fill(TOKENS["owner"])
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await page.get_by_role("link", name="Accounts").click()
        await page.get_by_label("User name").fill(" Sam.Analyst@NHS.net ")
        await page.get_by_label("Role").select_option("service_desk")
        await page.get_by_role("button", name="Save").click()
        await expect(page.get_by_role("status")).to_have_text("Console account saved.")
        row = page.locator("table.accounts tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("sam.analyst@nhs.net")
        await expect(row).to_contain_text("service desk")
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await row.get_by_role("button", name="Remove").click()
        await expect(page.get_by_role("status")).to_contain_text("Console account removed")
        await expect(row).to_have_count(0)
        assert not problems.seen, problems.seen
    _, body = await _client(http, srv.url, "owner").call("GET", "/v1/audit?who=admin:" +
                                                              sha256_hex(ADMIN_TOKEN)[:12])
    assert [e["what"] for e in body["entries"] if e["user"] == "sam.analyst@nhs.net"] == [
        "console_account_removed", "console_account_set"]

    async with chromium() as browser, new_page(browser) as (page, _):  # no link for anyone else
        await page.goto(srv.url + "/console/login")
        await page.get_by_label("Admin token").fill(TOKENS["responder"])
        await page.get_by_role("button", name="Sign in", exact=True).click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")
        await expect(page.get_by_role("link", name="Accounts")).to_have_count(0)
