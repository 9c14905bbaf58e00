"""E-mail through an SMTP relay (aiosmtplib): a plain-text message with the facts Slack shows.

    From: pushauth <alerts@trust.nhs.uk>          (mail_from)
    To: soc@trust.nhs.uk                           (mail_to)
    Subject: [pushauth] CRITICAL: denied_not_me for alice@nhs.net
    Message-ID: <dl_1@trust.nhs.uk>                (from the delivery id: a retry is the same message)
    Auto-Submitted: auto-generated                 (RFC 3834: no auto-replies, no vacation notices)
    X-Auto-Response-Suppress: All                  (the same, for Exchange)

One connection per delivery: alerts are rare, and a relay drops idle connections anyway. `starttls` never
falls back to plain text when the relay does not offer STARTTLS; `none` is only for a relay on this
machine (enforced by the settings). Any SMTP error reply, timeout or connection failure is a RETRY whose
reason carries the SMTP code ("smtp_451"). A message some recipients took and others refused is DELIVERED
(sending it again would duplicate it for those who have it); the refusals are logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Literal

import aiosmtplib
import structlog

from pushauth.alerts.sinks._facts import Facts, facts
from pushauth.alerts.sinks.base import DELIVERED, Notification, SinkOutcome, retry

log = structlog.get_logger(__name__)

_MESSAGE_ID_LEFT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def message_id(delivery_id: str, mail_from: str) -> str:
    left = delivery_id if _MESSAGE_ID_LEFT.fullmatch(delivery_id) else hashlib.sha256(
        delivery_id.encode()).hexdigest()[:40]
    return f"<{left}@{mail_from.rpartition('@')[2]}>"


def subject(f: Facts, notification_type: str) -> str:
    update = " (update)" if notification_type == "alert.updated" else ""
    return f"[pushauth] {f.severity}: {f.kind} for {f.user}{update}"


def text_body(f: Facts) -> str:
    width = max(len(label) for label, _ in f.rows) + 2
    lines = [f"{f.severity}: {f.title}", ""]
    lines += [f"{label + ':':<{width}}{value}" for label, value in f.rows]
    if f.link:
        lines += ["", f"Open in the console: {f.link}"]
    lines += ["", "-- ", "Sent by pushauth to the security team. Replies are not read."]
    return "\n".join(lines) + "\n"


class EmailSink:
    kind = "email"

    def __init__(self, name: str, *, smtp_host: str, smtp_port: int,
                 security: Literal["starttls", "tls", "none"], mail_from: str, mail_to: Sequence[str],
                 timeout_s: float, username: str = "", password: str = "", ca_file: str = "",
                 console_url: str = "") -> None:
        self.name = name
        self._host, self._port, self._security = smtp_host, smtp_port, security
        self._from, self._to = mail_from, list(mail_to)
        self._timeout_s = timeout_s
        self._username, self._password = username, password
        self._ssl = ssl.create_default_context(cafile=ca_file or None) if security != "none" else None
        self._console_url = console_url

    def __repr__(self) -> str:
        return f"EmailSink({self.name!r}, smtp://{self._host}:{self._port}, {self._security})"

    def build(self, notification: Notification) -> EmailMessage:
        f = facts(notification.type, notification.alert, self._console_url)
        msg = EmailMessage()
        msg["From"] = email.utils.formataddr(("pushauth", self._from))
        msg["To"] = ", ".join(self._to)
        msg["Subject"] = subject(f, notification.type)
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = message_id(notification.delivery_id, self._from)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Auto-Response-Suppress"] = "All"
        msg.set_content(text_body(f))
        return msg

    async def deliver(self, notification: Notification) -> SinkOutcome:
        msg = self.build(notification)
        # aiosmtplib's timeout bounds each step; the deadline bounds the whole delivery.
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        client = aiosmtplib.SMTP(
            hostname=self._host, port=self._port, timeout=self._timeout_s,
            use_tls=self._security == "tls", start_tls=self._security == "starttls",
            tls_context=self._ssl, username=self._username or None, password=self._password or None)
        try:
            async with asyncio.timeout_at(deadline):
                await client.connect()  # and STARTTLS, and AUTH when there is a username
                refused, _ = await client.send_message(msg, sender=self._from, recipients=self._to)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            client.close()
            return self._failed(f"smtp_{exc.recipients[0].code}" if exc.recipients else "smtp_error", exc)
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            return self._failed(f"smtp_{exc.code}", exc)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return self._failed(_reason(exc), exc)
        # Accepted: a QUIT that goes wrong changes nothing.
        try:
            async with asyncio.timeout(min(1.0, self._timeout_s)):
                await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            pass
        finally:
            client.close()
        if refused:
            log.warning("alert_sink_recipients_refused", sink=self.name, kind=self.kind,
                        refused={rcpt: resp.code for rcpt, resp in refused.items()})
        log.debug("alert_sink_delivered", sink=self.name, kind=self.kind, recipients=len(self._to))
        return DELIVERED

    def _failed(self, reason: str, exc: BaseException) -> SinkOutcome:
        # Type and code only: an SMTP reply can quote what the client sent.
        log.warning("alert_sink_failed", sink=self.name, kind=self.kind, reason=reason,
                    target=f"smtp://{self._host}:{self._port}", error=type(exc).__name__)
        return retry(reason)

    async def aclose(self) -> None:
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError | OSError):  # aiosmtplib's connect/disconnect errors included
        return "connection"
    # starttls() raises a bare SMTPException when the relay offers no STARTTLS: say so.
    return "smtp_no_starttls" if "STARTTLS" in str(exc) else "smtp_error"
