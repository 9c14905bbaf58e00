"""The directory password check: a simple bind as the user against LDAP (LDAPS or StartTLS), made before any
push prompt by the fronts that ask for a password first, the RADIUS front (`[radius.ldap]`, pushauth/radius/
primary.py) and the OpenID sign-in page (`[oidc.ldap]`). A wrong password never reaches the phone: password
spraying must never push-bomb anyone.

`LdapCheck.check` answers a `Verdict`: OK, WRONG (refused: the caller rejects quietly, as any wrong
password), or UNAVAILABLE (the check could not be made: directory down, a timeout, a TLS failure; the caller
rejects too, since failing open would make the password optional, and logs an error). An empty password is
WRONG without asking anyone. Nothing here logs a password or puts one in a repr.
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
from typing import Any

import ldap3
import msgspec
import structlog
from ldap3.core import exceptions as ldap_errors

from pushauth.errors import ConfigError

log = structlog.get_logger(__name__)

# RADIUS carries at most 253 octets of User-Name (RFC 2865 5.1) and 128 of password (5.2); a longer name
# cannot be anyone's, and is not worth a round trip.
MAX_USER_BYTES = 253

class Verdict(enum.StrEnum):
    OK = "ok"  # the password is right
    WRONG = "wrong"  # refused: wrong password, unknown user, empty password, an upstream Reject
    UNAVAILABLE = "unavailable"  # could not ask (down, timeout, TLS failure): rejected, logged as an error


class LdapSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # ldaps://host[:port] (TLS from the start) or ldap://host[:port] with start_tls = true. Plain LDAP
    # would put every password on the wire: refused unless allow_plaintext (a test directory on loopback).
    url: str = ""
    start_tls: bool = False
    allow_plaintext: bool = False
    # The CA that signed the directory's certificate (PEM); empty: the system's trust store.
    ca_file: str = ""
    # The DN to bind as, `{user}` replaced by the user name (escaped as RFC 4514 requires), e.g.
    # "uid={user},ou=people,dc=example,dc=org", or "{user}@example.org" for Active Directory's UPN bind.
    user_dn: str = ""
    # Connect + bind, all included.
    timeout_s: float = 5.0
    # Binds in flight at once (each runs in a worker thread).
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("ldaps://", "ldap://")):
            raise ValueError("ldap.url must start with ldaps:// or ldap://")
        if self.url.startswith("ldap://") and not (self.start_tls or self.allow_plaintext):
            raise ValueError("ldap.url is plain ldap://: set start_tls = true (or use ldaps://)")
        if self.url and "{user}" not in self.user_dn:
            raise ValueError("ldap.user_dn must contain {user}")
        if not 0.5 <= self.timeout_s <= 60:
            raise ValueError("ldap.timeout_s must be 0.5..60")
        if not 1 <= self.concurrency <= 256:
            raise ValueError("ldap.concurrency must be 1..256")


def unusable(user: str, password: str) -> bool:
    """A request no directory or upstream needs to see: no password (an LDAP simple bind with an empty
    password is an *unauthenticated* bind, RFC 4513 5.1.2, which servers accept: the classic bypass), no
    user, or a user longer than RADIUS can carry (no directory name is that long either)."""
    return not password or not user or len(user.encode("utf-8", "surrogatepass")) > MAX_USER_BYTES


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

    def __init__(self, settings: LdapSettings, section: str = "radius.ldap") -> None:
        # section: where these settings come from ("radius.ldap", "oidc.ldap"), for messages and logs
        self._section = section
        if not settings.url:
            raise ConfigError(f"{section}.url is not set")
        parts = urllib.parse.urlsplit(settings.url)
        if not parts.hostname:
            raise ConfigError(f"{section}.url has no host")
        self._host = parts.hostname
        self._ldaps = parts.scheme == "ldaps"
        try:
            self._port = parts.port or (636 if self._ldaps else 389)
        except ValueError:
            raise ConfigError(f"{section}.url has a bad port") from None
        self._start_tls = settings.start_tls and not self._ldaps
        self._user_dn = settings.user_dn
        self._timeout_s = settings.timeout_s
        self._tls: _VerifiedTls | None = None
        if self._ldaps or self._start_tls:
            try:
                context = ssl.create_default_context(cafile=settings.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{section}.ca_file: cannot load {settings.ca_file}: "
                                  f"{type(exc).__name__}") from None
            self._tls = _VerifiedTls(context, self._host)
        else:
            log.warning("ldap_plaintext", settings=section, url=settings.url,
                        reason="allow_plaintext: passwords cross the network in clear")
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.concurrency,
                                                           thread_name_prefix="ldap-bind")

    def bind_dn(self, user: str) -> str:
        return self._user_dn.replace("{user}", escape_dn_value(user))

    async def check(self, user: str, password: str) -> Verdict:
        if unusable(user, password):
            return Verdict.WRONG
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                verdict = await loop.run_in_executor(self._pool, self._bind, self.bind_dn(user), password,
                                                     started + self._timeout_s)
        except TimeoutError:
            log.error("ldap_unavailable", settings=self._section, user=user, reason="timeout",
                      timeout_s=self._timeout_s)
            return Verdict.UNAVAILABLE
        except RuntimeError:  # the pool was shut down (aclose): nothing asked
            return Verdict.UNAVAILABLE
        log.info("ldap_checked", settings=self._section, user=user, result=verdict.value,
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
            log.error("ldap_unavailable", settings=self._section, reason="bind_result", code=code,
                      description=str(conn.result.get("description", "")) if isinstance(conn.result, dict)
                      else "")
            return Verdict.UNAVAILABLE
        except _CONNECTION_ERRORS as exc:
            log.error("ldap_unavailable", settings=self._section, reason=type(exc).__name__,
                      detail=str(exc)[:300])
            return Verdict.UNAVAILABLE
        except Exception as exc:  # an ldap3 error whose text we do not log (see _CONNECTION_ERRORS)
            log.error("ldap_unavailable", settings=self._section, reason=type(exc).__name__)
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
