"""The trust findings of issue 14, each as the attack or the walk-through that found it, over HTTP against a
real pushauth server and a real Redis with the production defaults for detection and containment:

- a second phone added by an application key, then removing the real phone (a phone takeover);
- number fishing through the login context, cancelled prompts, and a "not me" on a cancelled prompt;
- a stranger locking any user out with expired prompts and wrong access codes;
- the service desk's unlock that did not let the user back in, and the blocks it could not see;
- a lock that an exempt or shared account walked past;
- the message a user is given after "not me", a lock or a suspension;
- an account locked by wrong numbers that said only "wrong_number".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from support import (
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

from pushauth.alerts.sinks._facts import facts
from pushauth.challenges.expiry import ExpirySweeper
from pushauth.crypto import jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone, ServerRejected
from pushauth.store import KeySpace
from pushauth.web.state import ALERTS, REDIS

USER = "alice@nhs.net"
OFFICE = {"ip": "10.1.2.15", "location": "Leeds, GB",
          "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"}
DESK = "Call the IT Service Desk on 0300 303 5035."
GUESS = {"user": USER, "code": "AAAA-BBBB-CCCC"}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    """Production defaults for detection and containment, and a deployment's own message for users."""
    settings = make_settings(redis_url, free_port(), quiet_detection=False, policy={"user_message": DESK})
    running = await start_server(settings, keyring)
    yield running
    await running.close()


@pytest.fixture
def rp(http: aiohttp.ClientSession, server: RunningServer) -> LoginFlow:
    return LoginFlow(http, server.url)


@pytest.fixture
def admin(http: aiohttp.ClientSession, server: RunningServer) -> AdminClient:
    return AdminClient(http, server.url)


@pytest.fixture
async def phone(rp: LoginFlow, http: aiohttp.ClientSession) -> Phone:
    """The user's real phone, enrolled long ago as far as the cool-down is concerned."""
    return await Phone.enroll(await rp.enroll_uri(USER), session=http, name="Alice's iPhone")


async def sign_in(rp: LoginFlow, context: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any]:
    return await rp.call("POST", "/v1/challenges", {"user": USER, "context": context or OFFICE, **extra})


def claims(token: str) -> dict[str, Any]:
    return dict(msgspec.json.decode(jws.b64url_decode(token.split(".")[1])))


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in leaves(v)]
    return [value]


def wrong(number: str) -> str:
    return "00" if number != "00" else "01"


async def alert_kinds(admin: AdminClient) -> list[tuple[str, str]]:
    return [(a["kind"], a["severity"]) for a in await admin.alerts()]


def all_kinds(alerts: list[dict[str, Any]]) -> set[str]:
    return {k for a in alerts for k in a["evidence"]["kinds"]}


async def rejected(call: Any) -> ServerRejected:
    with pytest.raises(ServerRejected) as err:
        await call
    return err.value


# ---------------------------------------------------------------------------------------------------------
# 1. A second phone, added silently, then removing the real one
# ---------------------------------------------------------------------------------------------------------


async def test_phone_takeover_with_an_application_key_is_refused(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    """The attack as it was run: any application key enrolls a phone for a user who has one, the new phone
    lists and revokes the real one, and approves sign-ins. Now the new phone is inactive until the real
    phone approves it, and the real user says "not me"."""
    status, enrollment = await rp.call("POST", "/v1/enrollments", {"user": USER})
    assert status == 201, enrollment
    assert enrollment["activation"] == "existing_phone"  # the login flow learns approval is pending
    attacker = await Phone.enroll(enrollment["uri"], session=http, name="Security check", platform="android")
    assert attacker.status == "pending_approval"
    assert attacker.approval_number is not None

    # Inactive: it can do nothing but read its activation, and gets no prompts.
    for call in (attacker.pending(), attacker.devices(), attacker.revoke_device(phone.device_id),
                 attacker.notices()):
        err = await rejected(call)
        assert (err.status, err.error) == (403, "device_pending")
    assert (await attacker.activation())["status"] == "pending_approval"
    status, c = await sign_in(rp)
    assert status == 201
    assert set((await rp.status(c["id"])).get("delivery", {phone.device_id: {}})) == {phone.device_id}
    err = await rejected(attacker.fetch(c["id"]))
    assert err.status == 403
    assert [d["id"] for d in await phone.devices()] == [phone.device_id]

    # The real phone is asked, in words that are true even for an app that does not know `purpose`.
    [prompt] = await phone.add_device_prompts()
    assert prompt.purpose == "add_device"
    assert prompt.app == "NHSmail webmail: add a new phone to your account"
    assert prompt.new_device == {"platform": "android"}
    assert prompt.context == {"ip": "127.0.0.1"}
    assert "Security check" not in str(claims(prompt.token))  # the new phone's own name is not shown
    assert await phone.deny(prompt, reason="not_me") == "denied"
    assert phone.user_message == DESK

    # Refused, reported, contained; the login flow cannot see or cancel the approval prompt.
    assert (await attacker.activation())["status"] == "refused"
    err = await rejected(attacker.pending())
    assert (err.status, err.error) == (401, "device_revoked")
    alerts = await admin.alerts()
    assert alerts[0]["severity"] == "critical"
    assert "denied_not_me" in all_kinds(alerts)
    assert (await admin.user(USER))["suspended"]
    status, body = await rp.call("GET", f"/v1/challenges/{prompt.id}")
    assert_error(status, body, 404)
    status, body = await rp.call("DELETE", f"/v1/challenges/{prompt.id}")
    assert_error(status, body, 404)
    assert [d["id"] for d in await phone.devices()] == [phone.device_id]


async def test_a_further_phone_approved_with_the_number_is_added_and_alerted(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    new = await Phone.enroll(await rp.enroll_uri(USER), session=http, name="Alice's Pixel",
                             platform="android")
    assert new.approval_number is not None
    [prompt] = await phone.add_device_prompts()
    # Number matching: the number is on the new phone's screen, never in the prompt.
    assert prompt.number_matching
    assert new.approval_number not in [str(v) for v in leaves(claims(prompt.token))]
    assert await phone.approve(prompt, number=new.approval_number) == "approved"
    assert (await new.activation()) == {"status": "active"}
    assert {d["id"] for d in await new.devices()} == {phone.device_id, new.device_id}

    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("device_enrolled", "high")
    event = alert["evidence"]["events"][-1]
    assert (event["device_id"], event["approved_by"], event["platform"]) == (
        new.device_id, phone.device_id, "android")
    [notice] = await phone.notices()
    assert (notice["type"], notice["device_id"]) == ("device_added", new.device_id)
    # and the new phone takes part in sign-ins from now on
    status, c = await sign_in(rp)
    assert status == 201
    assert await new.approve(c["id"], number=c["number"]) == "approved"


async def test_a_wrong_number_refuses_the_new_phone(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                    http: aiohttp.ClientSession) -> None:
    new = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    [prompt] = await phone.add_device_prompts()
    assert await phone.approve(prompt, number=wrong(new.approval_number or "")) == "denied"
    assert (await new.activation()) == {"status": "refused", "reason": "wrong_number"}
    assert ("wrong_number", "high") in await alert_kinds(admin)
    assert [d["id"] for d in await phone.devices()] == [phone.device_id]


async def test_an_unanswered_approval_expires_and_the_phone_never_activates(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession, clock: Clock) -> None:
    new = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    [prompt] = await phone.add_device_prompts()
    clock.advance(301)  # enrollment.approval_ttl_s
    assert (await new.activation())["status"] == "expired"
    err = await rejected(phone.approve(prompt, number=new.approval_number))
    assert err.error == "expired"
    err = await rejected(new.pending())
    assert err.error == "device_pending"
    assert [d["id"] for d in await phone.devices()] == [phone.device_id]


async def test_approval_prompts_count_toward_push_bombing_and_a_locked_account_gets_no_phone(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    """Enrolling phone after phone cannot be a way round the push-bombing limit, nor round a lock."""
    for _ in range(5):
        assert (await sign_in(rp))[0] == 201
    err = await rejected(Phone.enroll(await rp.enroll_uri(USER), session=http))
    assert (err.status, err.error) == (429, "rate_limited")
    await admin.call("POST", f"/v1/users/{USER}/lock")
    await admin.call("POST", f"/v1/users/{USER}/unlock", {"what": "suspension"})  # the lock stays
    err = await rejected(Phone.enroll(await admin.enroll_uri(USER), session=http))
    assert (err.status, err.error) == (403, "locked")
    assert DESK in err.message
    assert [d["id"] for d in (await admin.user(USER))["devices"]] == [phone.device_id]


async def test_the_security_team_vouches_and_the_cool_down_protects_the_old_phone(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession, clock: Clock) -> None:
    """An enrollment the security team issues is active at once (and alerted); inside its cool-down it still
    cannot remove an older phone unless the team allows it, and each removal is alerted."""
    new = await Phone.enroll(await admin.enroll_uri(USER), session=http)
    assert new.status == "active"
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("device_enrolled", "high")
    assert alert["evidence"]["events"][-1]["vouched_by"] == "admin"

    err = await rejected(new.revoke_device(phone.device_id))
    assert (err.status, err.error) == (403, "cooldown")
    assert DESK in err.message
    assert "device_revoke_refused" in all_kinds(await admin.alerts())
    assert {d["id"] for d in await phone.devices()} == {phone.device_id, new.device_id}
    # the old phone may remove the new one at any time (the real user removing an intruder)
    status, body = await admin.call("POST", f"/v1/users/{USER}/devices/{new.device_id}/allow-revoke")
    assert status == 200, body
    await new.revoke_device(phone.device_id)
    err = await rejected(phone.pending())
    assert err.error == "device_revoked"
    assert "device_revoked" in all_kinds(await admin.alerts())
    assert any(e["what"] == "device_may_revoke" for e in await admin.audit(USER))


async def test_after_an_access_code_the_user_may_add_a_phone_once(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    """The lost-phone story: the service desk issues an access code, the user signs in with it, and the
    application enrolls their new phone, which is active at once (the code proved them); only once."""
    status, issued = await admin.call("POST", f"/v1/users/{USER}/access-codes")
    assert status == 201
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": issued["code"]})
    assert body == {"valid": True}
    status, enrollment = await rp.call("POST", "/v1/enrollments", {"user": USER})
    assert enrollment["activation"] == "immediate"
    new = await Phone.enroll(enrollment["uri"], session=http)
    assert new.status == "active"
    event = (await admin.alerts())[0]["evidence"]["events"][-1]
    assert (event["kind"], event["vouched_by"]) == ("device_enrolled", "access_code")
    status, again = await rp.call("POST", "/v1/enrollments", {"user": USER})
    assert again["activation"] == "existing_phone"


async def test_a_notice_that_a_phone_was_added_is_left_for_every_other_phone(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    second = await add_phone(rp, phone, USER, http)
    third = await Phone.enroll(await admin.enroll_uri(USER), session=http)
    assert [n["device_id"] for n in await second.notices()] == [third.device_id]
    assert [n["device_id"] for n in await phone.notices()] == [third.device_id, second.device_id]
    assert await third.notices() == []


# ---------------------------------------------------------------------------------------------------------
# 2. Number fishing
# ---------------------------------------------------------------------------------------------------------


async def test_number_fishing_text_never_reaches_the_phone(rp: LoginFlow, phone: Phone,
                                                           admin: AdminClient) -> None:
    fishing = {"ip": "Type 42 in the app", "user_agent": "Security check: type 42 in the app",
               "location": "Security check, type 42"}
    status, c = await sign_in(rp, fishing)
    assert status == 201, c
    [seen] = await phone.pending()
    assert seen.context == {"user_agent": "an unrecognised browser"}
    signed = claims(seen.token)
    # (not `iss`: it is this server's own URL, whose random test port may well contain 42)
    assert not any("42" in str(signed[k]) for k in ("ctx", "app", "sub")), signed
    assert seen.app == "NHSmail webmail"  # the configured name
    # crafted families from the string itself are not shown either
    status, c = await sign_in(rp, {"user_agent": "Type42Crawler/1.0", "location": "São Paulo, BR",
                                   "ip": "2001:db8::0:1"})
    shown = await phone.fetch(c["id"])
    assert shown.context == {"user_agent": "an unrecognised browser", "location": "São Paulo, BR",
                             "ip": "2001:db8::1"}
    # the security team still sees what the login flow sent
    view = await admin.user(USER)
    assert {r["context"]["user_agent"] for r in view["recent_challenges"]} >= {fishing["user_agent"]}


async def test_number_fishing_by_cancelling_is_caught(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                      clock: Clock) -> None:
    """The attack: with the password, sign in again and again, paced under the push-bombing limit,
    cancelling every prompt whose number is not the one the victim was talked into typing; the victim
    approves the one that matches."""
    clock.freeze()
    for i in range(5):
        status, c = await sign_in(rp)
        assert status == 201, c
        await phone.pending()  # the prompt is on the victim's phone
        assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
        if i == 2:  # three prompts shown and withdrawn: ignored, as if left to expire
            assert await alert_kinds(admin) == [("ignored_prompts", "medium")]
        if i == 3:  # withdrawn again and again
            assert await alert_kinds(admin) == [("prompt_cycling", "high")]
        clock.advance(70)  # about one a minute: under push bombing (5 in 5 minutes)
    status, target = await sign_in(rp)
    assert status == 201, target
    assert await phone.approve(target["id"], number=target["number"]) == "approved"
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("approved_after_denials", "critical")
    assert all_kinds([alert]) >= {"ignored_prompts", "prompt_cycling", "approved_after_denials"}
    assert "push_bombing" not in all_kinds([alert])


async def test_a_couple_of_retries_are_normal(rp: LoginFlow, phone: Phone, admin: AdminClient) -> None:
    """A person who cancels and starts over twice, then approves: nothing to alert."""
    for _ in range(2):
        _status, c = await sign_in(rp)
        await phone.pending()
        assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
    _status, c = await sign_in(rp)
    assert await phone.approve(c["id"], number=c["number"]) == "approved"
    assert await admin.alerts() == []
    assert (await admin.user(USER))["blocks"] == []  # three prompts: nowhere near the push-bombing window


async def test_cancelled_prompts_still_fill_the_push_bombing_window(
        rp: LoginFlow, phone: Phone, admin: AdminClient, server: RunningServer,
        http: aiohttp.ClientSession, clock: Clock) -> None:
    """Withdrawing a prompt after the phone showed it does not take it back: the phone buzzed all the same.
    Five prompts (`push_bombing_max`) created and cancelled inside the window, and the sixth is refused
    with the push-bombing alert, whose evidence is exactly the five cancelled prompts."""
    clock.freeze()  # one second: Retry-After is the whole window, counted from the first cancelled prompt
    cancelled = []
    for _ in range(5):
        status, c = await sign_in(rp)
        assert status == 201, c
        await phone.pending()  # the prompt is on the phone
        assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
        assert (await rp.status(c["id"]))["status"] == "cancelled"
        cancelled.append(c["id"])
    assert all_kinds(await admin.alerts()) == {"ignored_prompts", "prompt_cycling"}  # no push bombing yet

    async with http.post(server.url + "/v1/challenges", json={"user": USER, "context": OFFICE},
                         headers=rp.headers) as resp:
        status, body, retry_after = resp.status, await resp.json(), resp.headers.get("Retry-After")
    assert_error(status, body, 429, "rate_limited")
    assert retry_after == "300"  # detection.push_bombing_window_s
    [alert] = await admin.alerts()
    assert all_kinds([alert]) == {"ignored_prompts", "prompt_cycling", "push_bombing"}
    [bombing] = [e for e in alert["evidence"]["events"] if e["kind"] == "push_bombing"]
    assert bombing["refused"] is True
    assert sorted(p["challenge_id"] for p in bombing["prompts"]) == sorted(cancelled)
    assert [b["kind"] for b in (await admin.user(USER))["blocks"]] == ["push_bombing"]


async def test_a_cancelled_prompt_that_never_reached_a_phone_is_not_ignored(
        rp: LoginFlow, phone: Phone, admin: AdminClient, clock: Clock) -> None:
    for _ in range(3):
        _status, c = await sign_in(rp)
        assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
        clock.advance(70)
    assert await admin.alerts() == []  # three withdrawn before the phone saw them: below prompt_cycling
    _status, c = await sign_in(rp)
    assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
    assert await alert_kinds(admin) == [("prompt_cycling", "high")]


async def test_not_me_on_a_cancelled_prompt_is_recorded_and_contains(
        rp: LoginFlow, phone: Phone, admin: AdminClient) -> None:
    status, c = await sign_in(rp)
    shown = await phone.fetch(c["id"])
    assert (await rp.call("DELETE", f"/v1/challenges/{c['id']}"))[0] == 200
    err = await rejected(phone.deny(shown, reason="not_me"))
    assert (err.status, err.error) == (409, "already_decided")
    assert "recorded" in err.message
    assert DESK in err.message
    alerts = await admin.alerts()
    assert alerts[0]["severity"] == "critical"
    assert "denied_not_me" in all_kinds(alerts)
    event = next(e for e in alerts[0]["evidence"]["events"] if e["kind"] == "denied_not_me")
    assert (event["answer_reason"], event["device_id"]) == ("not_me", phone.device_id)
    view = await admin.user(USER)
    assert view["suspended"]
    status, body = await sign_in(rp)
    assert_error(status, body, 403, "suspended")
    # reported once: saying it again changes nothing
    count = (await admin.alerts())[0]["evidence"]["event_count"]
    await rejected(phone.deny(shown, reason="not_me"))
    assert (await admin.alerts())[0]["evidence"]["event_count"] == count


async def test_not_me_on_an_expired_prompt_contains_the_same(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                              clock: Clock) -> None:
    _status, c = await sign_in(rp, ttl_s=10)
    shown = await phone.fetch(c["id"])
    clock.advance(11)
    err = await rejected(phone.deny(shown, reason="not_me"))
    assert (err.status, err.error) == (409, "expired")
    assert DESK in err.message
    view = await admin.user(USER)
    assert view["suspended"]
    assert view["consecutive_failures"] == 0  # a denial is no guess at the authenticator


# ---------------------------------------------------------------------------------------------------------
# 3. Lockout by strangers
# ---------------------------------------------------------------------------------------------------------


async def test_a_stranger_cannot_lock_a_user_out(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                  server: RunningServer, clock: Clock) -> None:
    """The attack as it was run: five prompts left to expire, then five wrong access codes for a user who
    was never issued one. It locked the account in 11 s; now it raises the ignored-prompts alert only."""
    for _ in range(5):
        status, c = await sign_in(rp, ttl_s=10)
        assert status == 201
    clock.advance(11)
    await ExpirySweeper(server.app[REDIS], KeySpace("pa"), server.app[ALERTS]).settle_due()
    for _ in range(5):
        status, body = await rp.call("POST", "/v1/access-codes/verify", GUESS)
        assert body == {"valid": False, "reason": "invalid"}
    view = await admin.user(USER)
    assert not view["locked"]
    assert view["consecutive_failures"] == 0
    # five prompts in five minutes: the push-bombing window holds further prompts for a while, no more
    assert [b["kind"] for b in view["blocks"]] == ["push_bombing"]
    assert all_kinds(await admin.alerts()) == {"ignored_prompts"}
    clock.advance(300)
    status, c = await sign_in(rp)
    assert status == 201, c


async def test_wrong_numbers_still_lock(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                        clock: Clock) -> None:
    for _ in range(10):
        _status, c = await sign_in(rp)
        assert await phone.approve(c["id"], number=wrong(c["number"])) == "denied"
        clock.advance(120)
    assert (await admin.user(USER))["locked"]


# ---------------------------------------------------------------------------------------------------------
# 8. The service desk unlocks, and the user is let back in
# ---------------------------------------------------------------------------------------------------------


async def test_unlock_lets_the_user_back_in_and_says_what_it_ended(
        rp: LoginFlow, phone: Phone, admin: AdminClient, clock: Clock) -> None:
    clock.freeze()
    # Wrong numbers lock the account; the prompts on the way fill the push-bombing window.
    for _ in range(5):
        status, c = await sign_in(rp)
        await phone.approve(c["id"], number=wrong(c["number"]))
    status, body = await sign_in(rp)
    assert_error(status, body, 429, "rate_limited")
    await admin.call("POST", f"/v1/users/{USER}/lock")
    status, _issued = await admin.call("POST", f"/v1/users/{USER}/access-codes")
    for _ in range(5):
        await rp.call("POST", "/v1/access-codes/verify", GUESS)
    view = await admin.user(USER)
    blocks = {b["kind"]: b for b in view["blocks"]}
    assert set(blocks) == {"locked", "push_bombing"}  # wrong codes while locked are refused, not counted
    assert blocks["locked"]["until"] is None
    assert blocks["push_bombing"]["until"] is not None

    status, body = await admin.call("POST", f"/v1/users/{USER}/unlock")
    assert status == 200, body
    assert (body["was_locked"], body["push_bombing_block_ended"]) == (True, True)
    assert (await admin.user(USER))["blocks"] == []
    status, c = await sign_in(rp)  # the next sign-in is let through at once
    assert status == 201, c
    entry = next(e for e in await admin.audit(USER) if e["what"] == "unlocked")
    assert entry["details"]["push_bombing_block_ended"] is True
    assert entry["details"]["counters_reset"]


async def test_issuing_an_access_code_ends_the_wrong_code_block(rp: LoginFlow, phone: Phone,
                                                                admin: AdminClient, clock: Clock) -> None:
    clock.freeze()
    await admin.call("POST", f"/v1/users/{USER}/access-codes")
    for _ in range(5):
        await rp.call("POST", "/v1/access-codes/verify", GUESS)
    status, body = await rp.call("POST", "/v1/access-codes/verify", GUESS)
    assert_error(status, body, 429, "rate_limited")
    assert [b["kind"] for b in (await admin.user(USER))["blocks"]] == ["access_code_attempts"]
    # the service desk, on the phone with the user, issues a new code: it works at once (same second)
    status, issued = await admin.call("POST", f"/v1/users/{USER}/access-codes")
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": issued["code"]})
    assert body == {"valid": True}
    assert any(e["what"] == "access_code_issued" and e["details"].get("counters_reset")
               for e in await admin.audit(USER))


async def test_the_wrong_code_limit_holds_in_the_second_after_issuing(
        rp: LoginFlow, phone: Phone, admin: AdminClient, clock: Clock) -> None:
    clock.freeze()
    await admin.call("POST", f"/v1/users/{USER}/access-codes")
    results = [await rp.call("POST", "/v1/access-codes/verify", GUESS)
               for _ in range(7)]
    assert [s for s, _ in results] == [200] * 5 + [429] * 2


# ---------------------------------------------------------------------------------------------------------
# 9. A lock wins over every policy
# ---------------------------------------------------------------------------------------------------------


async def test_a_lock_wins_over_exempt_and_shared(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                   redis_url: str, keyring: KeyRingHolder,
                                                   http: aiohttp.ClientSession) -> None:
    for flag in ("exempt", "shared"):
        status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {flag: True})
        assert status == 200, body
        assert (await sign_in(rp))[1]["status"] == "allowed"
        assert (await admin.call("POST", f"/v1/users/{USER}/lock"))[1] == {"user": USER, "locked": True}
        status, body = await sign_in(rp)
        assert_error(status, body, 403, "locked")
        assert DESK in body["message"]
        await admin.call("POST", f"/v1/users/{USER}/unlock")
        await admin.call("PUT", f"/v1/users/{USER}/policy", {flag: False})

    # accounts exempt or shared by the configured patterns, never enrolled, can be locked too
    settings = make_settings(redis_url, free_port(), quiet_detection=False,
                             policy={"shared": ["shared.*@nhs.net"], "exempt": ["svc-*@nhs.net"]})
    running = await start_server(settings, keyring)
    try:
        rp2, admin2 = LoginFlow(http, running.url), AdminClient(http, running.url)
        for user in ("shared.ward7@nhs.net", "svc-backup@nhs.net"):
            status, body = await rp2.call("POST", "/v1/challenges", {"user": user})
            assert (status, body["status"]) == (200, "allowed"), body
            assert (await admin2.call("POST", f"/v1/users/{user}/lock"))[0] == 200
            status, body = await rp2.call("POST", "/v1/challenges", {"user": user})
            assert_error(status, body, 403, "locked")
    finally:
        await running.close()


async def test_exempting_a_contained_account_is_refused_or_alerted(rp: LoginFlow, phone: Phone,
                                                                   admin: AdminClient) -> None:
    for _ in range(5):
        await sign_in(rp)
    status, body = await sign_in(rp)
    assert_error(status, body, 429, "rate_limited")  # push bombing under way
    status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": True})
    assert_error(status, body, 409, "containment_active")
    assert "push_bombing" in body["message"]
    assert (await admin.user(USER))["policy"] is None
    status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": True, "force": True})
    assert status == 200, body
    assert "policy_override" in all_kinds(await admin.alerts())
    assert any(e["what"] == "policy_set" and e["details"].get("forced_over") for e in await admin.audit(USER))


async def test_an_open_critical_alert_also_refuses_an_exemption(rp: LoginFlow, phone: Phone,
                                                                 admin: AdminClient) -> None:
    status, c = await sign_in(rp)
    await phone.deny(c["id"], reason="not_me")
    await admin.call("POST", f"/v1/users/{USER}/unlock")  # suspension lifted, the alert still open
    status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {"shared": True})
    assert_error(status, body, 409, "containment_active")
    assert "open_critical_alert" in body["message"]


# ---------------------------------------------------------------------------------------------------------
# 10. What the user is told to do
# ---------------------------------------------------------------------------------------------------------


async def test_the_deployments_message_reaches_the_phone_and_the_login_flow(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    second = await add_phone(rp, phone, USER, http)
    status, attack = await sign_in(rp)
    status, other = await sign_in(rp)
    shown = await second.fetch(other["id"])
    assert await phone.deny(attack["id"], reason="not_me") == "denied"
    assert phone.user_message == DESK  # the phone tells the user what to do now
    seen = await rp.status(attack["id"])
    assert (seen["reason"], seen["user_message"]) == ("not_me", DESK)
    contained = await rp.status(other["id"])
    assert (contained["reason"], contained["user_message"]) == ("suspended", DESK)
    status, body = await sign_in(rp)
    assert_error(status, body, 403, "suspended")
    assert body["message"].endswith(DESK)
    status, c = await rp.call("POST", "/v1/access-codes/verify", GUESS)
    assert c == {"valid": False, "reason": "suspended", "user_message": DESK}
    # and the phone whose prompt was withdrawn by the containment learns why, with the same words
    err = await rejected(second.approve(shown, number=other["number"]))
    assert err.error == "already_decided"


async def test_a_mistake_carries_no_message(rp: LoginFlow, phone: Phone) -> None:
    _status, c = await sign_in(rp)
    assert await phone.deny(c["id"], reason="mistake") == "denied"
    assert phone.user_message is None
    assert "user_message" not in await rp.status(c["id"])


# ---------------------------------------------------------------------------------------------------------
# 12. An account locked by wrong numbers says so in the headline
# ---------------------------------------------------------------------------------------------------------


async def test_a_lock_takes_the_alerts_headline(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                 clock: Clock) -> None:
    for _ in range(10):
        _status, c = await sign_in(rp)
        await phone.approve(c["id"], number=wrong(c["number"]))
        clock.advance(120)  # under push bombing, inside one incident
    [alert] = await admin.alerts()
    assert (alert["kind"], alert["severity"]) == ("account_locked", "high")
    assert "account_locked" in {c["action"] for c in alert["evidence"]["containment"]}
    # the lock is news at the same severity: a new version, so receivers get alert.updated saying it
    assert alert["version"] == 2
    assert facts("alert.updated", alert).title == (
        "Update: Account locked after repeated wrong numbers or access codes")


async def test_concurrent_answers_about_a_new_phone_decide_once(rp: LoginFlow, phone: Phone,
                                                               http: aiohttp.ClientSession,
                                                               admin: AdminClient) -> None:
    other = await Phone.enroll(await admin.enroll_uri(USER), session=http)
    new = await Phone.enroll(await rp.enroll_uri(USER), session=http)
    [p1] = await phone.add_device_prompts()
    [p2] = await other.add_device_prompts()
    assert p1.id == p2.id
    results = await asyncio.gather(phone.approve(p1, number=new.approval_number),
                                   other.deny(p2, reason="mistake"), return_exceptions=True)
    decided = [r for r in results if isinstance(r, str)]
    assert len(decided) == 1, results
    assert [r.error for r in results if isinstance(r, ServerRejected)] == ["already_decided"]
    expected = "active" if decided == ["approved"] else "refused"
    assert (await new.activation())["status"] == expected
