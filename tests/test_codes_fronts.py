"""Offline codes where people sign in without the login-flow API: the RADIUS front (a code after the
password, or typed at the Access-Challenge; radclient as the VPN) and the OpenID sign-in page."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
from radius_support import AUTO, CHALLENGE, USER, Front, ask, request, running_front

from pushauth.crypto.keyring import KeyRingHolder
from testkit.radius_clients import missing_radius_tools

if (why := missing_radius_tools("radclient")) is not None:
    pytest.skip(why, allow_module_level=True)


@pytest.fixture
async def radius(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [AUTO]) as running:
        yield running


@pytest.fixture
async def gateway(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [CHALLENGE]) as running:
        yield running


async def app_for(front: Front, user: str = USER) -> pyotp.TOTP:
    """An authenticator app enrolled and activated for `user` (the activation spends the current step)."""
    status, body = await front.admin.call("POST", f"/v1/users/{user}/otp-methods", {})
    assert status == 201, body
    app = pyotp.parse_uri(body["uri"])
    assert isinstance(app, pyotp.TOTP)
    status, done = await front.admin.call("POST", f"/v1/users/{user}/otp-methods/{body['id']}/activate",
                                          {"code": app.now()})
    assert status == 200, done
    return app


def next_code(app: pyotp.TOTP) -> str:
    """The code of the next time step: inside the window, and never the one the activation spent."""
    return str(app.at(int(time.time()) + 30))


async def test_radius_code_after_the_password_signs_in_without_a_prompt(radius: Front) -> None:
    await radius.phone()
    app = await app_for(radius)
    wrong = await ask(radius.port, request(password="irrelevant,000000" if next_code(app) != "000000"
                                           else "irrelevant,111111"))
    assert wrong.code == "Access-Reject", wrong.output
    assert "code is not valid" in (wrong.reply_message or "")
    right = await ask(radius.port, request(password=f"irrelevant,{next_code(app)}"))
    assert right.code == "Access-Accept", right.output
    replay = await ask(radius.port, request(password=f"irrelevant,{next_code(app)}"))
    assert replay.code == "Access-Reject", replay.output
    assert await radius.prompts() == 0  # no phone was asked, for any of them
    whats = [(e["what"], e["details"]["via"]) for e in await radius.admin.audit(USER)
             if e["what"] in ("otp_used", "otp_refused")]
    assert whats == [("otp_refused", "radius"), ("otp_used", "radius"), ("otp_refused", "radius")]


async def test_radius_code_typed_at_the_challenge_instead_of_the_phone(gateway: Front) -> None:
    phone = await gateway.phone()
    app = await app_for(gateway)
    first = await ask(gateway.port, request())
    assert first.code == "Access-Challenge", first.output
    assert first.state
    right = await ask(gateway.port, request(password=next_code(app), State=first.state))
    assert right.code == "Access-Accept", right.output
    assert await phone.pending() == []  # the prompt was withdrawn
    again = await ask(gateway.port, request())
    assert again.state
    replay = await ask(gateway.port, request(password=next_code(app), State=again.state))
    assert replay.code == "Access-Reject", replay.output


async def test_radius_challenge_asks_a_user_without_a_phone_for_the_code(gateway: Front) -> None:
    """No phone, an authenticator app: the Access-Challenge asks for the code, and the answer is checked as
    one (a wrong one is a wrong code); no phone is ever prompted. A lock still refuses at once."""
    app = await app_for(gateway, "frank@nhs.net")
    first = await ask(gateway.port, request(user="frank@nhs.net"))
    assert first.code == "Access-Challenge", first.output
    assert "code from your authenticator app" in (first.reply_message or "")
    assert first.state
    wrong = "000000" if next_code(app) != "000000" else "111111"
    refused = await ask(gateway.port, request(user="frank@nhs.net", password=wrong, State=first.state))
    assert refused.code == "Access-Reject", refused.output
    assert "code is not valid" in (refused.reply_message or "")
    again = await ask(gateway.port, request(user="frank@nhs.net"))
    assert again.state
    right = await ask(gateway.port, request(user="frank@nhs.net", password=next_code(app), State=again.state))
    assert right.code == "Access-Accept", right.output
    assert await gateway.prompts() == 0
    whats = [e["why"] for e in await gateway.admin.audit("frank@nhs.net") if e["what"].startswith("otp_")]
    assert whats[:2] == ["valid", "invalid"]
    status, body = await gateway.admin.call("POST", "/v1/users/frank@nhs.net/lock")
    assert status == 200, body
    locked = await ask(gateway.port, request(user="frank@nhs.net"))
    assert locked.code == "Access-Reject", locked.output
    assert "blocked" in (locked.reply_message or "")


async def test_radius_code_after_the_password_for_a_user_without_a_phone(radius: Front) -> None:
    """Auto mode shows no challenge: a phone-less user types password,code; the password alone is refused
    with a message that says how."""
    app = await app_for(radius, "frank@nhs.net")
    alone = await ask(radius.port, request(user="frank@nhs.net"))
    assert alone.code == "Access-Reject", alone.output
    assert "then , and the code" in (alone.reply_message or "")
    right = await ask(radius.port, request(user="frank@nhs.net", password=f"irrelevant,{next_code(app)}"))
    assert right.code == "Access-Accept", right.output
    assert await radius.prompts() == 0
