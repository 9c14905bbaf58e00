"""RFC 5424 syslog for a SIEM, over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

One alert is one message:

    <82>1 2025-01-31T09:12:03.123456Z web01 pushauth - denied_not_me [pushauth@32473 id="al_1"
    event="alert.created" kind="denied_not_me" severity="critical" status="open" user="alice@nhs.net"
    ip="203.0.113.9" delivery="dl_1"] BOM{"type":"alert.created","timestamp":...,"data":{...}}

PRI is facility * 8 + the severity below; MSGID is the alert kind; the structured data carries the fields a
SIEM indexes and MSG the same JSON event as the webhook body (UTF-8, after a BOM as RFC 5424 asks). 32473 is
the private enterprise number RFC 5612 sets aside for documentation and examples; a site that wants its
own registers one with IANA.

TCP and TLS frame each message with RFC 6587 octet counting (`<length> <message>`) on one persistent
connection. Neither acknowledges anything, so DELIVERED means written and drained. A connection the
receiver has closed since the last delivery is replaced before writing, and a write that fails on a reused
connection is tried once more on a new one; a failure on a fresh connection is a RETRY. A UDP datagram
longer than `max_datagram_bytes` is cut at a UTF-8 boundary and marked `truncated="1"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any, Literal

import structlog

from pushauth.alerts.sinks.base import DELIVERED, Notification, SinkOutcome, retry
from pushauth.alerts.sinks.webhook import event_body

log = structlog.get_logger(__name__)

# RFC 5424 section 6.2.1 severities: 2 critical, 3 error, 4 warning, 5 notice, 6 informational.
SEVERITY_CODES = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SD_ID = "pushauth@32473"
APP_NAME = "pushauth"
BOM = b"\xef\xbb\xbf"
# An SD PARAM-VALUE is capped: the MSG carries every value in full.
_SD_VALUE_CHARS = 128
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_SD_ESCAPE = re.compile(r'(["\\\]])')
_TRUNCATED = ' truncated="1"'


def _header_field(value: object, limit: int) -> str:
    """A HOSTNAME, APP-NAME or MSGID: 1..limit printable ASCII characters, or the NILVALUE "-"."""
    text = _NOT_PRINTABLE.sub("_", str(value))[:limit]
    return text or "-"


def _sd_value(value: object) -> str:
    return _SD_ESCAPE.sub(r"\\\1", str(value)[:_SD_VALUE_CHARS])


def _timestamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(notification: Notification, *, facility: int, hostname: str, ts: float,
                   max_bytes: int | None = None) -> bytes:
    """One RFC 5424 message; with `max_bytes`, cut to fit and marked truncated."""
    alert = notification.alert
    severity = str(alert.get("severity", "info"))
    context = alert.get("context")
    params: list[tuple[str, object]] = [
        ("id", alert.get("id", "")), ("event", notification.type), ("kind", alert.get("kind", "")),
        ("severity", severity), ("status", alert.get("status", "")), ("user", alert.get("user", "")),
        ("challenge", alert.get("challenge_id")), ("device", alert.get("device_id")),
        ("ip", context.get("ip") if isinstance(context, Mapping) else None),
        ("delivery", notification.delivery_id),
    ]
    pri = facility * 8 + SEVERITY_CODES.get(severity, 6)
    head = (f"<{pri}>1 {_timestamp(ts)} {_header_field(hostname, 255)} {APP_NAME} - "
            f"{_header_field(alert.get('kind', ''), 32)} ")

    def header(truncated: bool) -> bytes:
        sd = " ".join(f'{name}="{_sd_value(value)}"' for name, value in params if value not in (None, ""))
        return (head + f"[{SD_ID} {sd}{_TRUNCATED if truncated else ''}]").encode()

    body = event_body(notification, int(ts))
    whole = header(False) + b" " + BOM + body
    if max_bytes is None or len(whole) <= max_bytes:
        return whole
    cut_header = header(True)
    budget = max_bytes - len(cut_header) - 1 - len(BOM)
    if budget <= 0:  # only with an absurd HOSTNAME: the structured data still goes
        return cut_header
    while budget > 0 and body[budget] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
        budget -= 1
    return cut_header + b" " + BOM + body[:budget]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, sink: str) -> None:
        self._sink = sink

    def error_received(self, exc: Exception) -> None:
        # An ICMP error about an earlier datagram (port unreachable): nothing to resend, worth a line.
        log.warning("alert_sink_udp_error", sink=self._sink, kind="syslog", error=type(exc).__name__)


class SyslogSink:
    kind = "syslog"

    def __init__(self, name: str, *, host: str, port: int, transport: Literal["udp", "tcp", "tls"],
                 timeout_s: float, facility: int = 10, hostname: str = "", max_datagram_bytes: int = 8192,
                 ca_file: str = "", server_name: str = "") -> None:
        self.name = name
        self._host, self._port, self._transport = host, port, transport
        self._timeout_s = timeout_s
        self._facility = facility
        self._hostname = hostname or socket.gethostname()
        self._max_datagram = max_datagram_bytes
        self._server_name = server_name or host
        self._ssl = ssl.create_default_context(cafile=ca_file or None) if transport == "tls" else None
        self._lock = asyncio.Lock()
        self._udp: asyncio.DatagramTransport | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    @property
    def _target(self) -> str:
        return f"{self._transport}://{self._host}:{self._port}"

    def __repr__(self) -> str:
        return f"SyslogSink({self.name!r}, {self._target})"

    async def deliver(self, notification: Notification) -> SinkOutcome:
        udp = self._transport == "udp"
        message = format_message(notification, facility=self._facility, hostname=self._hostname,
                                 ts=time.time(), max_bytes=self._max_datagram if udp else None)
        try:
            async with asyncio.timeout(self._timeout_s), self._lock:
                if udp:
                    await self._send_datagram(message)
                else:
                    await self._send_frame(b"%d " % len(message) + message)
        except TimeoutError as exc:
            return self._failed("timeout", exc)
        except ssl.SSLError as exc:  # before OSError, of which it is one
            return self._failed("tls", exc)
        except OSError as exc:
            return self._failed("connection", exc)
        log.debug("alert_sink_delivered", sink=self.name, kind=self.kind, bytes=len(message))
        return DELIVERED

    async def _send_datagram(self, message: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Udp(self.name), remote_addr=(self._host, self._port))
        self._udp.sendto(message)

    async def _send_frame(self, frame: bytes) -> None:
        # A receiver that closed the connection while it sat idle (a restart) has been seen to by now.
        if self._stream is not None and (self._stream[0].at_eof() or self._stream[1].is_closing()):
            self._drop()
        reused = self._stream is not None
        while True:
            if self._stream is None:
                self._stream = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl,
                    server_hostname=self._server_name if self._ssl else None)
            try:
                self._stream[1].write(frame)
                await self._stream[1].drain()
                return
            except OSError:
                self._drop()
                if not reused:
                    raise
                reused = False  # one more try, on a new connection

    def _failed(self, reason: str, exc: BaseException) -> SinkOutcome:
        # A frame may be half written: the connection cannot carry another one.
        self._drop()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        extra: dict[str, Any] = {}
        if isinstance(exc, ssl.SSLCertVerificationError):
            extra["tls_error"] = exc.verify_message
        log.warning("alert_sink_failed", sink=self.name, kind=self.kind, reason=reason, target=self._target,
                    error=type(exc).__name__, **extra)
        return retry(reason)

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._stream is not None:
            writer = self._stream[1]
            self._stream = None
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self._timeout_s)
