"""Slack incoming webhook: one message a person takes in at a glance.

    {"text": "CRITICAL: User reported a sign-in they did not request: alice@nhs.net (alert al_1)",
     "blocks": [header "🚨 CRITICAL: User reported a sign-in ...",
                section fields "*User*\nalice@nhs.net", "*Time*\n...", "*Sign-in IP*\n...", ...,
                context "<console link|Open alert al_1 in the pushauth console> · denied_not_me"]}

`text` is the notification and screen-reader fallback; the blocks are what is shown. Values are escaped the
way Slack asks (& < >), so a user agent such as "<!channel>" or "<https://evil|Reset>" stays plain text.
The console link is a mrkdwn link rather than a button: a button on an incoming webhook, with no app to
answer its click, shows the reader a warning.

Slack answers 200 "ok"; 404 "no_service" (webhook removed), 403, 400 "invalid_blocks" are retried and
logged with Slack's word; 410 "channel_is_archived" disables the sink.
"""

from __future__ import annotations

from typing import Any

from pushauth.alerts.sinks._chat import ChatSink
from pushauth.alerts.sinks._facts import Facts, clean

_EMOJI = {"CRITICAL": ":rotating_light:", "HIGH": ":red_circle:", "MEDIUM": ":large_orange_circle:",
          "LOW": ":large_yellow_circle:", "INFO": ":information_source:"}
# Slack allows 10 fields per section, 150 characters in a header, 2,000 in a field.
_FIELDS_PER_SECTION = 10
_HEADER_CHARS = 150


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(f: Facts) -> dict[str, Any]:
    headline = f"{f.severity}: {f.title}"
    blocks: list[dict[str, Any]] = [{
        "type": "header",
        "text": {"type": "plain_text", "emoji": True,
                 "text": clean(f"{_EMOJI.get(f.severity, '')} {headline}", _HEADER_CHARS)},
    }]
    fields = [{"type": "mrkdwn", "text": f"*{label}*\n{_escape(value)}"} for label, value in f.rows]
    blocks += [{"type": "section", "fields": fields[i:i + _FIELDS_PER_SECTION]}
               for i in range(0, len(fields), _FIELDS_PER_SECTION)]
    footer = [f"<{f.link}|Open alert {_escape(f.alert_id)} in the pushauth console>"] if f.link else []
    blocks.append({"type": "context",
                   "elements": [{"type": "mrkdwn", "text": " · ".join([*footer, f"`{_escape(f.kind)}`"])}]})
    return {"text": _escape(f"{headline}: {f.user} (alert {f.alert_id})"), "blocks": blocks}


class SlackSink(ChatSink):
    kind = "slack"

    def format(self, alert: Facts) -> dict[str, Any]:
        return message(alert)
