"""An alert as a person reads it: the words and facts the Slack, Teams and e-mail sinks all show.

Values that come from a sign-in attempt (user agent, location) are chosen by whoever attempted it, who may
be the attacker. They are cleaned here (control and format characters removed, whitespace collapsed,
length capped) and each sink escapes them for its own markup.

The alert object is `pushauth.alerts.store.alert_view`'s: `context` is the login flow's (`ip`,
`user_agent`, `location`) of the incident's first prompt; `evidence` holds `event_count`, `kinds`
(kind -> count), `events` (newest last; a prompt's carry `app`, `phone_ip`, `login`, `reason`) and
`containment` (what pushauth already did). The event shown is the newest one of the alert's own kind, the
one that gave the alert its severity.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pushauth.clock import rfc3339

# The detection rules' kinds (pushauth/detection/rules.py RULES) in words; an unknown kind is shown as it is.
KIND_WORDS: dict[str, str] = {
    "denied_not_me": "User reported a sign-in they did not request",
    "denied": "User denied a sign-in prompt (said it was a mistake)",
    "wrong_number": "Sign-in approved with the wrong number",
    "push_bombing": "Too many sign-in prompts in a short time (possible push bombing)",
    "repeated_denials": "Several sign-in prompts denied in a short time",
    "approved_after_denials": "Sign-in approved after several denials (possible MFA fatigue)",
    "ignored_prompts": "Several sign-in prompts left unanswered",
    "prompt_cycling": "Sign-in prompts cancelled again and again (possible number fishing)",
    "late_response": "Sign-in prompt answered after it expired",
    "new_context": "Sign-in from a new network and location",
    "account_locked": "Account locked after repeated wrong numbers or access codes",
    "device_enrolled": "A phone was added to the account",
    "device_revoked": "A phone removed another phone from the account",
    "device_revoke_refused": "A new phone tried to remove an older one (refused)",
    "otp_guessing": "Too many wrong one-time codes (possible code guessing)",
    "otp_enrolled": "A one-time-code method was added to the account",
    "policy_override": "Account made exempt or shared during an incident",
    "access_code_issued": "A temporary access code was issued for the account",
    "access_code_used": "A temporary access code was used in place of a sign-in prompt",
    "blocked_prompt": "A sign-in prompt was refused: the account is locked or suspended",
    "blocked_approval": "A sign-in approved on the phone was refused: the account is locked or suspended",
}

_SPACES = re.compile(r"\s+")


def clean(value: object, limit: int = 200) -> str:
    """One line of printable text, at most `limit` characters."""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(value))
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind_words(kind: str) -> str:
    return KIND_WORDS.get(kind) or kind.replace("_", " ").capitalize()


def _time(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = rfc3339(int(value))
    text = str(value)
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?Z", text)
    return f"{m.group(1)} {m.group(2)} UTC" if m else text


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _counts(value: object) -> str:
    """{"denied": 2, "push_bombing": 1} -> "2 denied, 1 push_bombing"."""
    counts = [(n, kind) for kind, n in _mapping(value).items() if isinstance(n, int)]
    return ", ".join(f"{n} {kind}" for n, kind in sorted(counts, key=lambda c: (-c[0], c[1])))


@dataclass(frozen=True, slots=True)
class Facts:
    severity: str  # upper case: "CRITICAL"
    kind: str  # the alert kind as it is: "denied_not_me"
    title: str  # the kind in words, "Update: " in front for alert.updated
    user: str
    alert_id: str
    rows: tuple[tuple[str, str], ...]  # (label, value) in reading order; empty ones left out
    link: str  # the alert in the console, or ""


def facts(notification_type: str, alert: Mapping[str, Any], console_url: str = "", *,
          limit: int = 200) -> Facts:
    kind = str(alert.get("kind", ""))
    evidence = _mapping(alert.get("evidence"))
    raw_events = evidence.get("events")
    events = [_mapping(e) for e in raw_events] if isinstance(raw_events, list) else []
    event = next((e for e in reversed(events) if e.get("kind") == kind), events[-1] if events else {})
    login = _mapping(event.get("login")) or _mapping(alert.get("context"))
    contained = evidence.get("containment")
    actions = [str(_mapping(c).get("action", "")).replace("_", " ") for c in contained] \
        if isinstance(contained, list) else []
    alert_id = str(alert.get("id", ""))
    rows: list[tuple[str, object]] = [
        ("User", alert.get("user")),
        ("Time", _time(alert["created_at"]) if alert.get("created_at") else None),
        ("Application", event.get("app")),
        ("Sign-in IP", login.get("ip")),
        ("Sign-in location", login.get("location")),
        ("Browser", login.get("user_agent")),
        ("Phone IP", event.get("phone_ip")),
        ("Failed attempts", event.get("failures")),
        ("Events in this incident", evidence.get("event_count")),
        ("What happened", _counts(evidence.get("kinds"))),
        ("Action taken", ", ".join(a for a in actions if a)),
        ("Device", alert.get("device_id")),
        ("Alert", f"{alert_id} ({alert.get('status', 'open')})"),
    ]
    title = kind_words(kind)
    # A lock joins the incident's alert rather than heading it when the alert is already more severe
    # (MFA fatigue, then wrong numbers): the receiver must read it in the title, not only in a row.
    if kind != "account_locked" and "account locked" in actions:
        title += "; the account was locked"
    if notification_type == "alert.updated":
        title = "Update: " + title
    link = f"{console_url.rstrip('/')}/alerts/{quote(alert_id, safe='')}" if console_url and alert_id else ""
    return Facts(
        severity=clean(alert.get("severity", "info"), 16).upper(),
        kind=clean(kind, 64),
        title=clean(title, limit),
        user=clean(alert.get("user", ""), limit),
        alert_id=clean(alert_id, 128),
        rows=tuple((label, clean(value, limit)) for label, value in rows if value not in (None, "")),
        link=link,
    )
