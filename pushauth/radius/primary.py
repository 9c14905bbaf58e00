"""The password check an Access-Request passes before any push prompt (issue 17).

A RADIUS client sends the user's name and password (PAP). The password is checked here first, and only a
right one goes on to the phone: password spraying against the VPN must never push-bomb anyone. Three
checks, one per `primary` kind a client can name in `[[radius.clients]]`:

- `LdapCheck` ("ldap"): a simple bind as the user against the directory, over LDAPS or StartTLS
  (pushauth/directory.py, which the OpenID sign-in page uses too).
- `UpstreamCheck` ("radius"): the name and password forwarded to an upstream RADIUS server (NPS,
  FreeRADIUS), which answers Accept or Reject.
- `NoCheck` ("none"): pushauth is the second factor only, behind something that checked the password.

Each answers a `Verdict`: OK, WRONG (refused: the caller rejects quietly, as any wrong password), or
UNAVAILABLE (the check could not be made: directory or upstream down, a timeout, a TLS failure; the caller
rejects too, since failing open would make the password optional, and logs an error). An empty password is
WRONG without asking anyone.

Nothing here logs a password or puts one in a repr; logs name the user and the result.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import pyrad.dictionary
import pyrad.packet
import structlog

from pushauth.directory import LdapCheck, Verdict, unusable
from pushauth.errors import ConfigError
from pushauth.radius.packets import load_dictionary
from pushauth.radius.settings import RadiusSettings, UpstreamSettings, read_secret

log = structlog.get_logger(__name__)

# What pushauth calls itself in the Access-Requests it sends upstream.
NAS_IDENTIFIER = "pushauth"


class PasswordCheck(Protocol):
    name: str  # "ldap" | "radius" | "none"

    async def check(self, user: str, password: str) -> Verdict: ...

    async def aclose(self) -> None: ...


class NoCheck:
    """`primary = "none"`: the password was checked by whoever sits in front (or there is none)."""

    name = "none"

    async def check(self, user: str, password: str) -> Verdict:
        return Verdict.OK

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NoCheck()"


# ---------------------------------------------------------------------------------------------------------
# Upstream RADIUS
# ---------------------------------------------------------------------------------------------------------


class _ReplyProtocol(asyncio.DatagramProtocol):
    """One connected UDP socket for one Access-Request: the kernel delivers only datagrams from the
    upstream's address and port, and each is checked against the request (Identifier, Response
    Authenticator, Message-Authenticator, Proxy-State) before it counts. The first valid reply wins;
    anything else is dropped and counted."""

    def __init__(self, request: pyrad.packet.AuthPacket) -> None:
        self.request = request
        self.reply: asyncio.Future[pyrad.packet.Packet] = asyncio.get_running_loop().create_future()
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.reply.done():
            return
        try:
            reply = pyrad.packet.Packet(packet=data, dict=self.request.dict)
            reply.secret = self.request.secret
            reply.request_authenticator = self.request.authenticator
            # enforce_ma: a reply to an Access-Request must carry a valid Message-Authenticator
            # (BlastRADIUS, CVE-2024-3596); the Response Authenticator alone is forgeable by MD5 collision.
            valid = (reply.code in (pyrad.packet.AccessAccept, pyrad.packet.AccessReject,
                                    pyrad.packet.AccessChallenge)
                     and self.request.VerifyReply(reply, data, enforce_ma=True))
        except Exception:  # a malformed datagram: not from the upstream we know
            valid = False
        if valid:
            self.reply.set_result(reply)
        else:
            self.dropped += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the upstream is not listening (yet). The request is sent
        # again at the next attempt; this is not an answer.
        pass


class UpstreamCheck:
    """`primary = "radius"`: an Access-Request to the upstream RADIUS server with User-Name, User-Password
    (PAP, hidden with the upstream's secret), NAS-Identifier and a Message-Authenticator; sent again,
    byte for byte (RFC 5080 2.2.1: a retransmission keeps its Identifier and authenticator), every
    `timeout_s` until `attempts` sends have gone unanswered.

    Each check has its own UDP socket instead of pyrad's ClientAsync: ClientAsync shares one socket and its
    256 Identifiers among all requests (the 257th in flight raises), runs a timer task per socket, and
    logs every reply it drops at warning level with the packet's bytes. Here the source port is new and
    random for each request (a forged reply must guess it as well as the authenticators), there are no
    Identifiers to run out of, and closing the socket is the whole clean-up. pyrad still does the RADIUS:
    encoding, password hiding, and verifying the reply."""

    name = "radius"

    def __init__(self, settings: UpstreamSettings, secret: bytes,
                 dictionary: pyrad.dictionary.Dictionary | None = None) -> None:
        if not settings.address:
            raise ConfigError("radius.upstream.address is not set")
        self._address = settings.address
        self._port = settings.port
        self._secret = secret
        self._timeout_s = settings.timeout_s
        self._attempts = settings.attempts
        self._dict = dictionary if dictionary is not None else load_dictionary()

    def _request(self, user: str, password: str) -> pyrad.packet.AuthPacket:
        request = pyrad.packet.AuthPacket(code=pyrad.packet.AccessRequest, secret=self._secret,
                                          dict=self._dict)
        request.add_message_authenticator()  # also creates the Identifier and the Request Authenticator
        request["User-Name"] = user
        request["User-Password"] = request.PwCrypt(password)
        request["NAS-Identifier"] = NAS_IDENTIFIER
        return request

    async def check(self, user: str, password: str) -> Verdict:
        if unusable(user, password):
            return Verdict.WRONG
        try:
            request = self._request(user, password)
            raw = request.RequestPacket()
        except (ValueError, TypeError):  # a password over 128 octets cannot be anyone's
            return Verdict.WRONG
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _ReplyProtocol(request), remote_addr=(self._address, self._port))
        except OSError as exc:
            log.error("radius_upstream_unavailable", user=user, reason=type(exc).__name__,
                      detail=str(exc)[:200])
            return Verdict.UNAVAILABLE
        try:
            for _ in range(self._attempts):
                transport.sendto(raw)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(protocol.reply), self._timeout_s)
                except TimeoutError:
                    continue
                return self._verdict(user, reply, started)
        finally:
            transport.close()
        log.error("radius_upstream_unavailable", user=user, reason="no_answer", attempts=self._attempts,
                  timeout_s=self._timeout_s, dropped=protocol.dropped)
        return Verdict.UNAVAILABLE

    def _verdict(self, user: str, reply: pyrad.packet.Packet, started: float) -> Verdict:
        ms = round((time.monotonic() - started) * 1000)
        if reply.code == pyrad.packet.AccessAccept:
            log.info("radius_upstream_checked", user=user, result="ok", ms=ms)
            return Verdict.OK
        if reply.code == pyrad.packet.AccessChallenge:
            # The upstream wants another factor of its own (an OTP, a second password): pushauth cannot
            # relay it to the user, and would not skip it. Refused, and said so: it is a configuration
            # problem, not a wrong password.
            log.warning("radius_upstream_challenge", user=user, result="wrong", ms=ms,
                        reason="the upstream answered Access-Challenge; only Accept or Reject is supported")
            return Verdict.WRONG
        log.info("radius_upstream_checked", user=user, result="wrong", ms=ms)
        return Verdict.WRONG

    async def aclose(self) -> None:
        return None  # nothing lives between checks

    def __repr__(self) -> str:
        # Never the secret.
        return f"UpstreamCheck({self._address}:{self._port}, attempts={self._attempts})"


# ---------------------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------------------


def open_checks(settings: RadiusSettings) -> dict[str, PasswordCheck]:
    """One check per primary kind the clients use, by kind; "none" is always there. Reads the upstream's
    secret file once. ConfigError for what cannot work (no URL, a CA file that does not load, a bad secret
    file)."""
    checks: dict[str, PasswordCheck] = {"none": NoCheck()}
    kinds = {client.primary for client in settings.clients}
    if "ldap" in kinds:
        checks["ldap"] = LdapCheck(settings.ldap)
    if "radius" in kinds:
        try:
            secret = read_secret(settings.upstream.secret_file, "radius.upstream.secret_file")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        checks["radius"] = UpstreamCheck(settings.upstream, secret)
    return checks
