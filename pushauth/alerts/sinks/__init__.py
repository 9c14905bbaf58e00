"""Alert sinks: where the security team's alerts go, one small module per destination behind `AlertSink`.

    webhook  Standard Webhooks (signed JSON POST), the wire contract's alert webhooks
    slack    Slack incoming webhook (Block Kit message)
    teams    Microsoft Teams Workflows webhook (Adaptive Card)
    syslog   RFC 5424 over UDP, TCP or TLS, for a SIEM
    email    SMTP (STARTTLS or TLS) through the site's relay

Slack and Teams differ only in their message's shape: both are a `_chat.ChatSink`, which does the rest.

`open_sinks` builds the configured ones (reading their secret files once); the alert worker calls
`deliver` and acts on the `SinkOutcome` (see base.py for what each outcome means).
"""

from pushauth.alerts.sinks.base import AlertSink, Notification, SinkOutcome, SinkOutcomeKind
from pushauth.alerts.sinks.registry import close_sinks, open_sinks

__all__ = ["AlertSink", "Notification", "SinkOutcome", "SinkOutcomeKind", "close_sinks", "open_sinks"]
