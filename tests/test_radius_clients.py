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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from radius_support import (
    AUTO,
    CHALLENGE,
    SECRET,
    USER,
    Front,
    answer_when_prompted,
    ask,
    request,
    running_front,
)

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Challenge, Phone
from testkit import slapd
from testkit.fakes.sandbox import TestCA
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


# -- the password first: slapd (OpenLDAP) as the directory ---------------------------------------------------

DIRECTORY_USERS = {"gwen": "Gwen's directory password 1"}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    if (why := slapd.available()) is not None:
        pytest.skip(why)
    ca = TestCA.create(tmp_path_factory.mktemp("ldap-ca"))
    with slapd.Slapd(tmp_path_factory.mktemp("slapd"), ca, DIRECTORY_USERS) as running:
        yield running


@pytest.fixture
async def ldap_front(redis_url: str, keyring: KeyRingHolder, tmp_path: Path,
                     directory: slapd.Slapd) -> AsyncIterator[Front]:
    ldap = {"url": directory.ldaps_url, "user_dn": directory.user_dn, "ca_file": str(directory.ca.ca_file)}
    # pam_radius_auth's entry (no Message-Authenticator); radclient, sending one, fits it too
    clients = [{**PAM_AUTO, "primary": "ldap"}]
    async with running_front(redis_url, keyring, tmp_path, clients, radius={"ldap": ldap}) as front:
        yield front


async def test_a_wrong_directory_password_is_rejected_before_any_prompt(ldap_front: Front,
                                                                        directory: slapd.Slapd) -> None:
    phone = await ldap_front.phone("gwen")
    binds = len(directory.binds())
    wrong = await ask(ldap_front.port, request("gwen", "not Gwen's password"))
    assert wrong.code == "Access-Reject", wrong.output
    assert "Wrong user name or password" in (wrong.reply_message or "")
    assert await ldap_front.prompts() == 0  # password spraying never reaches the phone
    assert await phone.pending() == []
    assert len(directory.binds()) == binds + 1  # the directory was asked, as the user
    audit = await ldap_front.admin.audit("gwen")
    assert any(e.get("what") == "refused" and e.get("why") == "password check: wrong"
               and e.get("who") == "radius:linux-pam" for e in audit), audit
    # The right password: now the phone is asked.
    approving = asyncio.create_task(answer_when_prompted(phone, phone.approve))
    right = await ask(ldap_front.port, request("gwen", DIRECTORY_USERS["gwen"]))
    await approving
    assert right.code == "Access-Accept", right.output
    assert await ldap_front.prompts() == 1


async def test_pamtester_with_the_directory_password(ldap_front: Front, tmp_path: Path) -> None:
    phone = await ldap_front.phone("gwen")
    with PamRadiusService(ldap_front.port, SECRET, tmp_path, timeout_s=PAM_WAIT_S) as pam:
        refused = await pamtester(pam.name, "gwen", ["a guess"])
        assert not refused.succeeded
        assert await ldap_front.prompts() == 0
        approving = asyncio.create_task(answer_when_prompted(phone, phone.approve))
        attempt = await pamtester(pam.name, "gwen", [DIRECTORY_USERS["gwen"]])
        await approving
        assert attempt.succeeded, attempt.transcript
