"""Microsoft Teams through a Workflows (Power Automate) webhook: an Adaptive Card with the Slack facts.

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
                      "content": {"type": "AdaptiveCard", "version": "1.4", "body": [TextBlock, FactSet],
                                  "actions": [Action.OpenUrl "Open in console"]}}]}

This is the shape the "Post to a channel when a webhook request is received" workflow takes. The older
Office 365 connector webhooks and their MessageCard format are being retired by Microsoft, so they are not
supported; an operator creates a Workflows webhook instead. The workflow answers 202 Accepted.

TextBlock and FactSet values render a subset of Markdown, links included. A value chosen by the person
signing in (a user agent such as "[Reset your password](https://evil)") must not turn into a link in the
security team's channel, so "](" is broken up; any bare URL stays visibly the URL it is.
"""

from __future__ import annotations

from typing import Any

from pushauth.alerts.sinks._chat import ChatSink
from pushauth.alerts.sinks._facts import Facts

_COLOR = {"CRITICAL": "Attention", "HIGH": "Attention", "MEDIUM": "Warning"}


def _plain(text: str) -> str:
    return text.replace("](", "] (")


def card(f: Facts) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": _plain(f"{f.severity}: {f.title}"), "wrap": True, "weight": "Bolder",
         "size": "Large" if f.severity == "CRITICAL" else "Medium",
         "color": _COLOR.get(f.severity, "Default")},
        {"type": "FactSet", "facts": [{"title": label, "value": _plain(value)} for label, value in f.rows]},
        {"type": "TextBlock", "text": _plain(f.kind), "isSubtle": True, "size": "Small", "wrap": True},
    ]
    content: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
        "version": "1.4", "msteams": {"width": "Full"}, "body": body,
    }
    if f.link:
        content["actions"] = [{"type": "Action.OpenUrl", "title": "Open in console", "url": f.link}]
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": content}]}


class TeamsSink(ChatSink):
    kind = "teams"

    def format(self, alert: Facts) -> dict[str, Any]:
        return card(alert)
