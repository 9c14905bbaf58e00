"""The sign-in policy over RADIUS (issue 17: "everything the REST path has applies"), against radclient.

Each scenario is one the REST path already answers (tests/test_policy.py, tests/test_trust.py), asked here by
FreeRADIUS's own client through `pushauth radius` (the front in this process, as in tests/test_radius.py):
a lock, a phone's pause, an exempt or shared account, the enforcement date, and the audit trail, which must
say which RADIUS client asked. REST's answer and RADIUS's are compared where both are cheap to get.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from radius_support import AUTO, USER, VPN_ADDRESS, Front, answer_when_prompted, ask, request, running_front
from support import OTHER_API_KEY, Clock, LoginFlow, assert_error

from pushauth.crypto.keyring import KeyRingHolder
from testkit.radius_clients import missing_radius_tools

if (why := missing_radius_tools("radclient")) is not None:
    pytest.skip(why, allow_module_level=True)

DESK = "Call the IT Service Desk on 0300 303 5035."
POLICY = {"shared": ["shared.*@nhs.net"], "exempt": ["svc-*@nhs.net"], "enforcement_date": "2030-01-01",
          "enforcement": [{"date": "2020-01-01", "applications": ["other"]}], "user_message": DESK}
# A second client on the same address range would be ambiguous: the one that signs in as "other" (enforced
# since 2020) is tried on a front of its own.
OTHER = {**AUTO, "name": "citrix", "application": "other"}


@pytest.fixture
async def front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    """The RADIUS front with the production detection defaults and a deployment's policy and message."""
    async with running_front(redis_url, keyring, tmp_path, [AUTO], quiet_detection=False,
                             policy=POLICY) as running:
        yield running


async def rest_sign_in(front: Front, user: str = USER, login: LoginFlow | None = None) -> tuple[int, Any]:
    """What the REST login flow is told for the same user, from the same address."""
    return await (login or front.login).call("POST", "/v1/challenges",
                                             {"user": user, "context": {"ip": VPN_ADDRESS}})


async def newest_audit(front: Front, user: str) -> dict[str, Any]:
    entries = await front.admin.audit(user)
    assert entries, f"nothing audited for {user}"
    return entries[0]


def from_radius(entry: dict[str, Any], client: str = "vpn") -> None:
    """The audit entry of a RADIUS sign-in names the RADIUS client that asked, and the user's address."""
    assert entry["who"] == f"radius:{client}", entry
    assert entry.get("details", {}).get("ip") == VPN_ADDRESS, entry


# -- a lock -----------------------------------------------------------------------------------------------


async def test_a_locked_user_is_rejected_without_a_prompt_and_audited(front: Front) -> None:
    await front.phone()
    status, body = await front.admin.call("POST", f"/v1/users/{USER}/lock")
    assert (status, body) == (200, {"user": USER, "locked": True})
    reply = await ask(front.port, request())
    assert reply.code == "Access-Reject", reply.output
    assert reply.reply_message == f"Sign-in is blocked for this account. {DESK}"
    assert await front.prompts() == 0
    entry = await newest_audit(front, USER)
    assert (entry["what"], entry["why"]) == ("refused", "locked"), entry
    from_radius(entry)
    status, body = await rest_sign_in(front)  # the REST path says the same
    assert_error(status, body, 403, "locked")
    assert DESK in body["message"]


async def test_a_lock_wins_over_exempt_and_shared_over_radius(front: Front) -> None:
    await front.phone()
    for flag in ("exempt", "shared"):
        assert (await front.admin.call("PUT", f"/v1/users/{USER}/policy", {flag: True}))[0] == 200
        assert (await front.admin.call("POST", f"/v1/users/{USER}/lock"))[0] == 200
        reply = await ask(front.port, request())
        assert reply.code == "Access-Reject", (flag, reply.output)
        assert "blocked" in (reply.reply_message or "")
        await front.admin.call("POST", f"/v1/users/{USER}/unlock")
        await front.admin.call("PUT", f"/v1/users/{USER}/policy", {flag: False})
    # by the configured patterns too, for accounts never enrolled
    for user in ("shared.ward7@nhs.net", "svc-backup@nhs.net"):
        assert (await ask(front.port, request(user))).code == "Access-Accept"
        assert (await front.admin.call("POST", f"/v1/users/{user}/lock"))[0] == 200
        refused = await ask(front.port, request(user))
        assert refused.code == "Access-Reject", (user, refused.output)
    assert await front.prompts() == 0


# -- a phone that paused its prompts ------------------------------------------------------------------------


async def test_a_user_who_paused_prompts_is_rejected_without_a_prompt_and_counted(front: Front) -> None:
    phone = await front.phone()
    until = await phone.pause(3600)
    reply = await ask(front.port, request())
    assert reply.code == "Access-Reject", reply.output
    # REST says the phone paused the prompts (403 suspended, "paused until ..."); so does the Reply-Message,
    # which is all a VPN user sees: they paused them themselves, there is no block for the service desk.
    assert reply.reply_message == f"Sign-in prompts are paused on your phone until {until}."
    assert await front.prompts() == 0
    status, body = await rest_sign_in(front)
    assert_error(status, body, 403, "suspended")
    assert "paused" in body["message"]
    status, view = await front.admin.call("GET", f"/v1/users/{USER}")
    assert status == 200, view
    assert view["prompts_refused_while_paused"] == 2  # one over RADIUS, one over REST
    entry = (await front.admin.audit(USER))[1]  # the RADIUS one, before the REST one
    assert (entry["what"], entry["why"]) == ("refused", "paused"), entry
    from_radius(entry)
    await phone.resume()
    answering = asyncio.create_task(answer_when_prompted(phone, phone.approve))
    assert (await ask(front.port, request())).code == "Access-Accept"
    await answering


# -- exempt and shared accounts ---------------------------------------------------------------------------


async def test_an_exempt_user_is_accepted_without_a_prompt_and_audited(front: Front) -> None:
    await front.phone()
    status, body = await front.admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": True})
    assert (status, body["policy"]) == (200, "exempt"), body
    reply = await ask(front.port, request())
    assert reply.code == "Access-Accept", reply.output
    assert await front.prompts() == 0
    entry = await newest_audit(front, USER)
    assert (entry["what"], entry["why"], entry["details"]["reason"]) == ("allowed", "exempt", "exempt"), entry
    from_radius(entry)
    # No longer exempt: prompted again (as REST is).
    await front.admin.call("PUT", f"/v1/users/{USER}/policy", {"exempt": False})
    assert (await rest_sign_in(front))[0] == 201


async def test_accounts_exempt_or_shared_by_pattern_are_accepted_each_time_audited(front: Front) -> None:
    for user, kind in (("svc-backup@nhs.net", "exempt"), ("shared.ward7@nhs.net", "shared")):
        for _ in range(2):
            reply = await ask(front.port, request(user))
            assert reply.code == "Access-Accept", (user, reply.output)
        entries = await front.admin.audit(user)
        assert [(e["what"], e["why"]) for e in entries] == [("allowed", kind)] * 2, entries
        for entry in entries:
            from_radius(entry)
        assert (await rest_sign_in(front, user))[1]["status"] == "allowed"
    assert await front.prompts() == 0


# -- the enforcement date ---------------------------------------------------------------------------------


async def test_no_phone_is_let_in_before_the_enforcement_date_and_refused_after(front: Front,
                                                                                 clock: Clock) -> None:
    user = "new.starter@nhs.net"
    reply = await ask(front.port, request(user))
    assert reply.code == "Access-Accept", reply.output  # grace, as REST's "allowed" / "grace"
    entry = await newest_audit(front, user)
    assert (entry["what"], entry["why"]) == ("allowed", "before enforcement date"), entry
    assert entry["details"]["enroll_by"] == "2030-01-01T00:00:00Z"
    from_radius(entry)
    status, body = await rest_sign_in(front, user)
    assert (status, body) == (200, {"status": "allowed", "reason": "grace",
                                    "enroll_by": "2030-01-01T00:00:00Z"})

    clock.offset = 2_000_000_000 - int(time.time())  # 2033
    refused = await ask(front.port, request(user))
    assert refused.code == "Access-Reject", refused.output
    assert "No phone" in (refused.reply_message or "")
    entry = await newest_audit(front, user)
    assert (entry["what"], entry["why"]) == ("refused", "not_enrolled"), entry
    from_radius(entry)
    assert await front.prompts() == 0


async def test_the_enforcement_date_of_the_clients_application_applies(redis_url: str, keyring: KeyRingHolder,
                                                                       tmp_path: Path) -> None:
    async with running_front(redis_url, keyring, tmp_path, [OTHER], quiet_detection=False,
                             policy=POLICY) as front:
        user = "new.starter@nhs.net"
        reply = await ask(front.port, request(user))
        assert reply.code == "Access-Reject", reply.output  # "other" is enforced since 2020
        assert "No phone" in (reply.reply_message or "")
        entry = await newest_audit(front, user)
        assert (entry["what"], entry["why"]) == ("refused", "not_enrolled"), entry
        from_radius(entry, "citrix")
        other = LoginFlow(front.http, front.server.url, OTHER_API_KEY)
        status, body = await rest_sign_in(front, user, other)
        assert_error(status, body, 403, "not_enrolled")


# -- a prompt's outcome ------------------------------------------------------------------------------------


async def test_an_approved_radius_sign_in_is_on_the_users_record_with_its_client(front: Front) -> None:
    # A plain prompt is not an audit entry on the REST path either: its record is the user's recent
    # challenges, with the context the login flow sent. Over RADIUS that context names the client.
    phone = await front.phone()
    answering = asyncio.create_task(answer_when_prompted(phone, phone.approve))
    assert (await ask(front.port, request())).code == "Access-Accept"
    await answering
    status, view = await front.admin.call("GET", f"/v1/users/{USER}")
    assert status == 200, view
    [prompt] = view["recent_challenges"]
    assert (prompt["app"], prompt["status"]) == ("webmail", "approved"), prompt
    assert prompt["context"] == {"radius_client": "vpn", "ip": VPN_ADDRESS}, prompt
