"""The RADIUS front (pushauth/radius/) against FreeRADIUS's own client, radclient (Debian's freeradius-utils).

Each test runs a pushauth server (for the phone) and the RADIUS front in this process, on one real Redis; the
front listens on a loopback port and radclient, started as a process, is the VPN. The phone is the reference
simulator (pushauth/phone.py) over HTTP. Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import pytest
from radius_support import (
    AUTO,
    CHALLENGE,
    SECRET,
    USER,
    VPN_ADDRESS,
    Front,
    answer_when_prompted,
    ask,
    counter,
    front,
    request,
    running_front,
)
from support import API_KEY, LoginFlow, eventually, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Challenge, Phone
from testkit.processes import Child
from testkit.radius_clients import missing_radius_tools
from testkit.redis_server import RedisServer

if (why := missing_radius_tools("radclient")) is not None:
    pytest.skip(why, allow_module_level=True)

__all__ = ["front"]  # a fixture, used by name


# -- auto mode -----------------------------------------------------------------------------------------------


async def test_auto_mode_approved_on_the_phone_is_accepted(front: Front) -> None:
    phone = await front.phone()
    seen: list[Challenge] = []

    async def approve(ch: Challenge) -> str:
        seen.append(ch)
        return await phone.approve(ch)

    answering = asyncio.create_task(answer_when_prompted(phone, approve))
    reply = await ask(front.port, request())
    await answering
    assert reply.code == "Access-Accept", reply.output
    assert "Message-Authenticator" in reply.attributes  # every reply is signed (BlastRADIUS)
    [challenge] = seen
    # Approve/deny with context: no number the VPN could not show; the application's name; the address.
    assert challenge.number_matching is False
    assert challenge.app == "NHSmail webmail"
    assert challenge.context == {"ip": VPN_ADDRESS}


async def test_auto_mode_not_me_is_rejected_alerted_and_suspends(redis_url: str, keyring: KeyRingHolder,
                                                                 tmp_path: Path) -> None:
    async with running_front(redis_url, keyring, tmp_path, [AUTO], quiet_detection=False) as front:
        phone = await front.phone()
        answering = asyncio.create_task(answer_when_prompted(phone, lambda ch: phone.deny(ch, "not_me")))
        reply = await ask(front.port, request())
        await answering
        assert reply.code == "Access-Reject", reply.output
        assert "Contact your IT service desk" in (reply.reply_message or "")
        [alert] = await front.admin.alerts()
        assert (alert["kind"], alert["severity"]) == ("denied_not_me", "critical"), alert
        assert "'radius_client': 'vpn'" in str(alert) or '"radius_client": "vpn"' in str(alert), alert
        # Contained: the next RADIUS sign-in is refused without a prompt.
        before = await front.prompts()
        again = await ask(front.port, request())
        assert again.code == "Access-Reject"
        assert "blocked" in (again.reply_message or "")
        assert await front.prompts() == before


async def test_no_answer_by_the_deadline_is_rejected(front: Front) -> None:
    await front.phone()
    reply = await ask(front.port, request())
    assert reply.code == "Access-Reject", reply.output
    assert "No answer from your phone" in (reply.reply_message or "")
    assert AUTO["deadline_s"] - 1 <= reply.elapsed_s <= AUTO["deadline_s"] + 3, reply.elapsed_s


async def test_retransmits_make_one_prompt_and_one_answer(front: Front) -> None:
    phone = await front.phone()
    held_before = counter("pushauth_radius_retransmits_total", state="held")

    async def approve_late(ch: Challenge) -> str:
        await asyncio.sleep(4.5)  # radclient resends every 1 s meanwhile
        return await phone.approve(ch)

    answering = asyncio.create_task(answer_when_prompted(phone, approve_late))
    reply = await ask(front.port, request(), retries=4, timeout_s=1.5)
    await answering
    assert reply.code == "Access-Accept", reply.output
    assert await front.prompts() == 1
    assert counter("pushauth_radius_retransmits_total", state="held") - held_before >= 2


async def test_a_user_without_a_phone_is_rejected(front: Front) -> None:
    reply = await ask(front.port, request("nobody@nhs.net"))
    assert reply.code == "Access-Reject"
    assert "No phone" in (reply.reply_message or "")


# -- challenge mode ----------------------------------------------------------------------------------------


@pytest.fixture
async def gateway(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [CHALLENGE]) as running:
        yield running


async def test_challenge_mode_shows_the_number_and_accepts_after_approval(gateway: Front) -> None:
    phone = await gateway.phone()
    first = await ask(gateway.port, request())
    assert first.code == "Access-Challenge", first.output
    number = re.search(r"Enter (\d+) in the pushauth app", first.reply_message or "")
    assert number is not None, first.reply_message
    assert first.state is not None
    assert first.state.startswith("0x")
    [pending] = await phone.pending()
    assert pending.number_matching is True
    assert await phone.approve(pending, number=number.group(1)) == "approved"
    # The user presses Enter: an empty response with the State.
    second = await ask(gateway.port, request(password="", State=first.state))
    assert second.code == "Access-Accept", second.output
    # The State was single-use.
    replay = await ask(gateway.port, request(password="", State=first.state))
    assert replay.code == "Access-Reject"
    assert "expired" in (replay.reply_message or "")


async def test_challenge_mode_waits_for_the_phone_after_enter(gateway: Front) -> None:
    phone = await gateway.phone()
    first = await ask(gateway.port, request())
    number = re.search(r"Enter (\d+)", first.reply_message or "")
    assert number is not None
    assert first.state
    approving = asyncio.create_task(answer_when_prompted(
        phone, lambda ch: _later(1.0, phone.approve(ch, number=number.group(1)))))
    second = await ask(gateway.port, request(password="", State=first.state))
    await approving
    assert second.code == "Access-Accept", second.output
    assert second.elapsed_s >= 0.9


async def _later(delay_s: float, action: Awaitable[str]) -> str:
    await asyncio.sleep(delay_s)
    return await action


async def test_challenge_mode_wrong_number_is_rejected(gateway: Front) -> None:
    phone = await gateway.phone()
    first = await ask(gateway.port, request())
    number = re.search(r"Enter (\d+)", first.reply_message or "")
    assert number is not None
    assert first.state
    [pending] = await phone.pending()
    wrong = str((int(number.group(1)) + 1) % 100).zfill(len(number.group(1)))
    assert await phone.approve(pending, number=wrong) == "denied"
    second = await ask(gateway.port, request(password="", State=first.state))
    assert second.code == "Access-Reject", second.output


async def test_challenge_mode_takes_an_access_code_instead(gateway: Front) -> None:
    await gateway.phone()
    status, body = await gateway.admin.call("POST", f"/v1/users/{USER}/access-codes", {})
    assert status == 201, body
    first = await ask(gateway.port, request())
    assert first.code == "Access-Challenge"
    assert first.state
    wrong = await ask(gateway.port, request(password="AAAA-BBBB-CCCC", State=first.state))
    assert wrong.code == "Access-Reject"
    again = await ask(gateway.port, request())
    right = await ask(gateway.port, request(password=body["code"], State=again.state or ""))
    assert right.code == "Access-Accept", right.output


async def test_a_state_from_another_user_is_refused(gateway: Front) -> None:
    await gateway.phone()
    await gateway.phone("fay@nhs.net")
    first = await ask(gateway.port, request())
    assert first.state
    stolen = await ask(gateway.port, request("fay@nhs.net", password="", State=first.state))
    assert stolen.code == "Access-Reject"


# -- what is dropped ---------------------------------------------------------------------------------------


async def test_a_wrong_secret_gets_no_answer_and_no_prompt(front: Front) -> None:
    await front.phone()
    before = counter("pushauth_radius_dropped_total", reason="bad_message_authenticator")
    reply = await ask(front.port, request(), secret="not-the-shared-secret-at-all", timeout_s=1)
    assert reply.code is None, reply.output
    assert await front.prompts() == 0
    assert counter("pushauth_radius_dropped_total", reason="bad_message_authenticator") == before + 1


async def test_missing_message_authenticator_is_dropped(front: Front) -> None:
    await front.phone()
    before = counter("pushauth_radius_dropped_total", reason="no_message_authenticator")
    reply = await ask(front.port, request(), message_authenticator=False, timeout_s=1)
    assert reply.code is None, reply.output
    assert await front.prompts() == 0
    assert counter("pushauth_radius_dropped_total", reason="no_message_authenticator") == before + 1


async def test_a_client_that_opted_out_is_answered_and_counted(redis_url: str, keyring: KeyRingHolder,
                                                                tmp_path: Path) -> None:
    legacy = {**AUTO, "require_message_authenticator": False}
    async with running_front(redis_url, keyring, tmp_path, [legacy]) as front:
        phone = await front.phone()
        before = counter("pushauth_radius_no_message_authenticator_total", client="vpn")
        answering = asyncio.create_task(answer_when_prompted(phone, phone.approve))
        reply = await ask(front.port, request(), message_authenticator=False)
        await answering
        assert reply.code == "Access-Accept", reply.output
        assert counter("pushauth_radius_no_message_authenticator_total", client="vpn") == before + 1


async def test_unknown_clients_and_junk_are_dropped_and_the_front_survives(redis_url: str,
                                                                          keyring: KeyRingHolder,
                                                                          tmp_path: Path) -> None:
    only_elsewhere = {**AUTO, "address": "192.0.2.0/24"}
    trusted = {**AUTO, "name": "local", "address": "127.0.0.1/32"}
    async with running_front(redis_url, keyring, tmp_path, [only_elsewhere, trusted]) as front:
        phone = await front.phone()
        unknown = counter("pushauth_radius_dropped_total", reason="unknown_client")
        malformed = counter("pushauth_radius_dropped_total", reason="malformed")
        junk = [b"", b"\x01", b"\x01\x02\x00\x14" + b"\x00" * 16, b"\x01\x02\xff\xff" + b"A" * 60,
                b"\x01\x02\x00\x18" + b"\x00" * 16 + b"\x01\x00\x00\x00", bytes(range(256)) * 8]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))  # not a client: dropped before anything else
            sock.sendto(b"\x01\x07\x00\x14" + b"\x00" * 16, ("127.0.0.1", front.port))
            for packet in junk:  # from the client's address: undecodable
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
                    own.sendto(packet, ("127.0.0.1", front.port))
        await asyncio.sleep(0.3)
        assert counter("pushauth_radius_dropped_total", reason="unknown_client") == unknown + 1
        assert counter("pushauth_radius_dropped_total", reason="malformed") > malformed
        answering = asyncio.create_task(answer_when_prompted(phone, phone.approve))
        reply = await ask(front.port, request())
        await answering
        assert reply.code == "Access-Accept", reply.output


async def test_a_request_without_pap_is_rejected_without_a_prompt(front: Front) -> None:
    await front.phone()
    reply = await ask(front.port, {"User-Name": USER, "CHAP-Password": "0x" + "00" * 17})
    assert reply.code == "Access-Reject", reply.output
    assert "PAP" in (reply.reply_message or "")
    assert await front.prompts() == 0


# -- the process: pushauth radius -c config.toml -------------------------------------------------------------


async def _check(config: Path) -> int:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pushauth", "radius", "-c", str(config),
                                                "--check", stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait()


async def test_the_process_beats_answers_and_drains_on_sigterm(redis_url: str, keyring: KeyRingHolder,
                                                               tmp_path: Path) -> None:
    secret = tmp_path / "vpn.secret"
    secret.write_text(SECRET + "\n")
    port = free_port()
    server = await start_server(make_settings(redis_url, free_port()), keyring)
    config = tmp_path / "radius.toml"
    config.write_text(f"""
[server]
base_url = "{server.url}"
[store]
redis_url = "{redis_url}"
[keys]
ephemeral = true
[[applications]]
id = "webmail"
name = "NHSmail webmail"
api_key_sha256 = ["{sha256_hex(API_KEY)}"]
[radius]
listen = ["127.0.0.1"]
port = {port}
[[radius.clients]]
name = "vpn"
address = "127.0.0.1/32"
secret_file = "{secret}"
application = "webmail"
mode = "auto"
primary = "none"
deadline_s = 20
[logging]
format = "json"
""")
    process = Child.python(["-m", "pushauth", "radius", "-c", str(config), "--name", "radius-1"],
                           tmp_path / "radius.log")
    try:
        async with aiohttp.ClientSession() as http:
            login = LoginFlow(http, server.url)
            phone = await Phone.enroll(await login.enroll_uri(USER), session=http)

            async def beating() -> bool | None:
                return True if await _check(config) == 0 else None

            await eventually(beating, 20, "pushauth radius --check")

            async def approve_after_sigterm(ch: Challenge) -> str:
                process.signal(signal.SIGTERM)  # stop taking requests; answer the one held
                await asyncio.sleep(1.0)
                return await phone.approve(ch)

            answering = asyncio.create_task(answer_when_prompted(phone, approve_after_sigterm))
            reply = await ask(port, request(), retries=1, timeout_s=20)
            await answering
            assert reply.code == "Access-Accept", f"{reply.output}\n{process.log_text()[-3000:]}"
            assert await process.exited(30) == 0, process.log_text()[-3000:]
        log = process.log_text()
        assert '"event":"radius_started"' in log
        assert '"event":"radius_stopped"' in log
        assert SECRET not in log
    finally:
        if process.returncode is None:
            process.kill9()
        await server.close()


async def test_redis_down_fails_closed(private_redis: RedisServer, keyring: KeyRingHolder,
                                       tmp_path: Path) -> None:
    # Nothing is done before the request is claimed in Redis (pushauth/radius/retransmits.py): without
    # Redis, no password check, no prompt, no answer; the packet is dropped and counted, and the client
    # resends (or gives up) -- never an Accept.
    async with running_front(private_redis.url, keyring, tmp_path, [AUTO]) as front:
        await front.phone()
        before = counter("pushauth_radius_dropped_total", reason="store_unavailable")
        private_redis.stop()
        try:
            reply = await ask(front.port, request(), timeout_s=3)
            assert reply.code is None, reply.output
            assert counter("pushauth_radius_dropped_total", reason="store_unavailable") == before + 1
        finally:
            private_redis.start()
        # Redis back: the same front answers again (dropping was not a crash).
        reply = await ask(front.port, request("nobody@nhs.net"), timeout_s=10)
        assert reply.code == "Access-Reject", reply.output
        assert "No phone" in (reply.reply_message or "")


async def test_proxy_state_is_echoed(front: Front) -> None:
    # RFC 2865 5.33: a proxy between client and server finds its Proxy-State in the reply, unchanged.
    reply = await ask(front.port, request("nobody@nhs.net", **{"Proxy-State": "0x70726f78792d3031"}))
    assert reply.code == "Access-Reject", reply.output
    assert reply.attributes.get("Proxy-State") == ["0x70726f78792d3031"], reply.output


async def test_a_client_over_its_rate_limit_is_rejected_without_a_prompt(redis_url: str,
                                                                          keyring: KeyRingHolder,
                                                                          tmp_path: Path) -> None:
    async with running_front(redis_url, keyring, tmp_path, [{**AUTO, "rate_limit": 1}]) as front:
        phone = await front.phone()
        answering = asyncio.create_task(answer_when_prompted(phone, phone.approve))
        assert (await ask(front.port, request())).code == "Access-Accept"
        await answering
        refused = await ask(front.port, request())
        assert refused.code == "Access-Reject", refused.output
        assert "Too many sign-ins" in (refused.reply_message or "")
        assert await front.prompts() == 1


async def test_held_requests_are_bounded(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> None:
    async with running_front(redis_url, keyring, tmp_path, [AUTO], radius={"max_held": 1}) as front:
        await front.phone()
        await front.phone("fay@nhs.net")
        before = counter("pushauth_radius_dropped_total", reason="too_many_held")
        held = asyncio.create_task(ask(front.port, request(), timeout_s=20))  # waits for Erin's phone
        for _ in range(100):
            if await front.prompts():
                break
            await asyncio.sleep(0.05)
        second = await ask(front.port, request("fay@nhs.net"), timeout_s=1)
        assert second.code is None, second.output  # dropped: the client would resend later
        assert counter("pushauth_radius_dropped_total", reason="too_many_held") == before + 1
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held


async def test_the_number_typed_at_the_prompt_counts_as_enter(gateway: Front) -> None:
    phone = await gateway.phone()
    first = await ask(gateway.port, request())
    number = re.search(r"Enter (\d+)", first.reply_message or "")
    assert number is not None
    assert first.state
    [pending] = await phone.pending()
    assert await phone.approve(pending, number=number.group(1)) == "approved"
    # The user types the number at the VPN's prompt too: taken as Enter, not as a wrong access code.
    second = await ask(gateway.port, request(password=number.group(1), State=first.state))
    assert second.code == "Access-Accept", second.output
