"""The password check an Access-Request passes before any push prompt (issue 17).

A RADIUS client sends the user's name and password (PAP). The password is checked here first, and only a
right one goes on to the phone: password spraying against the VPN must never push-bomb anyone. Three
checks, one per `primary` kind a client can name in `[[radius.clients]]`:

- `LdapCheck` ("ldap"): a simple bind as the user against the directory, over LDAPS or StartTLS.
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
import concurrent.futures
import contextlib
import enum
import math
import ssl
import time
import urllib.parse
from typing import Any, Protocol

import ldap3
import pyrad.dictionary
import pyrad.packet
import structlog
from ldap3.core import exceptions as ldap_errors

from pushauth.errors import ConfigError
from pushauth.radius.packets import load_dictionary
from pushauth.radius.settings import LdapSettings, RadiusSettings, UpstreamSettings, read_secret

log = structlog.get_logger(__name__)

# RADIUS carries at most 253 octets of User-Name (RFC 2865 5.1) and 128 of password (5.2); a longer name
# cannot be anyone's, and is not worth a round trip.
MAX_USER_BYTES = 253
# What pushauth calls itself in the Access-Requests it sends upstream.
NAS_IDENTIFIER = "pushauth"


class Verdict(enum.StrEnum):
    OK = "ok"  # the password is right
    WRONG = "wrong"  # refused: wrong password, unknown user, empty password, an upstream Reject
    UNAVAILABLE = "unavailable"  # could not ask (down, timeout, TLS failure): rejected, logged as an error


class PasswordCheck(Protocol):
    name: str  # "ldap" | "radius" | "none"

    async def check(self, user: str, password: str) -> Verdict: ...

    async def aclose(self) -> None: ...


def _unusable(user: str, password: str) -> bool:
    """A request no directory or upstream needs to see: no password (an LDAP simple bind with an empty
    password is an *unauthenticated* bind, RFC 4513 5.1.2, which servers accept: the classic bypass), no
    user, or a user longer than RADIUS can carry."""
    return not password or not user or len(user.encode("utf-8", "surrogatepass")) > MAX_USER_BYTES


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
# LDAP: a simple bind as the user
# ---------------------------------------------------------------------------------------------------------

# RFC 4514 2.4: the characters escaped with a backslash anywhere in an attribute value. "=" need not be, but
# may, and some servers parse it badly unescaped.
_DN_SPECIALS = frozenset('"+,;<>\\=')


def escape_dn_value(value: str) -> str:
    """`value` as an RFC 4514 attribute value: whatever the user typed stays inside the one RDN value
    (`x,ou=admins` cannot add an RDN, `*)(uid=*` is a filter's syntax, not a DN's, and stays literal).
    Control characters (NUL included) become hex pairs; a leading "#" or space and a trailing space are
    escaped. ldap3's escape_rdn escapes NUL as a backslash and a NUL, which RFC 4514 does not allow."""
    out = []
    for i, char in enumerate(value):
        if char in _DN_SPECIALS or (char in "# " and i == 0) or (char == " " and i == len(value) - 1):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 is untyped
    """ldap3's Tls, wrapping with our own SSL context. ldap3 turns the context's hostname check off and
    does its own with ssl.match_hostname (gone in Python 3.12; its fallback is a backport); here OpenSSL
    checks the certificate's names during the handshake, as for any HTTPS client. Used for LDAPS and
    StartTLS alike (ldap3 calls wrap_socket for both)."""

    def __init__(self, context: ssl.SSLContext, hostname: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._hostname = hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(connection.socket, server_side=False,
                                                      do_handshake_on_connect=do_handshake,
                                                      server_hostname=self._hostname)


# Result codes of a refused bind that are about the user or the password, not the directory: WRONG.
# 49 invalidCredentials (wrong password, unknown DN, and Active Directory's locked/expired accounts),
# 32 noSuchObject, 34 invalidDNSyntax (a name that makes no DN), 48 inappropriateAuthentication,
# 50 insufficientAccessRights, 53 unwillingToPerform (a disabled account, on some servers). Any other
# code (busy, unavailable, confidentialityRequired, ...) is the directory's problem: UNAVAILABLE.
_REFUSED = frozenset({49, 32, 34, 48, 50, 53})
# Errors whose text is about the connection (refused, timed out, certificate): logged. Any other error is
# logged by its class alone, in case its text quotes a request.
_CONNECTION_ERRORS = (OSError, ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPStartTLSError,
                      ldap_errors.LDAPSocketReceiveError, ldap_errors.LDAPSocketSendError)


# Less time than this left before its deadline, a bind is not started (see LdapCheck._bind).
_MIN_BIND_S = 0.05


class LdapCheck:
    """`primary = "ldap"`: bind as the user (`user_dn` with `{user}` in it); the directory checks the
    password and its own lockout policy. ldap3 is synchronous, so each bind runs in a thread of a pool of
    its own, `concurrency` threads: that pool is the cap on binds in flight, and the loop's default
    executor (min(32, cpus + 4) threads, shared with everything else) is left alone. A bind waits for a
    thread within its deadline; one whose deadline passes while it waits is never made."""

    name = "ldap"

    def __init__(self, settings: LdapSettings) -> None:
        if not settings.url:
            raise ConfigError("radius.ldap.url is not set")
        parts = urllib.parse.urlsplit(settings.url)
        if not parts.hostname:
            raise ConfigError("radius.ldap.url has no host")
        self._host = parts.hostname
        self._ldaps = parts.scheme == "ldaps"
        try:
            self._port = parts.port or (636 if self._ldaps else 389)
        except ValueError:
            raise ConfigError("radius.ldap.url has a bad port") from None
        self._start_tls = settings.start_tls and not self._ldaps
        self._user_dn = settings.user_dn
        self._timeout_s = settings.timeout_s
        self._tls: _VerifiedTls | None = None
        if self._ldaps or self._start_tls:
            try:
                context = ssl.create_default_context(cafile=settings.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"radius.ldap.ca_file: cannot load {settings.ca_file}: "
                                  f"{type(exc).__name__}") from None
            self._tls = _VerifiedTls(context, self._host)
        else:
            log.warning("radius_ldap_plaintext", url=settings.url,
                        reason="allow_plaintext: passwords cross the network in clear")
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.concurrency,
                                                           thread_name_prefix="ldap-bind")

    def bind_dn(self, user: str) -> str:
        return self._user_dn.replace("{user}", escape_dn_value(user))

    async def check(self, user: str, password: str) -> Verdict:
        if _unusable(user, password):
            return Verdict.WRONG
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                verdict = await loop.run_in_executor(self._pool, self._bind, self.bind_dn(user), password,
                                                     started + self._timeout_s)
        except TimeoutError:
            log.error("radius_ldap_unavailable", user=user, reason="timeout", timeout_s=self._timeout_s)
            return Verdict.UNAVAILABLE
        except RuntimeError:  # the pool was shut down (aclose): nothing asked
            return Verdict.UNAVAILABLE
        log.info("radius_ldap_checked", user=user, result=verdict.value,
                 ms=round((time.monotonic() - started) * 1000))
        return verdict

    def _bind(self, dn: str, password: str, deadline: float) -> Verdict:
        """One connection, one bind, in a worker thread, by `deadline` (time.monotonic()). Every socket
        operation is bounded (connect by connect_timeout, the TLS handshake and each read by
        receive_timeout), so the thread ends soon after the asyncio deadline even when the directory hangs.
        A bind that waited for a thread until its deadline (nearly) passed is not made: the caller has
        given up on it, and a directory that is slow already gets no extra load from it."""
        left = deadline - time.monotonic()
        if left < _MIN_BIND_S:
            return Verdict.UNAVAILABLE
        server = ldap3.Server(self._host, port=self._port, use_ssl=self._ldaps, tls=self._tls,
                              get_info=ldap3.NONE, connect_timeout=left)
        # ldap3 packs receive_timeout into SO_RCVTIMEO as an integer: a float raises.
        conn = ldap3.Connection(server, user=dn, password=password, authentication=ldap3.SIMPLE,
                                auto_bind=ldap3.AUTO_BIND_NONE, auto_referrals=False, read_only=True,
                                receive_timeout=max(1, math.ceil(left)))
        try:
            conn.open()
            if self._start_tls:
                conn.start_tls()
            if conn.bind():
                return Verdict.OK
            code = conn.result.get("result") if isinstance(conn.result, dict) else None
            if code in _REFUSED:
                return Verdict.WRONG
            log.error("radius_ldap_unavailable", reason="bind_result", code=code,
                      description=str(conn.result.get("description", "")) if isinstance(conn.result, dict)
                      else "")
            return Verdict.UNAVAILABLE
        except _CONNECTION_ERRORS as exc:
            log.error("radius_ldap_unavailable", reason=type(exc).__name__, detail=str(exc)[:300])
            return Verdict.UNAVAILABLE
        except Exception as exc:  # an ldap3 error whose text we do not log (see _CONNECTION_ERRORS)
            log.error("radius_ldap_unavailable", reason=type(exc).__name__)
            return Verdict.UNAVAILABLE
        finally:
            with contextlib.suppress(Exception):  # closing a connection that may never have opened
                conn.unbind()
            # ldap3 leaves the socket open when the connect or the TLS handshake fails (refused, a
            # certificate we do not trust): close it here, not whenever the garbage collector runs.
            sock = getattr(conn, "socket", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    async def aclose(self) -> None:
        # Binds in flight end by their own socket timeouts; queued ones are dropped.
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        scheme = "ldaps" if self._ldaps else "ldap+starttls" if self._start_tls else "ldap"
        return f"LdapCheck({scheme}://{self._host}:{self._port})"


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
        if _unusable(user, password):
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
