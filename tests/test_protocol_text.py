"""PROTOCOL.md says what the server does, and says it once (issue 14, item 16): every claim a challenge
carries is in the claim table of 8.2, which no sentence contradicts; a phone is told to require its user
before Approve, and what to show after "not me" (with the words the server returns for it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from support import LoginFlow

from pushauth.crypto import jws
from pushauth.phone import Phone

PROTOCOL = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text(encoding="utf-8")
USER = "alice@nhs.net"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"


def section(number: str) -> str:
    """The text of section `number` ("8.2", "9"), from its heading to the next heading of any level."""
    m = re.search(rf"^#{{2,3}} {re.escape(number)}[. ].*?$(.*?)(?=^#{{1,3}} )", PROTOCOL, re.M | re.S)
    assert m, f"no section {number} in PROTOCOL.md"
    return m.group(1)


def claims(token: str) -> dict[str, Any]:
    return dict(msgspec.json.decode(jws.b64url_decode(token.split(".")[1])))


async def test_every_claim_of_a_challenge_is_in_the_claim_table(login: LoginFlow, phone: Phone,
                                                                http: aiohttp.ClientSession) -> None:
    created = await login.create(USER, context={"ip": "203.0.113.9", "user_agent": FIREFOX,
                                                "location": "Leeds, GB"})
    sign_in = claims((await phone.fetch(created["id"])).token)
    await Phone.enroll(await login.enroll_uri(USER), session=http)  # a further phone: an add_device prompt
    [prompt] = await phone.add_device_prompts()
    first_cells = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", section("8.2"), re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert set(sign_in) | set(claims(prompt.token)) <= documented, documented
    assert {"purpose", "new_device", "number_length"} <= documented


def test_the_number_length_is_stated_once_and_not_contradicted() -> None:
    text = section("8.2")
    assert "cannot even know how many digits" not in text
    assert re.search(r"`number_length` \| present exactly when `number_matching` is `true`", text)


def test_a_phone_must_require_its_user_before_approving() -> None:
    text = section("8.4")
    assert "Approve MUST require the device's user verification" in text
    assert "MUST NOT approve without it" in text


def test_a_phone_is_told_what_to_show_after_not_me() -> None:
    text = section("9")
    assert '**After "not me"**' in text
    assert '"user_message"' in text
    assert "suspended" in text or "paused" in text
