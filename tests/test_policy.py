"""Sign-in policy (pushauth/accounts/policy.py): one scenario per answer of the NHSmail MFA FAQ
(docs/nhsmail-mfa-faq.md), driven over HTTP as the login flow, the phone and the security team would,
against a real server and a real Redis with the production defaults.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import (
    OTHER_API_KEY,
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

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone, ServerRejected

USER = "nurse.jones@nhs.net"
OFFICE = {"ip": "10.20.30.40", "user_agent": "Edge", "location": "Leeds, GB"}
POLICY = {"shared": ["shared.*@nhs.net"], "exempt": ["svc-*@nhs.net"],
          "enforcement_date": "2030-01-01",
          "enforcement": [{"date": "2020-01-01", "applications": ["other"]}]}


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port(), quiet_detection=False, policy=POLICY),
                                 keyring)
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
    return await Phone.enroll(await rp.enroll_uri(USER), session=http)


async def sign_in(rp: LoginFlow, user: str = USER, **extra: Any) -> tuple[int, dict[str, Any]]:
    status, body = await rp.call("POST", "/v1/challenges", {"user": user, "context": OFFICE, **extra})
    return status, dict(body)


async def approve_and_remember(rp: LoginFlow, phone: Phone, browser: str) -> str:
    status, c = await sign_in(rp, browser_id=browser)
    assert status == 201, c
    await phone.approve(c["id"], number=c["number"])
    seen = await rp.status(c["id"])
    assert seen["status"] == "approved"
    return str(seen["remember_token"])


# -- "asked each time you log in from a different device or browser" -----------------------------------------


async def test_new_browser_prompts_remembered_browser_does_not(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession,
        server: RunningServer) -> None:
    token = await approve_and_remember(rp, phone, "browser-A")
    status, body = await sign_in(rp, browser_id="browser-A", remember_token=token)
    assert (status, body) == (200, {"status": "allowed", "reason": "remembered"})
    # Another browser with a copied token, no browser id, or another application: a prompt.
    assert (await sign_in(rp, browser_id="browser-B", remember_token=token))[0] == 201
    assert (await sign_in(rp, remember_token=token))[0] == 201
    other = LoginFlow(http, server.url, OTHER_API_KEY)
    assert (await sign_in(other, browser_id="browser-A", remember_token=token))[0] == 201
    # A forged token (signature of another key) is no token at all.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await sign_in(rp, browser_id="browser-A", remember_token=forged))[0] == 201
    entries = await admin.audit(USER)
    assert any(e["what"] == "allowed" and e["details"].get("reason") == "remembered"
               and e["who"] == "app:webmail" for e in entries), entries


async def test_remembered_browser_expires(rp: LoginFlow, phone: Phone, clock: Clock) -> None:
    token = await approve_and_remember(rp, phone, "browser-A")
    clock.offset += 31 * 86400
    assert (await sign_in(rp, browser_id="browser-A", remember_token=token))[0] == 201


async def test_not_me_revokes_remembered_browsers(rp: LoginFlow, phone: Phone, admin: AdminClient) -> None:
    token = await approve_and_remember(rp, phone, "browser-A")
    status, attack = await sign_in(rp)
    await phone.deny(attack["id"], reason="not_me")
    await admin.call("POST", f"/v1/users/{USER}/unlock")  # the team lifts the suspension
    status, body = await sign_in(rp, browser_id="browser-A", remember_token=token)
    assert status == 201, body  # prompted again


@pytest.mark.parametrize("how", ["new_phone", "password_reset", "security_team_one", "security_team_all",
                                 "login_flow_forget"])
async def test_remembered_browsers_revoked(how: str, rp: LoginFlow, phone: Phone, admin: AdminClient,
                                           http: aiohttp.ClientSession) -> None:
    token = await approve_and_remember(rp, phone, "browser-A")
    if how == "new_phone":
        await add_phone(rp, phone, USER, http)
    elif how == "password_reset":
        status, body = await rp.call("POST", "/v1/signals/password-reset", {"user": USER})
        assert (status, body["revoked"]) == (200, 1), body
    elif how == "security_team_one":
        status, body = await admin.call("GET", f"/v1/users/{USER}/remembered")
        [entry] = body["remembered"]
        status, body = await admin.call("DELETE", f"/v1/users/{USER}/remembered/{entry['id']}")
        assert status == 200, body
    elif how == "security_team_all":
        status, body = await admin.call("DELETE", f"/v1/users/{USER}/remembered")
        assert (status, body["revoked"]) == (200, 1), body
    else:
        status, body = await rp.call("POST", "/v1/remembered/revoke", {"remember_token": token})
        assert (status, body["revoked"]) == (200, 1), body
    assert (await sign_in(rp, browser_id="browser-A", remember_token=token))[0] == 201
    assert any(e["what"] in ("remembered_revoked", "device_enrolled") for e in await admin.audit(USER))


# -- "do not set up MFA on a shared mailbox"; exempt accounts ------------------------------------------------


async def test_shared_mailbox_refused_at_enrollment_and_allowed_without_prompt(rp: LoginFlow,
                                                                               admin: AdminClient) -> None:
    mailbox = "shared.ward7@nhs.net"
    status, body = await rp.call("POST", "/v1/enrollments", {"user": mailbox})
    assert_error(status, body, 403, "shared_account")
    assert "shared mailboxes must not set up MFA" in body["message"]
    status, body = await sign_in(rp, mailbox)
    assert (status, body) == (200, {"status": "allowed", "reason": "exempt", "account": "shared"})
    [allowed, refused] = await admin.audit(mailbox)
    assert (allowed["what"], allowed["why"]) == ("allowed", "shared")
    assert (refused["what"], refused["why"]) == ("enrollment_refused", "shared_account")


async def test_security_team_marks_an_account_shared_or_exempt(
        rp: LoginFlow, phone: Phone, admin: AdminClient, http: aiohttp.ClientSession) -> None:
    uri = await rp.enroll_uri("ward9@nhs.net")  # a code made before the account is marked shared
    status, body = await admin.call("PUT", "/v1/users/ward9@nhs.net/policy", {"shared": True})
    assert (status, body["policy"]) == (200, "shared"), body
    with pytest.raises(ServerRejected) as err:
        await Phone.enroll(uri, session=http)
    assert (err.value.status, err.value.error) == (403, "shared_account")

    status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": True})
    assert body["policy"] == "exempt"
    assert await sign_in(rp) == (200, {"status": "allowed", "reason": "exempt", "account": "exempt"})
    await admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": False})
    assert (await sign_in(rp))[0] == 201
    status, body = await admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": "yes"})
    assert_error(status, body, 422)


async def test_exempt_pattern_audited_on_every_use(rp: LoginFlow, admin: AdminClient) -> None:
    for _ in range(3):
        assert (await sign_in(rp, "svc-backup@nhs.net"))[1]["reason"] == "exempt"
    assert len(await admin.audit("svc-backup@nhs.net")) == 3


# -- "from 30 June 2024 you will need to use MFA" ------------------------------------------------------------


async def test_enforcement_date_grace_then_not_enrolled(rp: LoginFlow, clock: Clock, admin: AdminClient,
                                                        http: aiohttp.ClientSession,
                                                        server: RunningServer) -> None:
    status, body = await sign_in(rp, "new.starter@nhs.net")
    assert (status, body) == (200, {"status": "allowed", "reason": "grace",
                                    "enroll_by": "2030-01-01T00:00:00Z"})
    # Per application: "other" has been enforced since 2020.
    other = LoginFlow(http, server.url, OTHER_API_KEY)
    status, body = await sign_in(other, "new.starter@nhs.net")
    assert_error(status, body, 403, "not_enrolled")
    clock.offset = 2_000_000_000 - int(time.time())  # 2033
    status, body = await sign_in(rp, "new.starter@nhs.net")
    assert_error(status, body, 403, "not_enrolled")
    whys = [e["why"] for e in await admin.audit("new.starter@nhs.net")]
    assert whys == ["not_enrolled", "not_enrolled", "before enforcement date"]


# -- "don't have access to a mobile device? contact your IT Service Desk" ------------------------------------


async def test_access_code_works_once_and_raises_an_info_alert(rp: LoginFlow, phone: Phone,
                                                               admin: AdminClient) -> None:
    status, issued = await admin.call("POST", f"/v1/users/{USER}/access-codes")
    assert status == 201, issued
    code = issued["code"]
    assert len(code.replace("-", "")) == 12
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": code.lower()})
    assert (status, body) == (200, {"valid": True})
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": code})
    assert (status, body) == (200, {"valid": False, "reason": "invalid"})  # single use
    status, alerts = await admin.call("GET", "/v1/alerts")
    [alert] = alerts["alerts"]
    assert (alert["kind"], alert["severity"]) == ("access_code_issued", "info")
    assert alert["evidence"]["kinds"] == {"access_code_issued": 1, "access_code_used": 1}
    whats = [e["what"] for e in await admin.audit(USER)]
    assert whats[:3] == ["access_code_refused", "access_code_used", "access_code_issued"]
    # The code never reaches the audit trail.
    assert code not in str(await admin.audit(USER))


async def test_access_code_expires(rp: LoginFlow, phone: Phone, admin: AdminClient, clock: Clock) -> None:
    _, issued = await admin.call("POST", f"/v1/users/{USER}/access-codes")
    clock.offset += 3601
    status, body = await rp.call("POST", "/v1/access-codes/verify", {"user": USER, "code": issued["code"]})
    assert (status, body) == (200, {"valid": False, "reason": "invalid"})


async def test_access_code_brute_force_is_limited_and_locks(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                            clock: Clock) -> None:
    await admin.call("POST", f"/v1/users/{USER}/access-codes")
    wrong = {"user": USER, "code": "AAAA-BBBB-CCCC"}
    for _ in range(5):
        status, body = await rp.call("POST", "/v1/access-codes/verify", wrong)
        assert (status, body) == (200, {"valid": False, "reason": "invalid"})
    status, body = await rp.call("POST", "/v1/access-codes/verify", wrong)
    assert_error(status, body, 429, "rate_limited")
    # Each wrong code counts toward the lockout (10): five more after the window, and the account locks.
    clock.offset += 901
    for _ in range(5):
        await rp.call("POST", "/v1/access-codes/verify", wrong)
    status, view = await admin.call("GET", f"/v1/users/{USER}")
    assert view["locked"], view
    status, body = await sign_in(rp)
    assert_error(status, body, 403, "locked")


# -- lost or replaced phone ----------------------------------------------------------------------------------


async def test_lost_phone_revoked_by_the_other_phone(rp: LoginFlow, phone: Phone, admin: AdminClient,
                                                     http: aiohttp.ClientSession, clock: Clock) -> None:
    new = await add_phone(rp, phone, USER, http)
    # The old phone hears that a phone was added; the security team gets a high alert.
    [notice] = await phone.notices()
    assert (notice["type"], notice["device_id"]) == ("device_added", new.device_id)
    assert await phone.notices() == []
    _status, alerts = await admin.call("GET", "/v1/alerts")
    assert [(a["kind"], a["severity"]) for a in alerts["alerts"]] == [("device_enrolled", "high")]
    assert {d["id"] for d in await new.devices()} == {phone.device_id, new.device_id}

    clock.advance(86400 + 1)  # past the new phone's cool-down (enrollment.revoke_cooldown_s)
    _, c = await sign_in(rp)
    lost = await phone.fetch(c["id"])
    await new.revoke_device(phone.device_id)
    with pytest.raises(ServerRejected) as err:
        await phone.approve(lost, number=c["number"])
    assert err.value.status in (401, 403)
    assert (await rp.status(c["id"]))["status"] == "pending"
    assert [d["id"] for d in await new.devices()] == [new.device_id]
    with pytest.raises(ServerRejected) as err:
        await new.revoke_device(new.device_id)  # not itself (that is DELETE /v1/device)
    assert err.value.status == 404
    assert any(e["what"] == "device_revoked" and e["who"] == f"device:{new.device_id}"
               for e in await admin.audit(USER))
    _status, alerts = await admin.call("GET", "/v1/alerts")
    assert ("device_revoked", "high") in [(a["kind"], a["severity"]) for a in alerts["alerts"]]


# -- a phone pauses its own prompts --------------------------------------------------------------------------


async def test_pause_refuses_and_counts_prompts_then_resume(rp: LoginFlow, phone: Phone,
                                                            admin: AdminClient) -> None:
    await phone.pause(7 * 86400)
    for _ in range(2):
        status, body = await sign_in(rp)
        assert_error(status, body, 403, "suspended")
        assert "paused" in body["message"]
    status, view = await admin.call("GET", f"/v1/users/{USER}")
    assert view["prompts_refused_while_paused"] == 2
    assert view["paused_until"] is not None
    await phone.resume()
    assert (await sign_in(rp))[0] == 201
    with pytest.raises(ServerRejected) as err:
        await phone.pause(400 * 86400)
    assert err.value.status == 422
    whats = {e["what"] for e in await admin.audit(USER)}
    assert {"prompts_paused", "prompts_resumed", "refused"} <= whats
