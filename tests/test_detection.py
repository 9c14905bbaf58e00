"""Detection rules and containment (pushauth/detection/rules.py), driven through HTTP as the login flow,
the phone
and the security team would, against a real pushauth server and a real Redis, with the production
defaults. Time is moved with the `clock` fixture (pushauth.clock.now is the one clock every decision
reads; the simulated phone signs with it too).

Every rule fires on its scenario; a normal week raises nothing; containment holds under races.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support import (
    API_KEY,
    AdminClient,
    Clock,
    LoginFlow,
    RunningServer,
    add_phone,
    assert_error,
    free_port,
    make_settings,
    start_server,
)

from pushauth.alerts.store import AlertStore
from pushauth.challenges.expiry import ExpirySweeper
from pushauth.challenges.service import ASSERTION_LIFE_S
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Challenge, Phone, ServerRejected
from pushauth.store import KeySpace

USER = "bob@nhs.net"
OFFICE = {"ip": "10.1.2.15", "user_agent": "Firefox/128 (Windows)", "location": "Leeds, GB"}


@pytest.fixture
async def detect(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    """A server with the production defaults for detection and containment."""
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False), keyring)
    yield running
    await running.close()


@pytest.fixture
def admin(http: aiohttp.ClientSession, detect: RunningServer) -> AdminClient:
    return AdminClient(http, detect.url)


@pytest.fixture
def rp(http: aiohttp.ClientSession, detect: RunningServer) -> LoginFlow:
    return LoginFlow(http, detect.url)


@pytest.fixture
async def bob(rp: LoginFlow, http: aiohttp.ClientSession) -> Phone:
    return await Phone.enroll(await rp.enroll_uri(USER), session=http)


async def prompt(rp: LoginFlow, ctx: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return await rp.create(USER, context=ctx or OFFICE, **extra)


def kinds(alert: dict[str, Any]) -> dict[str, int]:
    return dict(alert["evidence"]["kinds"])


# ---------------------------------------------------------------------------------------------------------
# Each rule on its scenario
# ---------------------------------------------------------------------------------------------------------


async def test_not_me_raises_critical_alert_with_evidence_and_contains(
        rp: LoginFlow, bob: Phone, admin: AdminClient, detect: RunningServer, redis_url: str) -> None:
    approved = await prompt(rp)
    assert await bob.approve(approved["id"], number=approved["number"]) == "approved"
    other = await prompt(rp)
    attack = await prompt(rp, {"ip": "198.51.100.7", "user_agent": "curl/8", "location": "Elsewhere"})
    uid = (await _uid(redis_url, USER))
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        await r.hset(KeySpace("pa").remembered(uid), "browser-1", "x")  # a remembered browser (issue 5)

    assert await bob.deny(attack["id"], reason="not_me") == "denied"

    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"], alert["status"]) == ("denied_not_me", "critical", "open")
    assert alert["user"] == USER
    assert alert["challenge_id"] == attack["id"]
    assert alert["device_id"] == bob.device_id
    assert alert["context"] == {"ip": "198.51.100.7", "user_agent": "curl/8", "location": "Elsewhere"}
    # The attack came from a network the user never approved from: new_context first, then the denial,
    # one incident escalated to critical (version 2: announced again).
    assert kinds(alert) == {"new_context": 1, "denied_not_me": 1}
    assert alert["version"] == 2
    event = alert["evidence"]["events"][-1]
    assert event["login"]["ip"] == "198.51.100.7"
    assert event["phone_ip"] == "127.0.0.1"
    assert event["app"] == "webmail"
    assert event["reason"] == "not_me"
    assert {c["action"] for c in alert["evidence"]["containment"]} == {
        "prompts_suspended", "remembered_browsers_revoked"}

    # Contained: the other pending prompt and the approval of a minute ago are denied, no assertion.
    for cid in (other["id"], approved["id"]):
        seen = await rp.status(cid)
        assert (seen["status"], seen["reason"]) == ("denied", "suspended"), seen
        assert "assertion" not in seen
    status, body = await rp.call("POST", "/v1/challenges", {"user": USER})
    assert_error(status, body, 403, "suspended")
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert not await r.exists(KeySpace("pa").remembered(uid))
    view = await admin.user(USER)
    assert view["suspended"]
    assert view["suspended_reason"] == "not_me"
    assert not view["locked"]
    assert view["open_alerts"] == [alert["id"]]
    # The record keeps what the user did; the approval is marked revoked, not rewritten.
    recent = {c["id"]: c for c in view["recent_challenges"]}
    assert (recent[approved["id"]]["status"], recent[approved["id"]]["revoked"]) == ("approved", "suspended")
    assert (recent[attack["id"]]["status"], recent[attack["id"]]["reason"]) == ("denied", "not_me")

    # The security team lifts the suspension: prompts work again.
    status, body = await admin.call("POST", f"/v1/users/{USER}/unlock", {"what": "suspension"})
    assert status == 200, body
    assert body["was_suspended"], body
    assert (await prompt(rp))["status"] == "pending"


async def _uid(redis_url: str, user: str) -> str:
    async with aioredis.Redis.from_url(redis_url, decode_responses=True) as r:
        uid = await r.get(KeySpace("pa").user_index(user))
    assert uid
    return str(uid)


async def test_deny_by_mistake_is_a_low_alert_without_containment(rp: LoginFlow, bob: Phone,
                                                                  admin: AdminClient) -> None:
    c = await prompt(rp)
    assert await bob.deny(c["id"], reason="mistake") == "denied"
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("denied", "low")
    assert alert["evidence"]["containment"] == []
    assert (await prompt(rp))["status"] == "pending"


async def test_wrong_number_is_high(rp: LoginFlow, bob: Phone, admin: AdminClient) -> None:
    c = await prompt(rp)
    wrong = "00" if c["number"] != "00" else "01"
    assert await bob.approve(c["id"], number=wrong) == "denied"
    assert (await rp.status(c["id"]))["reason"] == "wrong_number"
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("wrong_number", "high")


async def test_push_bombing_refuses_further_prompts_and_is_one_incident(rp: LoginFlow, bob: Phone,
                                                                         admin: AdminClient) -> None:
    for _ in range(5):
        await prompt(rp)
    assert await admin.alerts() == []
    for _ in range(3):
        async with rp.http.post(rp.url + "/v1/challenges", json={"user": USER, "context": OFFICE},
                                headers=rp.headers) as resp:
            body = await resp.json()
            assert_error(resp.status, body, 429, "rate_limited")
            assert 1 <= int(resp.headers["Retry-After"]) <= 300
    [alert] = await admin.alerts()  # one incident, not three pages
    assert (alert["kind"], alert["severity"]) == ("push_bombing", "high")
    assert alert["evidence"]["event_count"] == 3
    assert len(alert["evidence"]["events"][0]["prompts"]) == 5
    assert len(await bob.pending()) == 5  # the refused prompts never reached the phone


async def test_repeated_denials_escalate_the_incident(rp: LoginFlow, bob: Phone, admin: AdminClient) -> None:
    for _ in range(3):
        c = await prompt(rp)
        await bob.deny(c["id"], reason="mistake")
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"], alert["version"]) == ("repeated_denials", "high", 2)
    assert kinds(alert) == {"denied": 3, "repeated_denials": 1}
    assert len(alert["evidence"]["events"][-1]["denials"]) == 3


async def test_approval_after_denials_is_critical(rp: LoginFlow, bob: Phone, admin: AdminClient) -> None:
    for _ in range(3):
        c = await prompt(rp)
        await bob.deny(c["id"], reason="mistake")
    c = await prompt(rp)
    assert await bob.approve(c["id"], number=c["number"]) == "approved"
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("approved_after_denials", "critical")
    assert alert["challenge_id"] == c["id"]
    assert len(alert["evidence"]["events"][-1]["failures"]) == 3
    assert (await admin.user(USER))["consecutive_failures"] == 0  # an approval resets the count


async def test_ignored_prompts_settled_by_the_expiry_worker(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                            detect: RunningServer, clock: Clock) -> None:
    for _ in range(3):
        await prompt(rp, ttl_s=10)
    await asyncio.sleep(0.2)  # the server writes its expiry index in batches every 50 ms
    clock.advance(11)
    sweeper = ExpirySweeper(_redis(detect), KeySpace("pa"), _alerts(detect))
    assert await sweeper.settle_due() == 3
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("ignored_prompts", "medium")
    assert len(alert["evidence"]["events"][0]["ignored"]) == 3
    # Anyone with the user's name and an application key can leave prompts unanswered: they never lock.
    assert (await admin.user(USER))["consecutive_failures"] == 0
    assert await sweeper.settle_due() == 0  # claimed once


def _redis(server: RunningServer) -> aioredis.Redis:
    from pushauth.web.state import REDIS
    return server.app[REDIS]


def _alerts(server: RunningServer) -> AlertStore:
    from pushauth.web.state import ALERTS
    return server.app[ALERTS]


async def test_ignored_prompts_also_counted_at_the_next_event(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                              clock: Clock) -> None:
    """No expiry worker ran: the next prompt settles the expired ones first."""
    for _ in range(3):
        await prompt(rp, ttl_s=10)
    clock.advance(11)
    await prompt(rp)
    [alert] = await admin.alerts()
    assert alert["kind"] == "ignored_prompts"


async def test_late_approval_is_refused_and_raises_late_response(
        rp: LoginFlow, bob: Phone, admin: AdminClient, clock: Clock) -> None:
    c = await prompt(rp, ttl_s=10)
    fetched = await bob.fetch(c["id"])
    clock.advance(12)
    with pytest.raises(ServerRejected) as err:
        await bob.approve(fetched, number=c["number"])
    assert (err.value.status, err.value.error) == (409, "expired")
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("late_response", "medium")
    assert alert["evidence"]["events"][-1]["answer"] == "approved"
    assert "assertion" not in await rp.status(c["id"])
    with pytest.raises(ServerRejected):  # answering again counts nothing new
        await bob.approve(fetched, number=c["number"])
    assert (await admin.alerts())[0]["evidence"]["event_count"] == alert["evidence"]["event_count"]


async def test_late_not_me_still_escalates_and_contains(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                        clock: Clock) -> None:
    c = await prompt(rp, ttl_s=10)
    fetched = await bob.fetch(c["id"])
    clock.advance(12)
    with pytest.raises(ServerRejected):
        await bob.deny(fetched, reason="not_me")
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("denied_not_me", "critical")
    assert (await admin.user(USER))["suspended"]


async def test_new_context_after_a_baseline(rp: LoginFlow, bob: Phone, admin: AdminClient) -> None:
    first = await prompt(rp)  # the first sign-in is the baseline: nothing to compare with
    await bob.approve(first["id"], number=first["number"])
    same_site = await prompt(rp, {**OFFICE, "ip": "10.1.2.200"})
    await bob.approve(same_site["id"], number=same_site["number"])
    assert await admin.alerts() == []
    far = await prompt(rp, {"ip": "203.0.113.9", "user_agent": "Chrome", "location": "Lagos, NG"})
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"], alert["challenge_id"]) == ("new_context", "low", far["id"])
    assert alert["evidence"]["events"][0]["network"] == "203.0.113.0/24"


def wrong(number: str) -> str:
    """A number that is not the login page's."""
    return "00" if number != "00" else "01"


async def test_lockout_after_ten_failures_then_unlock(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                      clock: Clock) -> None:
    for i in range(10):
        c = await prompt(rp)
        assert await bob.approve(c["id"], number=wrong(c["number"])) == "denied"  # a guess at the number
        clock.advance(120)  # slower than push bombing
        if i < 9:
            assert not (await admin.user(USER))["locked"]
    view = await admin.user(USER)
    assert view["locked"]
    assert view["locked_reason"] == "failures"
    assert view["consecutive_failures"] == 10
    alerts = await admin.alerts()
    assert any(a["kind"] == "account_locked" or "account_locked" in kinds(a) for a in alerts), alerts
    status, body = await rp.call("POST", "/v1/challenges", {"user": USER})
    assert_error(status, body, 403, "locked")

    status, body = await admin.call("POST", f"/v1/users/{USER}/unlock")
    assert status == 200, body
    assert body["was_locked"], body
    assert (await admin.user(USER))["consecutive_failures"] == 0
    assert (await prompt(rp))["status"] == "pending"


async def test_a_new_challenge_never_resets_the_failure_count(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                              clock: Clock) -> None:
    c = await prompt(rp)
    await bob.approve(c["id"], number=wrong(c["number"]))
    clock.advance(1000)
    await prompt(rp)
    await prompt(rp)
    assert (await admin.user(USER))["consecutive_failures"] == 1


async def test_auto_unlock(redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession,
                           clock: Clock) -> None:
    settings = make_settings(redis_url, free_port(), quiet_detection=False,
                             containment={"lockout_after_failures": 2, "auto_unlock_after_s": 600})
    running = await start_server(settings, keyring)
    try:
        rp = LoginFlow(http, running.url)
        phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
        for _ in range(2):
            c = await prompt(rp)
            await phone.approve(c["id"], number=wrong(c["number"]))
        status, body = await rp.call("POST", "/v1/challenges", {"user": USER})
        assert_error(status, body, 403, "locked")
        clock.advance(601)
        assert (await prompt(rp))["status"] == "pending"
    finally:
        await running.close()


# ---------------------------------------------------------------------------------------------------------
# Races: lock and suspension are re-checked at the transition
# ---------------------------------------------------------------------------------------------------------


async def test_locked_users_concurrent_approvals_yield_no_assertion(
        redis_url: str, keyring: KeyRingHolder, http: aiohttp.ClientSession) -> None:
    settings = make_settings(redis_url, free_port(), quiet_detection=False,
                             detection={"push_bombing_max": 1000})
    running = await start_server(settings, keyring)
    try:
        rp, admin = LoginFlow(http, running.url), AdminClient(http, running.url)
        phone = await Phone.enroll(await rp.enroll_uri(USER), session=http)
        for _round in range(5):
            created = [await prompt(rp) for _ in range(20)]
            fetched = await asyncio.gather(*(phone.fetch(c["id"]) for c in created))

            async def answer(ch: Challenge, number: str) -> str:
                try:
                    return await phone.approve(ch, number=number)
                except ServerRejected as exc:
                    return exc.error

            async def lock() -> None:
                await asyncio.sleep(random.uniform(0, 0.01))
                status, body = await admin.call("POST", f"/v1/users/{USER}/lock")
                assert status == 200, body

            results = await asyncio.gather(lock(), *(answer(f, c["number"]) for f, c in
                                                      zip(fetched, created, strict=True)))
            assert set(results[1:]) <= {"approved", "locked", "already_decided"}, results
            for c in created:
                seen = await rp.status(c["id"])
                assert "assertion" not in seen, seen
                assert (seen["status"], seen["reason"]) == ("denied", "locked"), seen
            status, body = await admin.call("POST", f"/v1/users/{USER}/unlock")
            assert status == 200, body
    finally:
        await running.close()


async def test_not_me_racing_approvals_on_another_phone(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                        http: aiohttp.ClientSession) -> None:
    """One phone says "not me" while another approves other prompts: whichever commits first, no
    approval of the last ASSERTION_LIFE_S seconds keeps its assertion once the user is suspended."""
    second = await add_phone(rp, bob, USER, http)
    targets = [await prompt(rp) for _ in range(4)]
    fetched = await asyncio.gather(*(second.fetch(c["id"]) for c in targets[1:]))

    async def approve(ch: Challenge, number: str) -> str:
        try:
            return await second.approve(ch, number=number)
        except ServerRejected as exc:
            return exc.error

    pairs = zip(fetched, targets[1:], strict=True)
    results = await asyncio.gather(bob.deny(targets[0]["id"], reason="not_me"),
                                   *(approve(f, c["number"]) for f, c in pairs))
    # An approval committed before the denial is then revoked; one after it is refused (suspended), or
    # finds its challenge already denied by the containment.
    assert set(results[1:]) <= {"approved", "suspended", "already_decided"}, results
    for c in targets:
        seen = await rp.status(c["id"])
        assert seen["status"] == "denied", seen
        assert "assertion" not in seen, seen
    assert ASSERTION_LIFE_S >= 60


# ---------------------------------------------------------------------------------------------------------
# A normal week raises nothing
# ---------------------------------------------------------------------------------------------------------


async def test_a_normal_week_raises_nothing(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                            detect: RunningServer, clock: Clock) -> None:
    rng = random.Random(7)
    sweeper = ExpirySweeper(_redis(detect), KeySpace("pa"), _alerts(detect))
    for day in range(7):
        for slot in (8 * 3600, 13 * 3600):  # twice a day: morning and after lunch
            clock.advance(slot - clock.offset % 86400 + rng.randint(0, 1800))
            ip = f"10.1.2.{rng.randint(2, 250)}"  # the office network, a different desk each time
            if day in (1, 4) and slot == 8 * 3600:
                # a slow morning: the user starts over twice after the prompt reached the phone
                for _ in range(2):
                    c = await prompt(rp, {**OFFICE, "ip": ip})
                    await bob.pending()
                    clock.advance(rng.randint(20, 50))
                    assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
            c = await prompt(rp, {**OFFICE, "ip": ip})
            clock.advance(rng.randint(3, 20))  # the user reads the number and types it
            assert await bob.approve(c["id"], number=c["number"]) == "approved"
            await rp.status(c["id"])
        clock.advance(86400 - clock.offset % 86400)
        await sweeper.settle_due()
    assert await admin.alerts() == []
    view = await admin.user(USER)
    assert not view["locked"]
    assert not view["suspended"]
    assert view["consecutive_failures"] == 0


# ---------------------------------------------------------------------------------------------------------
# The admin API
# ---------------------------------------------------------------------------------------------------------


async def test_admin_api_filters_acks_and_refuses_others(rp: LoginFlow, bob: Phone, admin: AdminClient,
                                                         http: aiohttp.ClientSession, clock: Clock) -> None:
    c = await prompt(rp)
    await bob.deny(c["id"], reason="mistake")
    clock.advance(1000)  # a new incident
    c = await prompt(rp)
    await bob.deny(c["id"], reason="not_me")
    first, second = sorted(await admin.alerts(), key=lambda a: a["created_at"])
    assert (first["kind"], second["kind"]) == ("denied", "denied_not_me")
    assert [a["id"] for a in await admin.alerts(user=USER)] == [second["id"], first["id"]]
    assert await admin.alerts(user="nobody@nhs.net") == []

    status, body = await admin.call("POST", f"/v1/alerts/{first['id']}/ack")
    assert status == 200, body
    assert body["status"] == "acked", body
    assert body["acked_by"].startswith("admin:"), body
    status, body = await admin.call("POST", f"/v1/alerts/{first['id']}/ack")
    assert_error(status, body, 409, "already_acked")
    assert [a["id"] for a in await admin.alerts(status="open")] == [second["id"]]
    assert [a["id"] for a in await admin.alerts(status="acked")] == [first["id"]]
    status, body = await admin.call("GET", f"/v1/alerts/{second['id']}")
    assert status == 200
    assert body["id"] == second["id"]

    for method, path in (("GET", "/v1/alerts/anope"), ("POST", "/v1/alerts/anope/ack"),
                         ("GET", "/v1/users/nobody@nhs.net")):
        status, body = await admin.call(method, path)
        assert_error(status, body, 404)
    status, body = await admin.call("GET", "/v1/alerts?status=closed")
    assert_error(status, body, 422)
    status, body = await admin.call("POST", f"/v1/users/{USER}/unlock", {"what": "everything"})
    assert_error(status, body, 422)
    # A login flow's API key is not an admin token; no token at all is a 401.
    for headers, expected in (({"Authorization": f"Bearer {API_KEY}"}, 403), ({}, 401)):
        async with http.get(admin.url + "/v1/alerts", headers=headers) as resp:
            assert_error(resp.status, await resp.json(), expected)


async def test_admin_revokes_a_lost_phone(rp: LoginFlow, bob: Phone, admin: AdminClient) -> None:
    c = await prompt(rp)
    fetched = await bob.fetch(c["id"])
    status, body = await admin.call("DELETE", f"/v1/users/{USER}/devices/{bob.device_id}")
    assert status == 200, body
    with pytest.raises(ServerRejected) as err:
        await bob.approve(fetched, number=c["number"])
    assert err.value.status in (401, 403)
    assert (await rp.status(c["id"]))["status"] == "pending"  # the lost phone changed nothing
    view = await admin.user(USER)
    assert view["devices"] == []
    status, body = await admin.call("DELETE", f"/v1/users/{USER}/devices/{bob.device_id}")
    assert_error(status, body, 404)
    assert [r["id"] for r in view["recent_challenges"]] == [c["id"]]
    assert view["recent_challenges"][0]["context"] == OFFICE
