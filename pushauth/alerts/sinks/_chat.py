"""What the Slack and Teams sinks share: everything but the message's shape.

A chat sink turns a notification into the alert as a person reads it (`_facts.facts`, with a link into the
console when `console_url` is set), lets its subclass shape that into its destination's JSON (`format`),
and POSTs it through `HttpTarget`, which maps the answer to a `SinkOutcome` (2xx delivered, 410 gone,
anything else retried).
"""

from __future__ import annotations

import abc
from typing import Any

import msgspec

from pushauth.alerts.sinks._facts import Facts, facts
from pushauth.alerts.sinks._http import HttpTarget
from pushauth.alerts.sinks.base import Notification, SinkOutcome

_HEADERS = {"Content-Type": "application/json"}


class ChatSink(abc.ABC):
    """An incoming-webhook chat sink; a subclass sets `kind` and implements `format`."""

    kind: str  # "slack" | "teams"

    def __init__(self, name: str, *, url: str, timeout_s: float, console_url: str = "",
                 ca_file: str = "") -> None:
        self.name = name
        self._console_url = console_url
        self._http = HttpTarget(sink=name, kind=self.kind, url=url, timeout_s=timeout_s, ca_file=ca_file)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._http.origin}/...)"

    @abc.abstractmethod
    def format(self, alert: Facts) -> dict[str, Any]:
        """The JSON body the destination takes, from the alert's facts."""

    async def deliver(self, notification: Notification) -> SinkOutcome:
        body = self.format(facts(notification.type, notification.alert, self._console_url))
        return await self._http.post(msgspec.json.encode(body), _HEADERS)

    async def aclose(self) -> None:
        await self._http.aclose()
