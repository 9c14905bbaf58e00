"""The RADIUS front's password check before any push (pushauth/radius/primary.py; the LDAP bind is
pushauth/directory.py, which the OpenID sign-in page shares), against real servers on loopback: OpenLDAP's
slapd for `ldap` (testkit/slapd.py: LDAPS and StartTLS with a test CA), and for `radius` an upstream
written here with pyrad's own asyncio server (a RADIUS implementation that is not ours). What matters most:
a wrong or empty password never comes back OK, an empty one never reaches the directory, a user name cannot
move the bind DN, and a reply the upstream did not sign is not an answer.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrad.packet
import pytest
import structlog.testing
from pyrad.server import RemoteHost
from pyrad.server_async import ServerAsync

from pushauth.directory import LdapCheck, LdapSettings, Verdict, escape_dn_value
from pushauth.errors import ConfigError
from pushauth.radius.packets import load_dictionary
from pushauth.radius.primary import NoCheck, UpstreamCheck, open_checks
from pushauth.radius.settings import RadiusClient, RadiusSettings, UpstreamSettings
from testkit import slapd
from testkit.fakes.sandbox import TestCA

USERS = {"alice": "correct horse battery staple", "bob": "bob-password", "smith,john": "comma-in-uid"}
# An entry the injection test aims at: uid=x,ou=admins,ou=people,... with a password the attacker knows.
# Bound with user_dn "uid={user},ou=people,..." and the user name "x,ou=admins", an unescaped DN would be
# exactly this entry's.
ADMIN_PASSWORD = "admin-password"
ADMIN_DN = f"uid=x,ou=admins,{slapd.PEOPLE}"
EXTRA_LDIF = f"""dn: ou=admins,{slapd.PEOPLE}
objectClass: organizationalUnit
ou: admins

dn: {ADMIN_DN}
objectClass: inetOrgPerson
uid: x
cn: x
sn: x
userPassword: {slapd.ssha(ADMIN_PASSWORD)}
"""

needs_slapd = pytest.mark.skipif(slapd.available() is not None, reason=str(slapd.available()))


# ---------------------------------------------------------------------------------------------------------
# LDAP
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[slapd.Slapd]:
    if slapd.available():
        pytest.skip(str(slapd.available()))
    with slapd.Slapd(tmp_path_factory.mktemp("slapd"), ca, USERS, extra_ldif=EXTRA_LDIF) as running:
        yield running


def ldap_check(directory: slapd.Slapd, ca: TestCA, *, tls: str = "ldaps", **overrides: Any) -> LdapCheck:
    fields: dict[str, Any] = {"user_dn": directory.user_dn, "ca_file": str(ca.ca_file), "timeout_s": 3.0}
    if tls == "ldaps":
        fields["url"] = directory.ldaps_url
    else:
        fields.update(url=directory.ldap_url, start_tls=True)
    fields.update(overrides)
    return LdapCheck(LdapSettings(**fields))


@pytest.fixture(params=["ldaps", "starttls"])
async def check(request: pytest.FixtureRequest, directory: slapd.Slapd,
                ca: TestCA) -> AsyncIterator[LdapCheck]:
    checker = ldap_check(directory, ca, tls=request.param)
    yield checker
    await checker.aclose()


@needs_slapd
async def test_right_password_is_ok(check: LdapCheck, directory: slapd.Slapd) -> None:
    assert await check.check("alice", USERS["alice"]) == Verdict.OK
    assert directory.binds()[-1] == f"uid=alice,{slapd.PEOPLE}"
    # A DN special in a real uid is escaped, not refused: the bind lands on that entry.
    assert await check.check("smith,john", USERS["smith,john"]) == Verdict.OK


@needs_slapd
async def test_the_connection_is_tls(check: LdapCheck, directory: slapd.Slapd) -> None:
    assert await check.check("bob", USERS["bob"]) == Verdict.OK
    log = directory.log_text()
    assert "TLS established" in log
    # slapd logs each bind with the security strength of its connection: never 0 (plain text).
    assert "mech=SIMPLE bind_ssf=0 ssf=0" not in log


@needs_slapd
async def test_wrong_password_and_unknown_user_are_wrong(check: LdapCheck) -> None:
    with structlog.testing.capture_logs() as logs:
        assert await check.check("alice", "not it") == Verdict.WRONG
        assert await check.check("alice", USERS["bob"]) == Verdict.WRONG
        assert await check.check("nobody", "whatever") == Verdict.WRONG
        assert await check.check("ALICE ", USERS["alice"] + " ") == Verdict.WRONG
        assert await check.check("alice", USERS["alice"]) == Verdict.OK
    # Logs name the user and the result, never a password.
    assert [(e["user"], e["result"]) for e in logs] == [("alice", "wrong"), ("alice", "wrong"),
                                                        ("nobody", "wrong"), ("ALICE ", "wrong"),
                                                        ("alice", "ok")]
    assert not any(p in repr(logs) + repr(check) for p in ("not it", *USERS.values()))


@needs_slapd
async def test_empty_password_is_wrong_and_never_reaches_the_directory(check: LdapCheck,
                                                                      directory: slapd.Slapd) -> None:
    """An LDAP simple bind with a DN and an empty password is an unauthenticated bind (RFC 4513 5.1.2):
    servers that allow it answer success. It must not be asked at all."""
    accepted, binds = directory.accepted(), len(directory.binds())
    assert await check.check("alice", "") == Verdict.WRONG
    assert await check.check("", USERS["alice"]) == Verdict.WRONG
    assert await check.check("x" * 300, "something") == Verdict.WRONG
    await asyncio.sleep(0.2)  # time for a connection, had one been made, to reach slapd's log
    assert (directory.accepted(), len(directory.binds())) == (accepted, binds)


@needs_slapd
async def test_a_user_name_cannot_change_the_bind_dn(check: LdapCheck, directory: slapd.Slapd,
                                                    ca: TestCA) -> None:
    # The target exists and its password works when bound as itself...
    admin = ldap_check(directory, ca, user_dn=f"uid={{user}},ou=admins,{slapd.PEOPLE}")
    try:
        assert await admin.check("x", ADMIN_PASSWORD) == Verdict.OK
    finally:
        await admin.aclose()
    # ...but no user name reaches it through uid={user},ou=people,...
    for user in ("x,ou=admins", "x,ou=admins,ou=people,dc=example,dc=org", "x+ou=admins", "x\\,ou=admins",
                 "*)(uid=*", "*", "x\x00,ou=admins", " x,ou=admins", "#x", "x;ou=admins", "x\\"):
        assert await check.check(user, ADMIN_PASSWORD) == Verdict.WRONG, user
    bound = directory.binds()
    assert ADMIN_DN not in bound[-11:]
    assert all(dn.endswith(f",{slapd.PEOPLE}") and dn.count(",") == slapd.PEOPLE.count(",") + 1
               for dn in bound[-11:] if dn.startswith("uid=x")), bound[-11:]


def test_dn_escaping() -> None:
    assert escape_dn_value("alice") == "alice"
    assert escape_dn_value("x,ou=admins") == "x\\,ou\\=admins"
    assert escape_dn_value('a+b;c<d>e"f\\g') == 'a\\+b\\;c\\<d\\>e\\"f\\\\g'
    assert escape_dn_value("#x ") == "\\#x\\ "
    assert escape_dn_value(" x") == "\\ x"
    assert escape_dn_value("a\x00b\nc") == "a\\00b\\0ac"
    assert escape_dn_value("*)(uid=*") == "*)(uid\\=*"
    assert escape_dn_value("zoë") == "zoë"


@needs_slapd
@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
async def test_a_certificate_from_another_ca_is_unavailable(tls: str, directory: slapd.Slapd, ca: TestCA,
                                                            tmp_path: Path) -> None:
    other = TestCA.create(tmp_path / "other-ca")
    binds = len(directory.binds())
    for checker in (ldap_check(directory, ca, tls=tls, ca_file=str(other.ca_file)),
                    ldap_check(directory, ca, tls=tls, ca_file="")):  # the system's store: no test CA
        try:
            assert await checker.check("alice", USERS["alice"]) == Verdict.UNAVAILABLE
        finally:
            await checker.aclose()
    assert len(directory.binds()) == binds  # the password never left


@needs_slapd
async def test_failed_connections_leave_no_socket_open(directory: slapd.Slapd, tmp_path: Path) -> None:
    """ldap3 leaves its socket open when the connect or the handshake fails; the check closes it."""
    other = TestCA.create(tmp_path / "other-ca")
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    checkers = [ldap_check(directory, other, tls=tls) for tls in ("ldaps", "starttls")]
    checkers.append(ldap_check(directory, other, url=f"ldaps://127.0.0.1:{closed_port}"))
    gc.collect()  # what earlier tests left to the collector is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for checker in checkers:
            assert await checker.check("alice", USERS["alice"]) == Verdict.UNAVAILABLE
            await checker.aclose()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@needs_slapd
@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
async def test_a_certificate_for_another_name_is_unavailable(tls: str, directory: slapd.Slapd,
                                                             ca: TestCA) -> None:
    # The certificate names ldap.example.org and 127.0.0.1, not "localhost".
    url = (directory.ldaps_url if tls == "ldaps" else directory.ldap_url).replace("127.0.0.1", "localhost")
    checker = ldap_check(directory, ca, tls=tls, url=url)
    try:
        assert await checker.check("alice", USERS["alice"]) == Verdict.UNAVAILABLE
    finally:
        await checker.aclose()


@needs_slapd
async def test_a_stopped_directory_is_unavailable_within_the_timeout(tmp_path: Path, ca: TestCA) -> None:
    with slapd.Slapd(tmp_path / "slapd", ca, {"alice": USERS["alice"]}) as own:
        checker = ldap_check(own, ca, timeout_s=1.0)
        assert await checker.check("alice", USERS["alice"]) == Verdict.OK
    try:
        started = time.monotonic()
        assert await checker.check("alice", USERS["alice"]) == Verdict.UNAVAILABLE
        assert time.monotonic() - started < 1.0
    finally:
        await checker.aclose()


@dataclass
class Silent:
    """A TCP server that accepts and never answers: a hung directory. Counts connections held at once."""

    active: int = 0
    most: int = 0
    total: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.total += 1
        self.most = max(self.most, self.active)
        try:
            while await reader.read(4096):
                pass
        finally:
            self.active -= 1
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("scheme", ["ldap", "ldaps"])
async def test_a_hung_directory_is_unavailable_within_the_timeout_and_binds_are_capped(scheme: str) -> None:
    silent = Silent()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    checker = LdapCheck(LdapSettings(url=f"{scheme}://127.0.0.1:{port}", allow_plaintext=True,
                                     user_dn="uid={user},ou=people,dc=example,dc=org", timeout_s=1.0,
                                     concurrency=2))
    try:
        started = time.monotonic()
        verdicts = await asyncio.gather(*(checker.check(f"user{i}", "pw") for i in range(6)))
        elapsed = time.monotonic() - started
        assert verdicts == [Verdict.UNAVAILABLE] * 6
        assert elapsed < 1.5, elapsed
        # Two binds in flight at once, no more; the four that waited for a thread past their deadline were
        # never made.
        assert silent.most == 2
        assert silent.total == 2
    finally:
        await checker.aclose()  # the threads close their sockets: each handler sees its end
        for _ in range(100):
            if not silent.active:
                break
            await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()


async def test_concurrency_is_the_cap_on_binds_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = LdapCheck(LdapSettings(url="ldap://127.0.0.1:9", allow_plaintext=True,
                                     user_dn="uid={user},dc=example,dc=org", concurrency=3))
    active = most = 0
    guard = threading.Lock()

    def slow_bind(dn: str, password: str, deadline: float) -> Verdict:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        with guard:
            active -= 1
        return Verdict.OK

    monkeypatch.setattr(checker, "_bind", slow_bind)
    try:
        assert await asyncio.gather(*(checker.check(f"u{i}", "pw") for i in range(12))) == [Verdict.OK] * 12
        assert most == 3
    finally:
        await checker.aclose()


# ---------------------------------------------------------------------------------------------------------
# Upstream RADIUS
# ---------------------------------------------------------------------------------------------------------

SECRET = b"upstream-secret-0123456789abcdef"
WRONG_SECRET = b"not-the-upstream-secret-0123456"
UPSTREAM_USERS = {"alice": "alice-radius-pw", "forger": "forger-pw", "no-ma": "no-ma-pw",
                  "bad-ma": "bad-ma-pw", "long": "p" * 100}


@dataclass
class Received:
    user: str
    password: str
    message_authenticator_valid: bool
    nas_identifier: str
    raw: bytes


class Upstream(ServerAsync):  # type: ignore[misc]  # pyrad is untyped
    """An upstream RADIUS server (pyrad's): Accept for the right password, Reject otherwise; "challenge"
    gets an Access-Challenge, "silent" no answer, "forger" a reply signed with another secret, "no-ma" a
    reply without Message-Authenticator, "bad-ma" one whose Response Authenticator is right but whose
    Message-Authenticator is not."""

    def __init__(self) -> None:
        super().__init__(auth_port=0, hosts={"127.0.0.1": RemoteHost("127.0.0.1", SECRET, "pushauth")},
                         dictionary=load_dictionary(), enforce_ma=True)
        self.received: list[Received] = []

    @property
    def port(self) -> int:
        return int(self.auth_protocols[0].transport.get_extra_info("sockname")[1])

    def handle_auth_packet(self, protocol: Any, pkt: Any, addr: tuple[str, int]) -> None:
        user = pkt["User-Name"][0]
        password = pkt.PwDecrypt(pkt["User-Password"][0])
        self.received.append(Received(user, password, bool(pkt.verify_message_authenticator()),
                                      pkt["NAS-Identifier"][0], pkt.raw_packet))
        raw = answer(pkt, user, password)
        if raw is not None:
            protocol.transport.sendto(raw, addr)

    def handle_acct_packet(self, protocol: Any, pkt: Any, addr: Any) -> None:
        pass

    def handle_coa_packet(self, protocol: Any, pkt: Any, addr: Any) -> None:
        pass

    def handle_disconnect_packet(self, protocol: Any, pkt: Any, addr: Any) -> None:
        pass


def answer(pkt: Any, user: str, password: str) -> bytes | None:
    """The upstream's reply to an Access-Request, as it goes on the wire (None: no reply)."""
    if user == "silent":
        return None
    reply = pkt.CreateReply()
    if user == "challenge":
        reply.code = pyrad.packet.AccessChallenge
        reply["Reply-Message"] = "Enter your token code"
        reply["State"] = b"upstream-state"
    elif UPSTREAM_USERS.get(user) != password:
        reply.code = pyrad.packet.AccessReject
    if user == "forger":
        reply.secret = WRONG_SECRET
    if user == "no-ma":
        reply.message_authenticator = False
    raw: bytes = reply.ReplyPacket()
    if user == "bad-ma":
        raw = resign_with_bad_message_authenticator(raw, pkt.authenticator)
    return raw


def resign_with_bad_message_authenticator(raw: bytes, request_authenticator: bytes) -> bytes:
    """`raw` with its Message-Authenticator's value flipped and the Response Authenticator computed again
    with the right secret: only the Message-Authenticator check can catch it."""
    attrs = bytearray(raw[20:])
    i = 0
    while i < len(attrs):
        kind, length = attrs[i], attrs[i + 1]
        if kind == 80:
            attrs[i + 2] ^= 0xFF
        i += length
    header = raw[:4]
    response = hashlib.md5(header + request_authenticator + bytes(attrs) + SECRET).digest()  # noqa: S324
    return header + response + bytes(attrs)


def test_the_bad_replies_are_bad_the_way_they_say() -> None:
    """The upstream's forged replies (above) fail for the reason each test names, and no other: the
    Response Authenticator is right for "no-ma" and "bad-ma", the Message-Authenticator is missing from
    "no-ma" only, and an honest reply passes pyrad's own check."""
    dictionary = load_dictionary()
    check = upstream_check(1812)
    for user, (authenticator_right, has_ma) in {"alice": (True, True), "forger": (False, True),
                                                "no-ma": (True, False), "bad-ma": (True, True)}.items():
        request = check._request(user, UPSTREAM_USERS[user])
        received = pyrad.packet.AuthPacket(secret=SECRET, dict=dictionary, packet=request.RequestPacket())
        raw = answer(received, user, UPSTREAM_USERS[user])
        assert raw is not None
        expected = hashlib.md5(raw[:4] + request.authenticator + raw[20:] + SECRET).digest()  # noqa: S324
        assert (expected == raw[4:20]) is authenticator_right, user
        reply = pyrad.packet.Packet(packet=raw, dict=dictionary)
        assert (80 in dict.keys(reply)) is has_ma, user
        reply.secret = SECRET
        assert request.VerifyReply(reply, raw, enforce_ma=True) is (user == "alice"), user


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.initialize_transports(enable_auth=True, addresses=["127.0.0.1"])
    yield server
    await server.deinitialize_transports()


def upstream_check(port: int, **overrides: Any) -> UpstreamCheck:
    fields: dict[str, Any] = {"address": "127.0.0.1", "port": port, "secret_file": "unused", "timeout_s": 0.5,
                              "attempts": 2}
    fields.update(overrides)
    return UpstreamCheck(UpstreamSettings(**fields), SECRET)


async def test_upstream_accept_and_reject(upstream: Upstream) -> None:
    check = upstream_check(upstream.port)
    assert await check.check("alice", UPSTREAM_USERS["alice"]) == Verdict.OK
    assert await check.check("alice", "wrong") == Verdict.WRONG
    assert await check.check("nobody", "x") == Verdict.WRONG
    assert await check.check("long", UPSTREAM_USERS["long"]) == Verdict.OK  # several 16-octet blocks
    first = upstream.received[0]
    # The upstream got the password itself (hidden with its secret on the wire), a valid
    # Message-Authenticator (pyrad's server with enforce_ma drops requests without one) and our name.
    assert (first.user, first.password) == ("alice", UPSTREAM_USERS["alice"])
    assert first.message_authenticator_valid
    assert first.nas_identifier == "pushauth"
    assert UPSTREAM_USERS["alice"].encode() not in first.raw
    assert all(r.message_authenticator_valid for r in upstream.received)
    assert len(upstream.received) == 4  # one send each: no retransmits when the answer comes


async def test_upstream_challenge_is_wrong_and_said_so(upstream: Upstream) -> None:
    with structlog.testing.capture_logs() as logs:
        assert await upstream_check(upstream.port).check("challenge", "x") == Verdict.WRONG
    assert [e["log_level"] for e in logs if e["event"] == "radius_upstream_challenge"] == ["warning"]


async def test_no_password_in_logs_or_reprs(upstream: Upstream) -> None:
    check = upstream_check(upstream.port, timeout_s=0.5, attempts=1)
    with structlog.testing.capture_logs() as logs:
        for user in ("alice", "challenge", "silent", "forger"):
            await check.check(user, "the-Password-1")
        await check.check("alice", UPSTREAM_USERS["alice"])
    text = repr(logs) + repr(check)
    assert "the-Password-1" not in text
    assert UPSTREAM_USERS["alice"] not in text
    assert SECRET.decode() not in text
    assert {e["user"] for e in logs} >= {"alice", "challenge", "silent", "forger"}


async def test_empty_password_is_not_forwarded(upstream: Upstream) -> None:
    check = upstream_check(upstream.port)
    assert await check.check("alice", "") == Verdict.WRONG
    assert await check.check("", "x") == Verdict.WRONG
    assert await check.check("alice", "p" * 200) == Verdict.WRONG  # longer than PAP can carry
    await asyncio.sleep(0.1)
    assert upstream.received == []


async def test_silent_upstream_is_unavailable_after_the_attempts(upstream: Upstream) -> None:
    check = upstream_check(upstream.port, timeout_s=0.5, attempts=3)
    started = time.monotonic()
    assert await check.check("silent", "x") == Verdict.UNAVAILABLE
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 2.0, elapsed
    # Sent three times, byte for byte the same (same Identifier and Request Authenticator: RFC 5080).
    assert len(upstream.received) == 3
    assert len({r.raw for r in upstream.received}) == 1


@pytest.mark.parametrize("user", ["forger", "no-ma", "bad-ma"])
async def test_a_reply_the_upstream_did_not_sign_is_dropped(upstream: Upstream, user: str) -> None:
    """A reply with the wrong secret, without a Message-Authenticator, or with a bad one (its Response
    Authenticator right): none is an answer, even an Accept for the right password."""
    check = upstream_check(upstream.port, timeout_s=0.5, attempts=2)
    assert await check.check(user, UPSTREAM_USERS[user]) == Verdict.UNAVAILABLE
    assert len(upstream.received) == 2


async def test_no_upstream_is_unavailable() -> None:
    server = Upstream()
    await server.initialize_transports(enable_auth=True, addresses=["127.0.0.1"])
    port = server.port
    await server.deinitialize_transports()  # nothing listens there now
    started = time.monotonic()
    assert await upstream_check(port, timeout_s=0.5, attempts=2).check("alice", "x") == Verdict.UNAVAILABLE
    assert time.monotonic() - started < 1.5


async def test_concurrent_checks_each_get_their_own_answer(upstream: Upstream) -> None:
    check = upstream_check(upstream.port)
    tries = [("alice", UPSTREAM_USERS["alice"]), ("alice", "nope")] * 150
    verdicts = await asyncio.gather(*(check.check(u, p) for u, p in tries))
    assert verdicts == [Verdict.OK, Verdict.WRONG] * 150


# ---------------------------------------------------------------------------------------------------------
# open_checks and none
# ---------------------------------------------------------------------------------------------------------


async def test_none_is_always_ok() -> None:
    assert await NoCheck().check("anyone", "") == Verdict.OK


def _client(name: str, primary: str) -> RadiusClient:
    return RadiusClient(name=name, address="10.0.0.0/24", secret_file="/unused", application="vpn",
                        primary=primary)  # type: ignore[arg-type]


def test_open_checks_one_per_kind_used(tmp_path: Path) -> None:
    secret = tmp_path / "upstream.secret"
    secret.write_bytes(SECRET + b"\n")
    settings = RadiusSettings(
        clients=[_client("a", "ldap"), _client("b", "radius"), _client("c", "ldap")],
        ldap=LdapSettings(url="ldaps://ldap.example.org", user_dn="uid={user},dc=example,dc=org"),
        upstream=UpstreamSettings(address="127.0.0.1", secret_file=str(secret)))
    checks = open_checks(settings)
    assert sorted(checks) == ["ldap", "none", "radius"]
    assert {name: check.name for name, check in checks.items()} == {"ldap": "ldap", "none": "none",
                                                                    "radius": "radius"}
    assert SECRET.decode() not in repr(checks)
    assert sorted(open_checks(RadiusSettings(clients=[_client("a", "none")]))) == ["none"]


def test_open_checks_refuses_a_bad_secret_file(tmp_path: Path) -> None:
    short = tmp_path / "short.secret"
    short.write_bytes(b"tooshort\n")
    for path in (short, tmp_path / "missing.secret"):
        settings = RadiusSettings(clients=[_client("b", "radius")],
                                  upstream=UpstreamSettings(address="127.0.0.1", secret_file=str(path)))
        with pytest.raises(ConfigError, match="upstream"):
            open_checks(settings)


def test_open_checks_refuses_a_ca_file_that_does_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    settings = RadiusSettings(clients=[_client("a", "ldap")],
                              ldap=LdapSettings(url="ldaps://ldap.example.org", ca_file=str(bad),
                                                user_dn="uid={user},dc=example,dc=org"))
    with pytest.raises(ConfigError, match="ca_file"):
        open_checks(settings)
