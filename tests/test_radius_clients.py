"""`pushauth radius` behind RADIUS clients nobody here wrote: Linux-PAM's pam_radius_auth (Debian's
libpam-radius-auth 2.0) driven by pamtester, and a real SSH login through OpenSSH's sshd with that PAM module,
driven by expect (keyboard-interactive). The drivers are testkit/radius_clients.py and testkit/sshd.py.

Debian's pam_radius_auth 2.0 sends no Message-Authenticator (BlastRADIUS, CVE-2024-3596): its client entry
here opts out (`require_message_authenticator = false`), as a deployment with that module would have to,
and every request it sends is counted and warned about.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from radius_support import AUTO, CHALLENGE, SECRET, USER, Front, answer_when_prompted, running_front

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Challenge, Phone
from testkit.radius_clients import PamRadiusService, missing_radius_tools, pamtester
from testkit.sshd import LocalUser, Sshd, ssh_login

if (why := missing_radius_tools("pamtester", "expect", pam=True, root=True)) is not None:
    pytest.skip(why, allow_module_level=True)

# pam_radius_auth: no Message-Authenticator; it waits 30 s for a reply (longer than the deadline: no
# retransmit needed, though one would be answered from the same held request).
PAM_AUTO = {**AUTO, "name": "linux-pam", "require_message_authenticator": False, "deadline_s": 15}
PAM_CHALLENGE = {**CHALLENGE, "name": "linux-pam", "require_message_authenticator": False, "deadline_s": 15}
PAM_WAIT_S = 30


@pytest.fixture
async def pam_front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [PAM_AUTO]) as front:
        yield front


@pytest.fixture
async def pam_gateway(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [PAM_CHALLENGE]) as front:
        yield front


async def test_pamtester_password_then_approval_on_the_phone(pam_front: Front, tmp_path: Path) -> None:
    phone = await pam_front.phone()
    with PamRadiusService(pam_front.port, SECRET, tmp_path, timeout_s=PAM_WAIT_S) as pam:
        approving = asyncio.create_task(answer_when_prompted(phone, phone.approve))
        attempt = await pamtester(pam.name, USER, ["the-password"])
        [challenge] = [await approving]
        assert attempt.succeeded, attempt.transcript
        # The context the phone showed: the application; pam_radius_auth names its PAM service as the NAS.
        assert challenge.app == "NHSmail webmail"
        assert challenge.number_matching is False

        denying = asyncio.create_task(answer_when_prompted(phone, lambda ch: phone.deny(ch, "mistake")))
        refused = await pamtester(pam.name, USER, ["the-password"])
        await denying
        assert not refused.succeeded, refused.transcript
    assert await pam_front.prompts() == 2


async def test_pamtester_challenge_mode_shows_the_number(pam_gateway: Front, tmp_path: Path) -> None:
    phone = await pam_gateway.phone()

    async def approve_with_the_number_on_screen(ch: Challenge) -> str:
        # The user reads the number off the terminal (the Reply-Message pam_radius_auth printed as its
        # prompt); the test reads it where the server keeps it, then types it on the phone.
        number = await pam_gateway.redis.hget(_challenge_key(pam_gateway, ch.id), "num")
        assert isinstance(number, bytes)
        assert number
        return await phone.approve(ch, number=number.decode())

    with PamRadiusService(pam_gateway.port, SECRET, tmp_path, timeout_s=PAM_WAIT_S) as pam:
        approving = asyncio.create_task(answer_when_prompted(phone, approve_with_the_number_on_screen))
        attempt = await pamtester(pam.name, USER, ["the-password", ""])  # the password, then Enter
        await approving
        assert attempt.succeeded, attempt.transcript
        shown = [p for p in attempt.prompts if "pushauth app" in p]
        assert shown, attempt.prompts
        assert re.search(r"Enter \d+ in the pushauth app on your phone, then press Enter", shown[0]), shown


def _challenge_key(front: Front, cid: str) -> str:
    from pushauth import ids
    from pushauth.store import KeySpace

    uid = ids.challenge_uid(cid)
    assert uid is not None
    return KeySpace(front.server.settings.store.prefix).challenge(uid, cid)


async def test_ssh_login_approved_then_denied(pam_front: Front, tmp_path: Path) -> None:
    with LocalUser() as user:
        phone = await Phone.enroll(await pam_front.login.enroll_uri(user.name), session=pam_front.http)
        with PamRadiusService(pam_front.port, SECRET, tmp_path, timeout_s=PAM_WAIT_S) as pam, \
                Sshd(tmp_path / "sshd", pam.name, allow_users=[user.name]) as sshd:
            seen: list[Challenge] = []

            async def approve(ch: Challenge) -> str:
                seen.append(ch)
                return await phone.approve(ch)

            approving = asyncio.create_task(answer_when_prompted(phone, approve, within_s=20))
            logged_in = await ssh_login(sshd.port, user.name, ["the-password"])
            await approving
            assert logged_in.succeeded, f"{logged_in.transcript}\n{sshd.log_text()[-2000:]}"
            # pam_radius_auth sends the SSH client's address as Calling-Station-Id: the phone shows it.
            assert seen[0].context == {"ip": "127.0.0.1"}, seen[0]

            denying = asyncio.create_task(answer_when_prompted(phone, lambda ch: phone.deny(ch, "not_me"),
                                                               within_s=20))
            refused = await ssh_login(sshd.port, user.name, ["the-password"])
            await denying
            assert not refused.succeeded, refused.transcript
            assert "pushauth-login-ok" not in refused.transcript
