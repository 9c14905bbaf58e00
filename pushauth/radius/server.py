"""The RADIUS listener: pyrad's asyncio server, with what a push-approval front needs around it.

pyrad (2.6, `pyrad.server_async.ServerAsync`) owns the socket and the packet format: it drops packets from
unknown addresses (our `ClientTable` answers its lookups by network), decodes them, and drops an
Access-Request whose Message-Authenticator does not verify. This module adds, per request:

    Message-Authenticator  required by default (BlastRADIUS, CVE-2024-3596): an Access-Request without one
                           is dropped unless its client opted out (then a throttled warning says so);
                           every reply carries one (pyrad adds it), and Proxy-State is echoed
    retransmits            a client resends the same packet every few seconds while a person decides. Same
                           source address and port, Identifier and Request Authenticator = the same
                           request: while it is held the copies are dropped; once answered, they get the
                           cached reply for `reply_cache_s`. One sign-in, one push, one answer, on every
                           instance: a request is claimed in Redis before any work, and a copy reaching
                           another instance is dropped there, then answered with the reply the claimant
                           stored (pushauth/radius/retransmits.py). This process's own copies attach
                           in memory, without a Redis call. Redis down: dropped (fail closed)
    held requests          at most `max_held` at once (counted from the claim on); more are dropped (the
                           client resends) and counted
    drops                  every packet not answered is counted (`pushauth_radius_dropped_total{reason}`)
                           and logged at most once per reason a minute, with the count; pyrad's own drop
                           messages go through the same throttle (`_PyradLog`)

The sign-in itself is pushauth/radius/signin.py.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis.exceptions as rex
import structlog
from pyrad import packet as rp
from pyrad.server import RemoteHost
from pyrad.server_async import ServerAsync

from pushauth import metrics
from pushauth.errors import StoreUnavailable
from pushauth.radius.packets import load_dictionary
from pushauth.radius.retransmits import Answered, Key, Ours, ReplyUnreadable, Retransmits
from pushauth.radius.settings import RadiusClient, RadiusSettings
from pushauth.radius.signin import Answer, Code, Request, SignIns
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger(__name__)

PYRAD_LOGGER = "pushauth.radius.pyrad"
# A Reply-Message is one attribute: at most 253 octets.
MAX_REPLY_MESSAGE = 253
_LOG_EVERY_S = 60.0
# What a failed claim can raise: Redis is not there (or answered an error); nothing was done, so the packet
# is dropped and the client resends.
_CLAIM_FAILED: tuple[type[Exception], ...] = (StoreUnavailable, rex.RedisError, *STORE_DOWN_ERRORS)


class ClientTable(Mapping[str, Any]):
    """The configured clients as pyrad's `hosts`: looked up by source address, matched by network (the most
    specific first), where pyrad itself only knows exact addresses."""

    def __init__(self, clients: list[tuple[RadiusClient, bytes]]) -> None:
        ordered = sorted(clients, key=lambda c: -c[0].network.prefixlen)
        self._rows = [(c.network, c, RemoteHost(str(c.network.network_address), secret, c.name))
                      for c, secret in ordered]

    def client_for(self, address: str) -> tuple[RadiusClient, Any] | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, client, host in self._rows:
            if ip.version == network.version and ip in network:
                return client, host
        return None

    def __getitem__(self, address: str) -> Any:
        found = self.client_for(address)
        if found is None:
            raise KeyError(address)
        return found[1]

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.client_for(address) is not None

    def __iter__(self) -> Iterator[str]:
        return (str(network) for network, _, _ in self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def secrets(self) -> dict[str, bytes]:
        """Each client's shared secret, by name (what its cached replies are sealed under)."""
        return {client.name: host.secret for _, client, host in self._rows}

    def __repr__(self) -> str:  # never the secrets
        return f"ClientTable({[c.name for _, c, _ in self._rows]})"


class DropLog:
    """Counts every dropped packet and logs at most one line per reason a minute, with the count since."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}

    def drop(self, reason: str, **facts: Any) -> None:
        metrics.RADIUS_DROPPED.labels(reason).inc()
        now = time.monotonic()
        last, count = self._seen.get(reason, (-_LOG_EVERY_S, 0))
        count += 1
        if now - last >= _LOG_EVERY_S:
            log.warning("radius_packet_dropped", reason=reason, count=count, **facts)
            last, count = now, 0
        self._seen[reason] = (last, count)


class _PyradLog(logging.Filter):
    """pyrad logs its own drops (unknown source, undecodable packet, bad Message-Authenticator) through
    stdlib logging, one line each: a flood of junk would flood the log. Count them like ours and let one
    line per reason a minute through, as a structured event."""

    _REASONS = (("unknown source", "unknown_client"), ("Message-Authenticator", "bad_message_authenticator"),
                ("decode", "malformed"), ("non-auth packet", "not_access_request"),
                ("Invalid response packet", "not_access_request"))

    def __init__(self, drops: DropLog) -> None:
        super().__init__()
        self._drops = drops

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        text = record.getMessage()
        reason = next((r for needle, r in self._REASONS if needle in text), "rejected_by_pyrad")
        self._drops.drop(reason, detail=text[:200])
        return False


def _text(pkt: Any, name: str) -> str:
    values = pkt.get(name) or []
    return str(values[0]) if values else ""


def decode(pkt: Any) -> Request:
    """The sign-in's view of an Access-Request. Raises ValueError (pyrad's PacketError, a bad UTF-8 string,
    a missing User-Name) for a packet to drop as malformed."""
    users = pkt.get("User-Name") or []
    if len(users) != 1 or not isinstance(users[0], str) or not users[0]:
        raise ValueError("exactly one User-Name is required")
    passwords = pkt.get("User-Password") or []
    password = None
    if len(passwords) == 1:
        password = pkt.PwDecrypt(passwords[0])
    elif passwords:
        raise ValueError("more than one User-Password")
    states = pkt.get("State") or []
    return Request(user=users[0], password=password, state=bytes(states[0]) if states else None,
                   calling_station=_text(pkt, "Calling-Station-Id"),
                   nas_identifier=_text(pkt, "NAS-Identifier"))


def _truncate(message: str) -> str:
    raw = message.encode()
    if len(raw) <= MAX_REPLY_MESSAGE:
        return message
    return raw[:MAX_REPLY_MESSAGE].decode(errors="ignore")


_CODES = {Code.ACCEPT: rp.AccessAccept, Code.REJECT: rp.AccessReject, Code.CHALLENGE: rp.AccessChallenge}


class RadiusServer(ServerAsync):  # type: ignore[misc]  # pyrad is untyped
    """One listener. `run(stop)` serves until `stop` is set, then stops taking requests and answers the ones
    it holds (the worker runner bounds how long: --drain-s)."""

    def __init__(self, settings: RadiusSettings, table: ClientTable, signins: SignIns,
                 retransmits: Retransmits) -> None:
        super().__init__(auth_port=settings.port, hosts=table, dictionary=load_dictionary(),
                         logger_name=PYRAD_LOGGER, enable_pkt_verify=True, enforce_ma=False)
        self._settings = settings
        self._table = table
        self._signins = signins
        self._retransmits = retransmits
        self._drops = DropLog()
        self._held: dict[Key, asyncio.Task[None]] = {}
        self._replies: collections.OrderedDict[Key, tuple[float, bytes]] = collections.OrderedDict()
        self._no_ma_warned: dict[str, float] = {}
        self._stopping = False
        self._pyrad_log = _PyradLog(self._drops)

    def __repr__(self) -> str:
        return f"RadiusServer(port={self._settings.port}, clients={self._table!r})"

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self, stop: asyncio.Event) -> None:
        pyrad_log = logging.getLogger(PYRAD_LOGGER)
        pyrad_log.addFilter(self._pyrad_log)
        pyrad_log.propagate = False
        await self.initialize_transports(enable_auth=True, addresses=list(self._settings.listen))
        try:
            await stop.wait()
            self._stopping = True
            if self._held:
                await asyncio.wait(set(self._held.values()))
        finally:
            for task in list(self._held.values()):
                task.cancel()
            await self.deinitialize_transports()
            pyrad_log.removeFilter(self._pyrad_log)

    # -- pyrad's callbacks ---------------------------------------------------------------------------

    def handle_auth_packet(self, protocol: Any, pkt: Any, addr: tuple[str, int]) -> None:
        found = self._table.client_for(addr[0])
        if found is None:  # pyrad checked already; a table that changed under it
            self._drops.drop("unknown_client", source=addr[0])
            return
        client = found[0]
        if pkt.message_authenticator is None:  # (pyrad already dropped one that does not verify)
            if client.require_message_authenticator:
                self._drops.drop("no_message_authenticator", client=client.name, source=addr[0])
                return
            self._warn_no_message_authenticator(client)
        key: Key = (addr[0], addr[1], pkt.id, bytes(pkt.authenticator))
        now = time.monotonic()
        self._forget_old_replies(now)
        cached = self._replies.get(key)
        if cached is not None:
            metrics.RADIUS_RETRANSMITS.labels("answered").inc()
            self._send(protocol, cached[1], addr)
            return
        if key in self._held:
            metrics.RADIUS_RETRANSMITS.labels("held").inc()
            return
        if self._stopping:
            self._drops.drop("stopping", client=client.name)
            return
        if len(self._held) >= self._settings.max_held:
            self._drops.drop("too_many_held", client=client.name, held=len(self._held))
            return
        try:
            request = decode(pkt)
        except (ValueError, rp.PacketError, UnicodeDecodeError, KeyError) as exc:
            self._drops.drop("malformed", client=client.name, error=type(exc).__name__)
            return
        task = asyncio.get_running_loop().create_task(self._serve(protocol, client, pkt, request, addr, key))
        self._held[key] = task
        metrics.RADIUS_HELD.set(len(self._held))

    def handle_acct_packet(self, protocol: Any, pkt: Any, addr: tuple[str, int]) -> None:
        """Accounting is not served (no socket is opened for it)."""

    def handle_coa_packet(self, protocol: Any, pkt: Any, addr: tuple[str, int]) -> None:
        """CoA is not served (no socket is opened for it)."""

    def handle_disconnect_packet(self, protocol: Any, pkt: Any, addr: tuple[str, int]) -> None:
        """Disconnect is not served (no socket is opened for it)."""

    # -- one request ---------------------------------------------------------------------------------

    async def _serve(self, protocol: Any, client: RadiusClient, pkt: Any, request: Request,
                     addr: tuple[str, int], key: Key) -> None:
        """One request, held (in `_held`, toward max_held) from its claim to its answer."""
        try:
            if await self._claimed(protocol, client, addr, key):
                await self._answer(protocol, client, pkt, request, addr, key)
        finally:
            self._held.pop(key, None)
            metrics.RADIUS_HELD.set(len(self._held))

    async def _claimed(self, protocol: Any, client: RadiusClient, addr: tuple[str, int], key: Key) -> bool:
        """Whether this process answers the request: it claimed it in Redis. Otherwise the copy is dropped
        (another instance holds it, or Redis is down) or answered with the reply another instance stored."""
        try:
            claim = await self._retransmits.claim(client.name, key,
                                                  client.deadline_s + self._settings.reply_cache_s)
        except _CLAIM_FAILED as exc:
            self._drops.drop("store_unavailable", client=client.name, error=type(exc).__name__)
            return False
        except ReplyUnreadable:
            self._drops.drop("unreadable_reply", client=client.name)
            return False
        if isinstance(claim, Ours):
            return True
        if isinstance(claim, Answered):
            metrics.RADIUS_RETRANSMITS.labels("answered_elsewhere").inc()
            self._remember(key, claim.reply)
            self._send(protocol, claim.reply, addr)
        else:
            metrics.RADIUS_RETRANSMITS.labels("held_elsewhere").inc()
        return False

    async def _answer(self, protocol: Any, client: RadiusClient, pkt: Any, request: Request,
                      addr: tuple[str, int], key: Key) -> None:
        started = time.monotonic()
        try:
            answer = await self._signins.answer(client, request)
        except Exception:  # a bug must cost one sign-in (a Reject), not the listener
            log.exception("radius_request_failed", client=client.name)
            answer = Answer(Code.REJECT, "The sign-in failed. Try again.", outcome="internal_error")
        raw = self._reply(pkt, answer)
        self._remember(key, raw)
        self._send(protocol, raw, addr)
        metrics.RADIUS_REQUESTS.labels(client.name, answer.code.value).inc()
        log.info("radius_answered", client=client.name, user=request.user, answer=answer.code.value,
                 outcome=answer.outcome, follow_up=request.state is not None,
                 ms=round((time.monotonic() - started) * 1000))
        await self._keep(client, key, raw)

    async def _keep(self, client: RadiusClient, key: Key, raw: bytes) -> None:
        """The reply for copies that reach other instances (after it is sent: the client waits for nothing).
        Not kept (Redis down, or the claim outlived its hold): copies reaching other instances are
        dropped until the claim expires."""
        try:
            kept = await self._retransmits.answered(client.name, key, raw)
        except _CLAIM_FAILED as exc:
            log.warning("radius_reply_not_kept", client=client.name, error=type(exc).__name__)
            return
        if not kept:
            log.warning("radius_reply_not_kept", client=client.name, error="claim_expired")

    def _remember(self, key: Key, raw: bytes) -> None:
        self._replies[key] = (time.monotonic() + self._settings.reply_cache_s, raw)

    def _reply(self, pkt: Any, answer: Answer) -> bytes:
        # CreateReply copies the Identifier, Request Authenticator and Proxy-State and marks the reply for a
        # Message-Authenticator; ReplyPacket computes both authenticators.
        reply = pkt.CreateReply()
        reply.code = _CODES[answer.code]
        if answer.message:
            reply["Reply-Message"] = _truncate(answer.message)
        if answer.state is not None:
            reply["State"] = answer.state
        return bytes(reply.ReplyPacket())

    def _send(self, protocol: Any, raw: bytes, addr: tuple[str, int]) -> None:
        transport = getattr(protocol, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.sendto(raw, addr)

    def _forget_old_replies(self, now: float) -> None:
        replies = self._replies
        while replies:
            key, (expires, _) = next(iter(replies.items()))
            if expires > now:
                break
            del replies[key]

    def _warn_no_message_authenticator(self, client: RadiusClient) -> None:
        metrics.RADIUS_NO_MESSAGE_AUTHENTICATOR.labels(client.name).inc()
        now = time.monotonic()
        if now - self._no_ma_warned.get(client.name, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._no_ma_warned[client.name] = now
            log.warning("radius_no_message_authenticator", client=client.name,
                        risk="BlastRADIUS (CVE-2024-3596): this client's requests can be forged by anyone "
                             "on the path; upgrade it to send Message-Authenticator",
                        setting="require_message_authenticator = false")
