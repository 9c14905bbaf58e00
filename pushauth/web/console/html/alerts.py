"""The console's alerts: each alert's plain-English title and why it was raised, an alert in the feed
(console.js builds the same markup for live ones), the open-alerts feed with its filters, the alert
history, and one alert's page (its facts, containment, evidence and the acknowledge form)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pushauth.detection.rules import RULES
from pushauth.web.console.html.layout import (
    Markup,
    dl,
    esc,
    join,
    notice,
    options,
    page,
    page_link,
    path_part,
    render,
    severity_badge,
    when,
)

if TYPE_CHECKING:
    from pushauth.web.console.sessions import Session


# Plain-English titles: {user}, and {src} (" from <the login's IP>" when the evidence has one).
_TITLES: Mapping[str, str] = {
    "denied_not_me": "{user} said they did not request this sign-in{src}",
    "denied": "{user} denied a sign-in, saying it was a mistake{src}",
    "wrong_number": "A sign-in for {user} was approved with the wrong number{src}",
    "push_bombing": "{user} was sent too many sign-in prompts in a short time{src}",
    "repeated_denials": "{user} refused sign-ins or typed wrong numbers again and again{src}",
    "approved_after_denials": "{user} approved a sign-in after refusing several: MFA fatigue may have "
                              "worked{src}",
    "ignored_prompts": "Sign-in prompts to {user} went unanswered{src}",
    "prompt_cycling": "A login kept cancelling prompts to {user}, fishing for a number{src}",
    "late_response": "{user} answered a sign-in prompt after it had expired{src}",
    "new_context": "{user} was asked to approve a sign-in from a new network and place{src}",
    "account_locked": "{user}'s account was locked after repeated wrong numbers or codes",
    "device_enrolled": "Another phone was added to {user}'s account",
    "device_revoked": "One of {user}'s phones removed another",
    "device_revoke_refused": "A new phone of {user} tried to remove an older one",
    "policy_override": "{user}'s account was exempted while it was contained",
    "otp_guessing": "Someone typed wrong one-time codes for {user} again and again",
    "otp_enrolled": "An authenticator app or hardware token was added to {user}'s account",
    "access_code_issued": "A temporary access code was issued for {user}",
    "access_code_used": "A temporary access code for {user} was used to sign in",
    "blocked_prompt": "A sign-in prompt for {user} was refused: the account is locked or suspended{src}",
    "blocked_approval": "{user} approved a sign-in that was refused: the account is locked or suspended{src}",
}
# Why each kind was raised: the detection rules' own words, and the kinds that are records rather than
# rules (pushauth/detection/rules.py lists only the rules; PROTOCOL.md 12.4 lists every kind).
_WHY: Mapping[str, str] = {
    **{rule.kind: rule.what for rule in RULES},
    "access_code_issued": "the security team issued a temporary access code for a user without their "
                          "phone; it works once, until it expires",
    "access_code_used": "a login flow accepted the user's temporary access code in place of a prompt",
    "blocked_prompt": "a login asked for a prompt while the account was locked or its prompts suspended, "
                      "during an open incident; no prompt was sent",
    "blocked_approval": "a phone approved a prompt after the account was locked or its prompts suspended, "
                        "during an open incident; the approval did not count",
}


def _login_ip(alert: Mapping[str, Any]) -> str:
    """The login IP of the newest event of the alert's own kind (or of any event)."""
    events = [e for e in alert.get("evidence", {}).get("events", []) if isinstance(e, dict)]
    for event in [*[e for e in events if e.get("kind") == alert["kind"]], *events][::-1]:
        login = event.get("login")
        if isinstance(login, dict) and login.get("ip"):
            return str(login["ip"])
    context = alert.get("context")
    return str(context.get("ip", "")) if isinstance(context, dict) else ""


def _locked_by_it(alert: Mapping[str, Any]) -> bool:
    """The incident locked the account while another kind heads it: a lock takes the headline only from
    an alert of its own severity or lower (ledger.lua HEADLINE), so under a critical one it would show
    only in the containment list, which a reader of the feed never sees."""
    contained = alert.get("evidence", {}).get("containment", [])
    return alert["kind"] != "account_locked" and any(
        isinstance(c, dict) and c.get("action") == "account_locked" for c in contained)


def alert_title(alert: Mapping[str, Any]) -> str:
    ip = _login_ip(alert)
    template = _TITLES.get(str(alert["kind"]), "{kind} for {user}{src}")
    title = template.format(user=alert["user"], kind=alert["kind"], src=f" from {ip}" if ip else "")
    return title + ("; the account was locked" if _locked_by_it(alert) else "")


def alert_explanation(alert: Mapping[str, Any]) -> str:
    why = _WHY.get(str(alert["kind"]))
    return f"Raised because {why}." if why else "A detection rule this console does not describe yet."


def _events_text(alert: Mapping[str, Any]) -> str:
    n = alert.get("evidence", {}).get("event_count", alert.get("event_count", 0))
    return "1 event" if n == 1 else f"{n} events"


def feed_item(alert: Mapping[str, Any]) -> Markup:
    """One alert in the feed; console.js builds the same markup for alerts that arrive live."""
    return render(
        '<li id="alert-{id}" class="alert sev-{sev}" data-version="{version}" data-severity="{sev}">'
        '<a href="/console/alerts/{id}">{badge} <span class="title">{title}</span> '
        '<span class="meta"><span class="kind">{kind}</span> <span class="count">{count}</span> '
        '{updated}{escalated}</span></a></li>',
        escalated=Markup(' <span class="escalated">ESCALATED</span>') if alert.get("version", 1) > 1 else "",
        id=alert["id"], sev=alert["severity"], version=alert.get("version", 1),
        badge=severity_badge(str(alert["severity"])), title=alert_title(alert), kind=alert["kind"],
        count=_events_text(alert), updated=when(alert.get("updated_at") or alert["created_at"]))


_SEVERITIES = ("critical", "high", "medium", "low", "info")
_RANGES = (("", "Any time"), ("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"),
           ("30d", "Last 30 days"))


def _filters(action: str, filters: Mapping[str, str], *, statuses: bool) -> Markup:
    """The filter form: a GET, so the filters are the page's URL and survive a reload or a shared link."""
    status = render(
        '<label>Status <select name="status">{opts}</select></label>',
        opts=options((("open", "Open"), ("acked", "Acknowledged"), ("", "Any")),
                      filters.get("status", "open")),
    ) if statuses else Markup("")
    return render(
        '<form method="get" action="{action}" class="filters" role="search" aria-label="Filter alerts">'
        '<label>Severity <select name="severity">{sev}</select></label>{status}'
        '<label>Kind <input name="kind" value="{kind}" size="16" placeholder="e.g. denied_not_me"></label>'
        '<label>Application <input name="app" value="{app}" size="12"></label>'
        '<label>When <select name="range">{range}</select></label>'
        '<button type="submit">Filter</button> <a href="{action}">Clear</a></form>',
        action=action, status=status, kind=filters.get("kind", ""), app=filters.get("app", ""),
        sev=options((("", "Any"), *((v, v.capitalize()) for v in _SEVERITIES)), filters.get("severity", "")),
        range=options(_RANGES, filters.get("range", "")))


def feed_page(alerts: list[dict[str, Any]], *, since: str, session: Session, filters: Mapping[str, str],
              after: int | None, done: str | None) -> Markup:
    critical = sum(1 for a in alerts if a["severity"] == "critical")
    main = render(
        '<h1>Open alerts</h1>{notice}{critical}{filters}'
        '<p id="feed-status" class="hint" role="status">Live updates start when the page has loaded.</p>'
        '<p id="feed-empty" {hidden}>No open alerts.</p>'
        '<ol id="feed" class="feed" aria-live="polite" aria-relevant="additions text" '
        'data-events="/console/events?since={since}" data-live="{live}">{items}</ol>{more}',
        notice=notice(done), hidden=Markup("hidden") if alerts else Markup(""), since=since,
        critical=render('<p class="critical-banner" role="alert">{n} critical: act on these first.</p>',
                        n=critical) if critical else Markup(""),
        filters=_filters("/console", filters, statuses=False),
        # A filtered view shows what matched the filters; new alerts would not, so it is not live.
        live="0" if any(filters.get(k) for k in ("severity", "kind", "app", "range", "start")) else "1",
        items=join(feed_item(a) for a in alerts),
        more=page_link("/console", filters, "More alerts", start=after) if after is not None else "")
    return page("Open alerts", main, session)


def history_page(alerts: list[dict[str, Any]], *, session: Session, filters: Mapping[str, str], start: int,
                 after: int | None) -> Markup:
    rows = join(render(
        '<tr><td>{badge}</td><td><a href="/console/alerts/{id}">{title}</a></td><td>{raised}</td>'
        '<td>{status}</td><td class="id">{by}</td><td>{at}</td><td>{note}</td></tr>',
        badge=severity_badge(str(a["severity"])), id=a["id"], title=alert_title(a),
        raised=when(a["created_at"]), status=a["status"], by=a.get("acked_by") or "-",
        at=when(a.get("acked_at")), note=a.get("ack_note") or "-") for a in alerts)
    main = render(
        '<h1>Alert history</h1>{filters}<p class="hint">{shown}</p>'
        '<div class="scroll"><table class="history"><thead><tr><th scope="col">Severity</th>'
        '<th scope="col">Alert</th><th scope="col">Raised</th><th scope="col">Status</th>'
        '<th scope="col">Acknowledged by</th><th scope="col">At</th><th scope="col">Note</th></tr></thead>'
        '<tbody>{rows}</tbody></table></div><p class="pager">{first}{more}</p>',
        filters=_filters("/console/history", filters, statuses=True), rows=rows,
        shown=f"Alerts {start + 1} to {start + len(alerts)}, newest first." if alerts else "No alerts match.",
        first=page_link("/console/history", filters, "Newest") if start else "",
        more=render(" {link}", link=page_link("/console/history", filters, "Older alerts", start=after))
        if after is not None else "")
    return page("Alert history", main, session)


_EVENT_KEYS = {"kind", "severity", "at", "app", "login", "phone_ip", "status", "reason", "challenge_id",
               "created_at", "decided_at", "device_id"}


def _event_row(event: Mapping[str, Any]) -> Markup:
    login: Mapping[str, Any] = event["login"] if isinstance(event.get("login"), dict) else {}
    answer = str(event.get("status") or "-") + (f" ({event['reason']})" if event.get("reason") else "")
    extra = ", ".join(f"{k}={v}" for k, v in sorted(event.items()) if k not in _EVENT_KEYS)
    return render(
        '<tr><th scope="row">{badge} {kind}</th><td>{at}</td><td>{app}</td>'
        '<td class="id">{ip}</td><td>{location}</td><td class="ua">{ua}</td><td class="id">{phone_ip}</td>'
        '<td>{answer}</td><td class="id"><code>{cid}</code>{extra}</td></tr>',
        badge=severity_badge(str(event.get("severity", "info"))), kind=event.get("kind", "-"),
        at=when(event.get("at", "-")), app=event.get("app") or "-", ip=login.get("ip") or "-",
        location=login.get("location") or "-", ua=login.get("user_agent") or "-",
        phone_ip=event.get("phone_ip") or "-", answer=answer, cid=event.get("challenge_id") or "-",
        extra=render(" <span class=\"hint\">{e}</span>", e=extra) if extra else Markup(""))


def alert_page(alert: Mapping[str, Any], *, session: Session) -> Markup:
    evidence = alert.get("evidence", {})
    events = evidence.get("events", [])
    contained = evidence.get("containment", [])
    user_link = render('<a href="/console/users/{u}">{user}</a>', u=path_part(alert["user"]),
                       user=alert["user"])
    status = Markup(esc(alert["status"]))
    if alert["status"] == "acked":
        status = render("acked by {by} at {at}{note}", by=alert.get("acked_by"),
                        at=when(alert.get("acked_at")),
                        note=f": {alert['ack_note']}" if alert.get("ack_note") else "")
    facts = dl([("Severity", severity_badge(alert["severity"])), ("Kind", alert["kind"]),
                 ("User", user_link), ("Status", status), ("Raised", when(alert["created_at"])),
                 ("Updated", when(alert.get("updated_at"))), ("Events", evidence.get("event_count")),
                 ("Challenge", alert.get("challenge_id")), ("Device", alert.get("device_id"))])
    table = render(
        '<table class="evidence"><caption>Evidence, oldest first</caption><thead><tr>'
        '<th scope="col">Event</th><th scope="col">Time</th><th scope="col">Application</th>'
        '<th scope="col">Login IP</th><th scope="col">Location</th><th scope="col">Browser</th>'
        '<th scope="col">Phone IP</th><th scope="col">Answer</th><th scope="col">Challenge</th></tr></thead>'
        '<tbody>{rows}</tbody></table>',
        rows=join(_event_row(e) for e in events if isinstance(e, dict)))
    actions = (join(render('<li>{action} {at}</li>', action=c.get("action", "-"), at=when(c.get("at", "-")))
                    for c in contained if isinstance(c, dict))
               or render("<li>None</li>"))
    ack = Markup("")
    if alert["status"] == "open" and session.may("ack"):
        ack = render('<form method="post" action="/console/alerts/{id}/ack" class="stack ack">'
                     '<input type="hidden" name="csrf" value="{csrf}">'
                     '<label for="note">Note (what you found, what you did)</label>'
                     '<textarea id="note" name="note" maxlength="500" rows="3"></textarea>'
                     '<button type="submit" class="primary">Acknowledge</button></form>',
                     id=alert["id"], csrf=session.csrf)
    main = render(
        '<h1>{badge} {kind}: {user}</h1><p class="lead sev-{sev}">{title}</p><p>{why}</p>{facts}{ack}'
        '<h2>Containment</h2><ul class="contained">{actions}</ul>'
        '<h2>Evidence</h2><div class="scroll">{table}</div>'
        '<p><a href="/console/users/{u}">Look up {user}</a> (unlock, lift a suspension, revoke a phone)</p>',
        badge=severity_badge(alert["severity"]), kind=alert["kind"], user=alert["user"], facts=facts, ack=ack,
        sev=alert["severity"], title=alert_title(alert), why=alert_explanation(alert),
        actions=actions, table=table, u=path_part(alert["user"]))
    return page(f"Alert {alert['kind']}", main, session)
