"""Triage in the console (issue 21): open alerts most severe first, then newest, on load and live; plain
English titles; filters kept in the URL, surviving a reload; times in the browser's own zone with UTC on
hover; acknowledging with a note; the history of acknowledged alerts paginating past 200; the user
search by prefix and by part of a name; the audit view and its CSV.

Alerts come from real flows: "not me" (critical), and three prompts that reached a phone and were then
cancelled by the login flow (ignored_prompts, medium).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import html
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import Problems, chromium, new_page, screenshot
from playwright.async_api import Browser, Page, expect
from support import (
    ADMIN_TOKEN,
    OTHER_API_KEY,
    AdminClient,
    Clock,
    LoginFlow,
    RunningServer,
    free_port,
    make_settings,
    start_server,
)

import pushauth.audit
from pushauth.alerts.sinks._facts import KIND_WORDS
from pushauth.clock import rfc3339
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.detection.rules import RULES
from pushauth.phone import Phone
from pushauth.web.console import pages
from pushauth.web.console.html.alerts import alert_explanation, alert_title
from pushauth.web.state import AUDIT

ALICE = "alice@nhs.net"
ATTACKER_IP = "185.220.101.4"


@pytest.fixture
async def srv(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False), keyring)
    yield running
    await running.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def not_me(rp: LoginFlow, http: aiohttp.ClientSession, user: str) -> Phone:
    phone = await Phone.enroll(await rp.enroll_uri(user), session=http)
    context = {"ip": ATTACKER_IP, "user_agent": "Firefox", "location": "Nowhere"}
    created = await rp.create(user, context=context)
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    return phone


async def ignored_prompts(rp: LoginFlow, http: aiohttp.ClientSession, user: str) -> None:
    """A MEDIUM alert: three prompts that reached the user's phone, each withdrawn by the login flow."""
    phone = await Phone.enroll(await rp.enroll_uri(user), session=http)
    for _ in range(3):
        created = await rp.create(user, context={"ip": "10.9.8.7"})
        await phone.fetch(created["id"])
        status, body = await rp.call("DELETE", f"/v1/challenges/{created['id']}")
        assert status == 200, body


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/console/login")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Open alerts")


def _clean(problems: Problems) -> None:
    assert not problems.seen, problems.seen


ROOT = Path(__file__).resolve().parent.parent


def _lua_kinds() -> set[str]:
    """Every alert kind the Lua can raise: `raise('kind', ...)`, and the kinds the ledger's `on_denial`
    passes on to its one `raise(kind, ...)`. Any other raise with a kind that is not written out fails
    here, so this collector cannot quietly miss a new way of raising."""
    kinds: set[str] = set()
    forwarded: list[str] = []
    for script in (ROOT / "pushauth").rglob("*.lua"):
        text = script.read_text(encoding="utf-8")
        for arg in re.findall(r"\braise\(\s*([^,)]+)", text):
            if m := re.fullmatch(r"'([a-z_]+)'", arg.strip()):
                kinds.add(m.group(1))
            elif not (script.name == "ledger.lua" and arg.strip() in ("kind", "kind, sev, ev")):
                forwarded.append(f"{script.name}: raise({arg}")
        kinds |= set(re.findall(r"\bon_denial\(\s*\w+,\s*'([a-z_]+)'", text))
    assert not forwarded, f"a raise whose kind this test cannot read: {forwarded}"
    return kinds


def _protocol_kinds() -> set[str]:
    """The kinds in PROTOCOL.md 12.4's table; a row may name two."""
    text = (ROOT / "PROTOCOL.md").read_text(encoding="utf-8")
    table = text.split("| `kind` | severity |", 1)[1].split("\n\n", 1)[0]
    return {k for row in table.splitlines()[2:] for k in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_every_alert_kind_has_a_title_and_an_explanation() -> None:
    """No alert reads as a machine word in the console: every kind the Lua raises (nothing in Python writes
    an alert; they all go through the ledger's `raise`), every detection rule, every kind PROTOCOL.md
    promises receivers and every kind the sinks describe has a title in words and an explanation."""
    lua = _lua_kinds()
    protocol = _protocol_kinds()
    assert {"denied_not_me", "wrong_number", "account_locked", "otp_guessing", "blocked_prompt"} <= lua, lua
    assert {"denied_not_me", "access_code_used", "blocked_approval"} <= protocol, protocol
    assert lua <= protocol, f"raised but not in PROTOCOL.md 12.4: {sorted(lua - protocol)}"
    kinds = lua | protocol | {rule.kind for rule in RULES} | set(KIND_WORDS)
    unknown = {"user": ALICE, "kind": "no_such_kind"}
    untitled = [k for k in sorted(kinds) if alert_title({"user": ALICE, "kind": k}) == f"{k} for {ALICE}"]
    unexplained = [k for k in sorted(kinds)
                   if alert_explanation({"user": ALICE, "kind": k}) == alert_explanation(unknown)]
    assert alert_title(unknown) == f"no_such_kind for {ALICE}"  # what an untitled kind looks like
    assert not untitled, f"no title in words: {untitled}"
    assert not unexplained, f"no explanation: {unexplained}"
    # ... and the webhooks, e-mails and chat messages say it in words too (pushauth/alerts/sinks/_facts.py)
    unworded = sorted(kinds - set(KIND_WORDS))
    assert not unworded, f"no words for the sinks: {unworded}"


async def test_critical_first_filters_in_the_url_local_time_and_ack_with_a_note(
        browser: Browser, srv: RunningServer, http: aiohttp.ClientSession) -> None:
    rp, admin = LoginFlow(http, srv.url), AdminClient(http, srv.url)
    await not_me(rp, http, ALICE)  # the critical one is the OLDEST: newest-first would sink it
    await asyncio.sleep(1.1)  # alert times are whole seconds: strictly older
    for user in ("bob@nhs.net", "carol@nhs.net", "dave@nhs.net"):
        await ignored_prompts(rp, http, user)
    status, body = await admin.call("GET", "/v1/alerts?status=open")
    assert status == 200, body
    # the API's default order is newest first
    assert [a["severity"] for a in body["alerts"]] == ["medium", "medium", "medium", "critical"]

    async with new_page(browser, timezone_id="Asia/Tokyo") as (page, problems):
        await sign_in(page, srv.url)
        items = page.locator("#feed > li")
        await expect(items).to_have_count(4)
        first = items.first
        await expect(first).to_have_class("alert sev-critical")
        await expect(first).to_contain_text(
            f"{ALICE} said they did not request this sign-in from {ATTACKER_IP}")
        await expect(page.locator(".critical-banner")).to_have_text("1 critical: act on these first.")
        assert await page.locator("#feed > li").evaluate_all("els => els.map(e => e.dataset.severity)") == [
            "critical", "medium", "medium", "medium"]
        await expect(items.nth(1)).to_contain_text("went unanswered")
        # Local time (Tokyo is UTC+9, no daylight saving) on screen; UTC in the markup and on hover.
        stamp = first.locator("time")
        utc = await stamp.get_attribute("datetime")
        assert utc is not None
        assert utc.endswith("Z")
        await expect(stamp).to_contain_text("GMT+9")
        await expect(stamp).to_have_attribute("title", f"UTC {utc}")
        await expect(page.locator("#feed-status")).to_contain_text("Live:")
        await screenshot(page, "console-triage-critical-first")

        # Live: a new MEDIUM alert goes under the critical one, not above it.
        await ignored_prompts(rp, http, "erin@nhs.net")
        await expect(items).to_have_count(5, timeout=10_000)
        await expect(first).to_have_class("alert sev-critical")
        await expect(items.nth(1)).to_contain_text("erin@nhs.net")

        # Filters: in the URL, and still applied after a reload.
        await page.get_by_label("Severity").select_option("medium")
        await page.get_by_role("button", name="Filter").click()
        await expect(items).to_have_count(4)
        assert "severity=medium" in page.url
        await page.reload()
        await expect(items).to_have_count(4)
        await expect(page.get_by_label("Severity")).to_have_value("medium")
        await expect(page.locator("#feed > li.sev-critical")).to_have_count(0)
        await page.goto(srv.url + "/console?kind=denied_not_me&range=24h")
        await expect(items).to_have_count(1)
        await expect(page.get_by_label("When")).to_have_value("24h")
        await page.goto(srv.url + "/console?app=other")
        await expect(items).to_have_count(0)
        await expect(page.locator("#feed-empty")).to_be_visible()
        await page.goto(srv.url + "/console?severity=urgent")
        await expect(page.get_by_role("alert")).to_contain_text("severity must be among")

        # Acknowledge with a note; the history shows it, and who.
        await page.goto(srv.url + "/console")
        await first.get_by_role("link").click()
        await expect(page.locator("p.lead")).to_have_text(
            f"{ALICE} said they did not request this sign-in from {ATTACKER_IP}")
        await expect(page.locator("main")).to_contain_text("Raised because the user denied a prompt")
        await page.get_by_label("Note").fill("Called Alice: she was asleep. Password reset, phone kept.")
        await page.get_by_role("button", name="Acknowledge").click()
        await expect(page.get_by_role("status").filter(has_text="Alert acknowledged.")).to_be_visible()
        await expect(items).to_have_count(4)
        await page.get_by_role("link", name="History").click()
        row = page.locator("table.history tbody tr").first
        await expect(row).to_contain_text("Called Alice: she was asleep.")
        await expect(row).to_contain_text("admin:")
        _clean(problems)
    status, body = await admin.call("GET", f"/v1/audit?user={ALICE}&what=alert_acked")
    assert [e["why"] for e in body["entries"]] == [
        "Called Alice: she was asleep. Password reset, phone kept."]


@contextlib.asynccontextmanager
async def console_client(url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client holding a console session (unsafe=True: the jar otherwise drops 127.0.0.1's)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with client.post(url + "/console/login", headers=bearer) as resp:
            assert resp.status == 204, await resp.text()
        yield client


async def test_time_application_and_status_filters_narrow(srv: RunningServer, http: aiohttp.ClientSession,
                                                         clock: Clock) -> None:
    """Each filter keeps what it names and drops what it does not, so a filter the server ignored would
    fail here: an alert three days old (webmail, open), one of now from the other application (open), and
    one of now from webmail, acknowledged."""
    rp, other = LoginFlow(http, srv.url), LoginFlow(http, srv.url, OTHER_API_KEY)
    admin = AdminClient(http, srv.url)
    await not_me(rp, http, "carol@nhs.net")
    clock.advance(3 * 86400)  # challenges expire out of Redis in real time: the old one is made first
    dave = await Phone.enroll(await rp.enroll_uri("dave@nhs.net"), session=http)
    created = await other.create("dave@nhs.net")
    assert await dave.deny(created["id"], reason="not_me") == "denied"
    await not_me(rp, http, "erin@nhs.net")
    users = {a["id"]: a["user"].split("@")[0] for a in await admin.alerts()}
    [erin] = [aid for aid, user in users.items() if user == "erin"]
    assert (await admin.call("POST", f"/v1/alerts/{erin}/ack"))[0] == 200
    a_day_ago = rfc3339(clock.now() - 86400)

    async with console_client(srv.url) as client:
        async def shown(path: str) -> list[str]:
            async with client.get(srv.url + path) as resp:
                assert resp.status == 200, await resp.text()
                ids = re.findall(r'<a href="/console/alerts/([a-z0-9]+)"', await resp.text())
            return sorted(users[aid] for aid in ids)

        assert await shown("/console") == ["carol", "dave"]
        assert await shown("/console?range=24h") == ["dave"]
        assert await shown("/console?range=7d") == ["carol", "dave"]
        assert await shown("/console?app=other") == ["dave"]
        assert await shown("/console?app=webmail") == ["carol"]
        assert await shown("/console?app=webmail&range=24h") == []
        assert await shown(f"/console?until={a_day_ago}") == ["carol"]
        assert await shown(f"/console?since={a_day_ago}") == ["dave"]
        # the history: acknowledged by default; the status select's Open and Any
        assert await shown("/console/history") == ["erin"]
        assert await shown("/console/history?status=open") == ["carol", "dave"]
        assert await shown("/console/history?status=") == ["carol", "dave", "erin"]
        assert await shown("/console/history?status=&app=webmail&range=24h") == ["erin"]
        async with client.get(srv.url + "/console/history?status=open") as resp:
            assert '<option value="open" selected>Open</option>' in await resp.text()


async def _denied_and_acked(rp: LoginFlow, admin: AdminClient, phone: Phone, user: str, times: int) -> None:
    for _ in range(times):
        created = await rp.create(user)
        assert await phone.deny(created["id"], reason="mistake") == "denied"
        status, body = await admin.call("GET", f"/v1/alerts?user={user}&status=open")
        assert status == 200, body
        for alert in body["alerts"]:
            assert (await admin.call("POST", f"/v1/alerts/{alert['id']}/ack"))[0] == 200


async def test_history_paginates_past_200(browser: Browser, redis_url: str, keyring: KeyRingHolder,
                                          http: aiohttp.ClientSession) -> None:
    running = await start_server(make_settings(redis_url, free_port()), keyring)  # quiet: no lockout
    try:
        rp, admin = LoginFlow(http, running.url), AdminClient(http, running.url)
        users = [f"user{i}@nhs.net" for i in range(5)]
        phones = [await Phone.enroll(await rp.enroll_uri(u), session=http) for u in users]
        await asyncio.gather(*(_denied_and_acked(rp, admin, p, u, 41)
                               for p, u in zip(phones, users, strict=True)))

        # The API pages with `start` / `next`: every acknowledged alert once.
        seen: list[str] = []
        start: Any = 0
        while start is not None:
            status, body = await admin.call("GET", f"/v1/alerts?status=acked&limit=60&start={start}")
            assert status == 200, body
            seen += [a["id"] for a in body["alerts"]]
            start = body["next"]
        assert len(seen) == len(set(seen)) == 205

        async with new_page(browser) as (page, problems):
            await sign_in(page, running.url)
            await page.get_by_role("link", name="History").click()
            rows = page.locator("table.history tbody tr")
            await expect(rows).to_have_count(50)
            await expect(page.locator("main")).to_contain_text("Alerts 1 to 50, newest first.")
            for first in (51, 101, 151, 201):
                await page.get_by_role("link", name="Older alerts").click()
                shown = f"Alerts {first} to {min(first + 49, 205)}"
                await expect(page.locator("main")).to_contain_text(shown)
            await expect(rows).to_have_count(5)
            await expect(page.get_by_role("link", name="Older alerts")).to_have_count(0)
            await page.reload()
            await expect(rows).to_have_count(5)
            await page.get_by_role("link", name="Newest").click()
            await expect(rows).to_have_count(50)
            _clean(problems)
    finally:
        await running.close()


async def test_user_search_and_the_audit_view(browser: Browser, srv: RunningServer,
                                              http: aiohttp.ClientSession) -> None:
    rp = LoginFlow(http, srv.url)
    for user in ("alice.smith@nhs.net", "alison.jones@nhs.net", "bob.alington@nhs.net", "carol@nhs.net"):
        await Phone.enroll(await rp.enroll_uri(user), session=http)
    admin = AdminClient(http, srv.url)
    await admin.call("POST", "/v1/users/carol@nhs.net/lock")
    await admin.call("POST", "/v1/users/carol@nhs.net/unlock")

    async with new_page(browser) as (page, problems):
        await sign_in(page, srv.url)
        await page.goto(srv.url + "/console/users")
        await page.get_by_label("User name").fill("ali")
        await page.get_by_role("button", name="Look up").click()
        results = page.locator("ul.results li")
        # names that start with it first, then names that contain it
        await expect(results).to_have_text(
            ["alice.smith@nhs.net", "alison.jones@nhs.net", "bob.alington@nhs.net"])
        assert "user=ali" in page.url
        await page.reload()
        await expect(results).to_have_count(3)
        await page.get_by_label("User name").fill("JONES")
        await page.get_by_role("button", name="Look up").click()
        await expect(results).to_have_text(["alison.jones@nhs.net"])
        await results.get_by_role("link").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("alison.jones@nhs.net")

        await page.goto(srv.url + "/console/audit?user=carol@nhs.net")
        audit = page.locator("table.audit tbody tr")
        await expect(audit.nth(0)).to_contain_text("unlocked")  # newest first
        await expect(audit.nth(1)).to_contain_text("locked")
        total = await audit.count()
        await page.goto(srv.url + "/console/audit?user=carol@nhs.net&what=locked")
        await expect(audit).to_have_count(1)
        await expect(page.get_by_label("Action")).to_have_value("locked")
        _clean(problems)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.post(srv.url + "/console/login",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 204
        async with client.get(srv.url + "/console/audit.csv?user=carol@nhs.net") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/csv"
            assert "attachment" in resp.headers["Content-Disposition"]
            rows = list(csv.reader(io.StringIO(await resp.text())))
        assert rows[0] == ["at", "what", "user", "who", "why", "details"]
        assert [r[1] for r in rows[1:3]] == ["unlocked", "locked"]
        assert len(rows) - 1 == total  # the same entries as the page
        assert {r[2] for r in rows[1:]} == {"carol@nhs.net"}

    # Paging the trail: each page starts after the last entry of the one before, none twice, none lost.
    status, whole = await admin.call("GET", "/v1/audit?user=carol@nhs.net&limit=500")
    assert status == 200, whole
    paged: list[str] = []
    before = ""
    while True:
        status, body = await admin.call("GET", f"/v1/audit?user=carol@nhs.net&limit=1{before}")
        assert status == 200, body
        paged += [e["id"] for e in body["entries"]]
        if body["next"] is None:
            break
        before = f"&before={body['next']}"
    assert paged == [e["id"] for e in whole["entries"]]
    assert len(paged) == total


async def _get(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


def _link(page: str, label: str) -> str | None:
    m = re.search(rf'<a href="([^"]+)" rel="next">{label}</a>', page)
    return html.unescape(m.group(1)) if m else None


async def test_the_audit_pages_on_and_says_when_it_stopped_looking(
        srv: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit page's "Older entries" link leads to the next page, none twice, none lost; a filtered read
    that stops at its scan bound says the older trail was not searched and offers to search on, instead of
    "No entries match"."""
    audit = srv.app[AUDIT]
    for i in range(60):
        await audit.record("noted", user="carol@nhs.net", who="console:sam", why=f"n{i}")
    whys = [f"n{i}" for i in range(59, -1, -1)]  # newest first
    shown = re.compile(r"<td>(n[0-9]+)</td>")
    async with console_client(srv.url) as client:
        first = await _get(client, srv.url + "/console/audit?user=carol@nhs.net")
        assert shown.findall(first) == whys[:50]
        older = _link(first, "Older entries")
        assert older is not None, first
        assert "user=carol%40nhs.net" in older  # the filter is kept
        second = await _get(client, srv.url + older)
        assert shown.findall(second) == whys[50:]
        assert _link(second, "Older entries") is None
        assert "not searched" not in second

        # 600 newer entries about someone else, and a read that looks at 500 at most
        for i in range(600):
            await audit.record("noted", user="bob@nhs.net", who="console:sam", why=f"b{i}")
        monkeypatch.setattr(pushauth.audit, "SCAN_LIMIT", 500)
        cut = await _get(client, srv.url + "/console/audit?user=carol@nhs.net")
        assert shown.findall(cut) == []
        assert "No entries match among the 500 entries searched" in cut
        assert "older entries were not searched" in cut
        assert "No entries match." not in cut
        on = _link(cut, "Search older entries")
        assert on is not None, cut
        resumed = await _get(client, srv.url + on)
        assert shown.findall(resumed) == whys[:50]


async def test_the_audit_api_says_when_a_filtered_read_stopped_looking(
        srv: RunningServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET /v1/audit`: a filtered read that stops at its scan bound before filling the page answers
    `complete: false` and where to search on from, instead of an empty page that looks like "no match"."""
    admin, audit = AdminClient(http, srv.url), srv.app[AUDIT]
    for i in range(20):
        await audit.record("noted", user="carol@nhs.net", who="console:sam", why=f"n{i}")
    status, whole = await admin.call("GET", "/v1/audit?user=carol@nhs.net&limit=10")
    assert status == 200, whole
    assert [e["why"] for e in whole["entries"]] == [f"n{i}" for i in range(19, 9, -1)]
    assert (whole["next"], whole["complete"], whole["resume_before"]) == (
        whole["entries"][-1]["id"], True, None)
    assert whole["scanned"] == 20

    # 600 newer entries about someone else, and a read that looks at 500 at most
    for i in range(600):
        await audit.record("noted", user="bob@nhs.net", who="console:sam", why=f"b{i}")
    monkeypatch.setattr(pushauth.audit, "SCAN_LIMIT", 500)
    status, cut = await admin.call("GET", "/v1/audit?user=carol@nhs.net&limit=10")
    assert status == 200, cut
    assert (cut["entries"], cut["next"], cut["complete"], cut["scanned"]) == ([], None, False, 500)
    status, bob = await admin.call("GET", "/v1/audit?user=bob@nhs.net&limit=500")
    assert cut["resume_before"] == bob["entries"][-1]["id"]  # the oldest entry the cut read looked at

    status, resumed = await admin.call("GET", f"/v1/audit?user=carol@nhs.net&limit=10"
                                              f"&before={cut['resume_before']}")
    assert status == 200, resumed
    assert resumed["entries"] == whole["entries"]
    assert (resumed["complete"], resumed["resume_before"]) == (True, None)


async def test_a_user_search_cut_short_says_so(srv: RunningServer, http: aiohttp.ClientSession,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rp = LoginFlow(http, srv.url)
    names = ["alice.smith@nhs.net", "alison.jones@nhs.net", "bob.alington@nhs.net", "carol@nhs.net"]
    for user in names:
        await Phone.enroll(await rp.enroll_uri(user), session=http)
    listed = re.compile(r'<li><a href="/console/users/[^"]+">([^<]+)</a></li>')
    async with console_client(srv.url) as client:
        whole = await _get(client, srv.url + "/console/users?user=ali")
        assert listed.findall(whole) == names[:3]
        assert "searched" not in whole
        assert "More than" not in whole
        monkeypatch.setattr(pages, "PAGE", 2)  # more matches than a page holds
        capped = await _get(client, srv.url + "/console/users?user=ali")
        assert listed.findall(capped) == names[:2]
        assert "More than 2 names match" in capped
        monkeypatch.setattr(pages, "PAGE", 50)
        monkeypatch.setattr(pages, "USER_SCAN", 2)  # two users looked at of four
        cut = await _get(client, srv.url + "/console/users?user=zed")
        assert "No user name contains" not in cut
        assert "Only 2 users were searched: a name that is not listed may still exist." in cut


async def test_an_old_critical_alert_leads_however_many_newer_ones_are_open(
        srv: RunningServer, http: aiohttp.ClientSession) -> None:
    """The severity order read only the newest 5,000 open alerts: under a flood of newer lesser ones (a
    push-bombing campaign against many accounts), an older critical "not me" fell off the list altogether.
    Every open alert is read now, in chunks, and the critical one leads."""
    from typing import cast

    from pushauth.alerts.store import OPEN_CHUNK
    from pushauth.web.state import RUNTIME

    rp, admin = LoginFlow(http, srv.url), AdminClient(http, srv.url)
    await not_me(rp, http, ALICE)
    await asyncio.sleep(1.1)  # alert times are whole seconds: strictly older
    await ignored_prompts(rp, http, "bob@nhs.net")
    status, body = await admin.call("GET", "/v1/alerts?status=open")
    assert status == 200, body
    medium = next(a for a in body["alerts"] if a["severity"] == "medium")
    # 5,100 more open medium alerts, newer than both: copies of Bob's under new ids in his slot
    runtime = srv.app[RUNTIME]
    redis, ks = runtime.redis, runtime.keyspace
    members = cast(list[str], await redis.zrange(ks.alert_open, 0, -1))
    [member] = [m for m in members if m.endswith("/" + medium["id"])]
    uid = member.split("/")[0]
    record: dict[Any, Any] = dict(await redis.hgetall(ks.alert(uid, medium["id"])))
    newest = int(await redis.zscore(ks.alert_open, member) or 0)
    flood = 5100
    assert flood > 5000  # past the old cap
    assert flood > 2 * OPEN_CHUNK  # and more than one chunk
    pipe = redis.pipeline(transaction=False)
    for n in range(flood):
        aid = f"{medium['id']}x{n}"
        pipe.hset(ks.alert(uid, aid), mapping={**record, "id": aid})
        pipe.zadd(ks.alert_open, {f"{uid}/{aid}": newest + 1 + n})
    await pipe.execute()

    status, body = await admin.call("GET", "/v1/alerts?status=open&order=severity&limit=3")
    assert status == 200, body
    assert [a["severity"] for a in body["alerts"]] == ["critical", "medium", "medium"], body["alerts"][0]
    assert body["alerts"][0]["user"] == ALICE
    seen, start = 0, 0
    while start is not None:
        status, body = await admin.call("GET", "/v1/alerts?status=open&order=severity&limit=500"
                                               f"&start={start}")
        assert status == 200, body
        seen += len(body["alerts"])
        start = body["next"]
    assert seen == flood + 2
