"""The harness that drives real RADIUS clients (testkit/radius_clients.py, testkit/sshd.py) works, proved
against a stub RADIUS server written here (pyrad), before `pushauth radius` exists (issue 17): radclient
(accept, reject, challenge and its follow-up, its own retransmits), pam_radius_auth through pamtester
(password, challenge answered), and an SSH login through sshd + PAM + pam_radius_auth.

The stub accepts the password "right" and rejects anything else; for a challenge user it answers the right
password with Access-Challenge ("Enter 42 in the app" and a State), then accepts the follow-up that carries
that State, once.
"""

from __future__ import annotations

import asyncio
import hmac
import pwd
import secrets
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from pyrad import dictionary, packet

from testkit.processes import Child
from testkit.radius_clients import (
    MESSAGE_AUTHENTICATOR,
    PamRadiusService,
    missing_radius_tools,
    pamtester,
    radclient,
)
from testkit.sshd import LOGIN_MARKER, LocalUser, Sshd, ssh_login

REPO = Path(__file__).resolve().parent.parent
DICTIONARY = dictionary.Dictionary(str(REPO / "pushauth" / "radius" / "dictionary"))
SECRET = "harness-shared-secret"
PROMPT = "Enter 42 in the app"


def _skip_unless(*programs: str, pam: bool = False, root: bool = False) -> pytest.MarkDecorator:
    reason = missing_radius_tools(*programs, pam=pam, root=root)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


needs_radclient = _skip_unless("radclient")
needs_pam = _skip_unless("pamtester", "expect", pam=True, root=True)
needs_ssh = _skip_unless("sshd", "ssh", "ssh-keygen", "expect", "useradd", pam=True, root=True)


# ---------------------------------------------------------------------------------------------------------
# The stub RADIUS server
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    source: tuple[str, int]
    identifier: int
    authenticator: bytes
    attributes: dict[str, list[Any]]
    password: str | None
    message_authenticator: bool  # present (and valid: an invalid one is dropped unanswered)


class StubRadius(asyncio.DatagramProtocol):
    """Answers Access-Requests after `delay_s` (every copy of a retransmit too, like a naive server), or
    never with `answer=False`; records each one."""

    def __init__(self, *, delay_s: float = 0.0, answer: bool = True,
                 challenge_users: Collection[str] = ("chal",)) -> None:
        self.delay_s = delay_s
        self.answer = answer
        self.challenge_users = set(challenge_users)
        self.received: list[Received] = []
        self.states: set[bytes] = set()
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is not a subclass of it

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = packet.AuthPacket(packet=data, secret=SECRET.encode(), dict=DICTIONARY)
        except packet.PacketError:
            return
        signed = request.message_authenticator is not None
        if signed and not request.verify_message_authenticator():
            return  # a wrong secret: dropped, as RFC 3579 says
        password = request.PwDecrypt(request["User-Password"][0]) if "User-Password" in request else None
        # pyrad's keys() gives attribute names; iterating the packet gives their numbers.
        attributes = {name: list(request[name]) for name in request.keys()}  # noqa: SIM118
        self.received.append(Received(addr, request.id, request.authenticator, attributes, password, signed))
        if not self.answer:
            return
        reply = self.decide(request, password)
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay_s, self._send, reply.ReplyPacket(), addr)

    def decide(self, request: packet.AuthPacket, password: str | None) -> packet.AuthPacket:
        reply = request.CreateReply()
        user = request["User-Name"][0] if "User-Name" in request else ""
        if "State" in request:
            state = bytes(request["State"][0])
            known = any(hmac.compare_digest(state, s) for s in self.states)
            self.states.discard(state)  # single-use
            reply.code = packet.AccessAccept if known else packet.AccessReject
        elif password != "right":
            reply.code = packet.AccessReject
            reply["Reply-Message"] = "Wrong password"
        elif user in self.challenge_users:
            state = secrets.token_bytes(16)
            self.states.add(state)
            reply.code = packet.AccessChallenge
            reply["Reply-Message"] = PROMPT
            reply["State"] = state
        else:
            reply.code = packet.AccessAccept
            reply["Reply-Message"] = "Welcome"
        return reply

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


@asynccontextmanager
async def stub_radius(**options: Any) -> AsyncIterator[StubRadius]:
    loop = asyncio.get_running_loop()
    transport, stub = await loop.create_datagram_endpoint(lambda: StubRadius(**options),
                                                          local_addr=("127.0.0.1", 0))
    try:
        yield stub
    finally:
        transport.close()


def _assert_stopped(child: Child | None) -> None:
    assert child is not None
    assert not child.alive(), child


# ---------------------------------------------------------------------------------------------------------
# radclient
# ---------------------------------------------------------------------------------------------------------


@needs_radclient
async def test_radclient_accept_and_reject() -> None:
    async with stub_radius() as stub:
        accepted = await radclient(stub.port, SECRET, {
            "User-Name": "alice", "User-Password": "right", "Calling-Station-Id": "192.0.2.7",
            "Message-Authenticator": MESSAGE_AUTHENTICATOR})
        rejected = await radclient(stub.port, SECRET, {
            "User-Name": "alice", "User-Password": "wrong", "Message-Authenticator": MESSAGE_AUTHENTICATOR})
    assert accepted.code == "Access-Accept", accepted.output
    assert accepted.reply_message == "Welcome"
    assert accepted.returncode == 0
    assert accepted.sent == 1
    assert rejected.code == "Access-Reject", rejected.output
    assert rejected.reply_message == "Wrong password"
    first = stub.received[0]
    assert first.message_authenticator  # 0x00 made radclient sign it, and the stub checked the HMAC
    assert first.password == "right"
    assert first.attributes["Calling-Station-Id"] == ["192.0.2.7"]
    assert first.identifier == accepted.identifier


@needs_radclient
async def test_radclient_challenge_then_follow_up_with_the_state() -> None:
    async with stub_radius() as stub:
        challenge = await radclient(stub.port, SECRET, {"User-Name": "chal", "User-Password": "right"})
        assert challenge.code == "Access-Challenge", challenge.output
        assert challenge.reply_message == PROMPT
        assert challenge.state is not None
        assert challenge.state.startswith("0x")
        follow_up = {"User-Name": "chal", "User-Password": "", "State": challenge.state}
        answered = await radclient(stub.port, SECRET, follow_up)
        replayed = await radclient(stub.port, SECRET, follow_up)
    assert answered.code == "Access-Accept", answered.output
    assert replayed.code == "Access-Reject", replayed.output  # the stub's States are single-use
    assert stub.received[1].attributes["State"] == [bytes.fromhex(challenge.state[2:])]


@needs_radclient
async def test_radclient_retransmits_the_same_packet_until_a_late_reply() -> None:
    # radclient's -r is the number of sends in all, -t the wait after each: 3 sends at 0, 1 and 2 s, and
    # the reply to the first arrives at 2.5 s.
    async with stub_radius(delay_s=2.5) as stub:
        reply = await radclient(stub.port, SECRET, {"User-Name": "alice", "User-Password": "right"},
                                retries=3, timeout_s=1.0)
    assert reply.code == "Access-Accept", reply.output
    assert reply.sent == 3
    assert reply.elapsed_s >= 2.5
    assert len(stub.received) == 3
    # What a server identifies a retransmit by: source address and port, Identifier, Request Authenticator.
    assert len({(r.source, r.identifier, r.authenticator) for r in stub.received}) == 1


@needs_radclient
async def test_radclient_gives_up_when_no_reply_comes() -> None:
    async with stub_radius(answer=False) as stub:
        reply = await radclient(stub.port, SECRET, {"User-Name": "alice", "User-Password": "right"},
                                retries=2, timeout_s=0.3)
    assert reply.code is None, reply.output
    assert reply.returncode != 0
    assert reply.sent == len(stub.received) == 2
    assert "No reply from server" in reply.output


# ---------------------------------------------------------------------------------------------------------
# pam_radius_auth through pamtester
# ---------------------------------------------------------------------------------------------------------


@needs_pam
async def test_pamtester_right_and_wrong_password(tmp_path: Path) -> None:
    async with stub_radius() as stub:
        with PamRadiusService(stub.port, SECRET, tmp_path, timeout_s=5) as pam:
            assert pam.path.is_file()
            ok = await pamtester(pam.name, "alice", ["right"])
            refused = await pamtester(pam.name, "alice", ["wrong"])
        assert not pam.path.exists()
        assert not pam.conf.exists()
    assert ok.succeeded, ok.transcript
    assert ok.prompts == ["Password: "]
    assert not refused.succeeded, refused.transcript
    assert refused.prompts == ["Password: "]
    assert "Authentication failure" in refused.transcript
    sent = stub.received[0]
    assert sent.password == "right"
    assert sent.attributes["NAS-Identifier"] == [pam.name]  # the service is this test's own
    assert not sent.message_authenticator  # Debian's pam_radius_auth 2.0 sends none (issue 17)


@needs_pam
async def test_pamtester_challenge_answered(tmp_path: Path) -> None:
    async with stub_radius() as stub:
        with PamRadiusService(stub.port, SECRET, tmp_path, timeout_s=5) as pam:
            answered = await pamtester(pam.name, "chal", ["right", ""])  # the password, then Enter
            # Nothing typed at the number prompt: the conversation ends there, unauthenticated.
            unanswered = await pamtester(pam.name, "chal", ["right"])
    assert answered.succeeded, answered.transcript
    assert answered.prompts == ["Password: ", PROMPT]
    assert "State" not in stub.received[0].attributes
    assert "State" in stub.received[1].attributes
    assert not unanswered.succeeded
    assert unanswered.conversation.unanswered == PROMPT


@needs_pam
async def test_pam_radius_auth_retransmits_the_same_packet_while_the_reply_is_held(tmp_path: Path) -> None:
    # What `auto` mode does to it: the reply waits for the phone. pam_radius_auth resends after its timeout
    # (3 s, its minimum), the very same packet, and takes the reply to the first one.
    async with stub_radius(delay_s=4.0) as stub:
        with PamRadiusService(stub.port, SECRET, tmp_path, timeout_s=3, retries=2) as pam:
            attempt = await pamtester(pam.name, "alice", ["right"])
    assert attempt.succeeded, attempt.transcript
    assert len(stub.received) == 2
    assert len({(r.source, r.identifier, r.authenticator) for r in stub.received}) == 1


# ---------------------------------------------------------------------------------------------------------
# A real SSH login: sshd + PAM + pam_radius_auth, ssh driven by expect
# ---------------------------------------------------------------------------------------------------------


@needs_ssh
async def test_ssh_login_accepted_and_refused_through_radius(tmp_path: Path) -> None:
    async with stub_radius() as stub:
        with PamRadiusService(stub.port, SECRET, tmp_path, timeout_s=5) as pam, LocalUser() as user, \
                Sshd(tmp_path / "sshd", pam.name, allow_users=[user.name]) as sshd:
            child = sshd.child
            accepted = await ssh_login(sshd.port, user.name, ["right"])
            refused = await ssh_login(sshd.port, user.name, ["wrong"])
            log = sshd.log_text()
    assert accepted.succeeded, f"{accepted.transcript}\n--- sshd log ---\n{log}"
    assert LOGIN_MARKER in accepted.transcript
    assert accepted.prompts == [f"({user.name}@127.0.0.1) Password: "]
    assert not refused.succeeded, refused.transcript
    assert "Permission denied" in refused.transcript
    assert f"Accepted keyboard-interactive/pam for {user.name}" in log
    first = stub.received[0]
    assert first.attributes["User-Name"] == [user.name]
    assert first.attributes["NAS-Identifier"] == [pam.name]  # sshd used the test's PAM service
    assert first.attributes["Calling-Station-Id"] == ["127.0.0.1"]
    # Everything is gone: sshd, the user, the PAM service.
    _assert_stopped(child)
    assert not pam.path.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)


@needs_ssh
async def test_ssh_login_with_the_challenge_prompt(tmp_path: Path) -> None:
    async with stub_radius(challenge_users=()) as stub:
        with PamRadiusService(stub.port, SECRET, tmp_path, timeout_s=5) as pam, LocalUser() as user, \
                Sshd(tmp_path / "sshd", pam.name, allow_users=[user.name]) as sshd:
            stub.challenge_users.add(user.name)
            attempt = await ssh_login(sshd.port, user.name, ["right", ""])
            log = sshd.log_text()
    assert attempt.succeeded, f"{attempt.transcript}\n--- sshd log ---\n{log}"
    assert attempt.prompts == [f"({user.name}@127.0.0.1) Password: ", f"({user.name}@127.0.0.1) {PROMPT}"]
