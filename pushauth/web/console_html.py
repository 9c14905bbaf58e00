"""The HTML of the security team's console and of the sample login page, and the headers every one of
their pages carries.

Safe by default: `render(template, **values)` escapes every value with `html.escape` unless it is `Markup`
that these functions built from their own constant templates. User names, user agents and locations come
from attackers (a login flow passes on whatever a browser claimed), so no value is ever trusted to be
plain text. Pages have no inline script or style (the Content-Security-Policy forbids both): behaviour
and looks come from the static files in console_static/, and data for the scripts from `data-*`
attributes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from pushauth.clock import rfc3339
from pushauth.detection.rules import RULES
from pushauth.operators import ROLES, may

if TYPE_CHECKING:
    from pushauth.web.console.sessions import Session

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Pages show who is locked, incident evidence and one-time access codes: never kept by a browser or
    # a proxy.
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

STATIC = "/console/static/"


class Markup(str):
    """Text that is already HTML (built here from constant templates and escaped values)."""

    __slots__ = ()


def esc(value: object) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def render(template: str, /, **values: object) -> Markup:
    """`template` is a constant of this module; every value is escaped unless it is `Markup`."""
    return Markup(template.format_map({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def path_part(value: str) -> str:
    """A user name or id as one URL path segment (escaped again by `render` for the attribute)."""
    return quote(value, safe="@")


def respond(body: Markup, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                            headers={**SECURITY_HEADERS, **(headers or {})})
    return response


def redirect(location: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """303 See Other: after a form POST, the browser GETs the result (reloading it repeats nothing)."""
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location, **(headers or {})})


# -- layout --------------------------------------------------------------------------------------------------


def layout(title: str, main: Markup, *, csrf: str | None = None, who: str | None = None,
           script: str = "console.js", section: str = "pushauth console", role: str | None = None) -> Markup:
    nav = Markup("")
    if csrf is not None:
        nav = render(
            '<nav aria-label="Console"><ul>'
            '<li><a href="/console">Alerts</a></li><li><a href="/console/history">History</a></li>'
            '<li><a href="/console/users">Users</a></li><li><a href="/console/audit">Audit</a></li>{accounts}'
            '</ul>'
            '<form method="post" action="/console/logout" class="inline">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<span class="who">Signed in as {who}{role}</span> <button type="submit">Sign out</button>'
            '</form></nav>',
            csrf=csrf, who=who or "", role=f" ({role.replace('_', ' ')})" if role else "",
            accounts=render('<li><a href="/console/accounts">Accounts</a></li>')
            if role and may(role, "accounts") else Markup(""))
    return render(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} - {section}</title>'
        '<link rel="icon" href="{static}favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="{static}console.css">'
        '<script src="{static}{script}" defer></script></head>'
        '<body><a class="skip" href="#main">Skip to content</a>'
        '<header><p class="brand">{section}</p>{nav}</header>'
        '<main id="main" tabindex="-1">{main}</main></body></html>\n',
        title=title, section=section, static=STATIC, script=script, nav=nav, main=main)


def page(title: str, main: Markup, session: Session) -> Markup:
    """A signed-in page: the layout with the session's navigation, name and role."""
    return layout(title, main, csrf=session.csrf, who=session.who, role=session.role)


def notice(text: str | None) -> Markup:
    if not text:
        return Markup("")
    return render('<p class="notice" role="status">{text}</p>', text=text)


def error_page(status: int, message: str, *, csrf: str | None = None, who: str | None = None) -> web.Response:
    main = render('<h1>{title}</h1><p role="alert">{message}</p>'
                  '<p><a href="/console">Back to the alerts</a></p>',
                  title=_STATUS_TITLES.get(status, "Error"), message=message)
    return respond(layout(_STATUS_TITLES.get(status, "Error"), main, csrf=csrf, who=who), status=status)


_STATUS_TITLES = {400: "Bad request", 403: "Refused", 404: "Not found", 409: "Already done",
                  422: "Not valid", 429: "Too many requests", 503: "Unavailable"}


# -- console pages ---------------------------------------------------------------------------------------


def login_page(*, error: str | None = None) -> Markup:
    main = render(
        '<h1>Sign in</h1><p id="login-error" class="error" role="alert" {hidden}>{error}</p>'
        '<section class="sign-in"><h2>With your phone</h2>'
        '<form id="push-form" method="post" action="/console/login/push" class="stack">'
        '<label for="push-user">Your user name</label>'
        '<input id="push-user" name="user" autocomplete="username" required autofocus>'
        '<button type="submit" class="primary">Send a sign-in prompt</button></form>'
        '<div id="push-wait" hidden><p>Type this number in the pushauth app on your phone:</p>'
        '<p id="push-number" class="number"></p><p id="push-status" role="status">Waiting for your phone…</p>'
        '</div></section>'
        '<section class="sign-in"><h2>With an admin token</h2>'
        '<form id="login-form" method="post" action="/console/login" class="stack">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required>'
        '<button type="submit">Sign in</button></form>'
        '<p class="hint">An admin token of this server (<code>pushauth admin new-token</code>): for the '
        'first owner, before any console account exists.</p></section>',
        error=error or "", hidden=Markup("") if error else Markup("hidden"))
    return layout("Sign in", main)


def severity_badge(severity: str) -> Markup:
    return render('<span class="badge sev-{sev}">{label}</span>', sev=severity, label=severity.upper())


def when(at: object) -> Markup:
    """A time: UTC in the markup (and on hover), shown in the viewer's own zone by console.js."""
    if not at or at == "-":
        return Markup("-")
    return render('<time datetime="{at}" title="{at}">{at}</time>', at=at)


def json_text(value: object) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) if isinstance(value, dict) else str(value)


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


def _options(choices: Iterable[tuple[str, str]], chosen: str) -> Markup:
    return join(render('<option value="{v}"{sel}>{label}</option>', v=v, label=label,
                       sel=Markup(" selected") if v == chosen else Markup(""))
                for v, label in choices)


def _filters(action: str, filters: Mapping[str, str], *, statuses: bool) -> Markup:
    """The filter form: a GET, so the filters are the page's URL and survive a reload or a shared link."""
    status = render(
        '<label>Status <select name="status">{opts}</select></label>',
        opts=_options((("open", "Open"), ("acked", "Acknowledged"), ("", "Any")),
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
        sev=_options((("", "Any"), *((v, v.capitalize()) for v in _SEVERITIES)), filters.get("severity", "")),
        range=_options(_RANGES, filters.get("range", "")))


def _page_link(path: str, filters: Mapping[str, str], label: str, **changes: object) -> Markup:
    query = {k: v for k, v in filters.items() if k not in ("start", "before", "done") and v}
    query.update({k: str(v) for k, v in changes.items()})
    return render('<a href="{path}?{q}" rel="next">{label}</a>', path=path, q=urlencode(query), label=label)


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
        more=_page_link("/console", filters, "More alerts", start=after) if after is not None else "")
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
        first=_page_link("/console/history", filters, "Newest") if start else "",
        more=render(" {link}", link=_page_link("/console/history", filters, "Older alerts", start=after))
        if after is not None else "")
    return page("Alert history", main, session)


def _dl(rows: Iterable[tuple[str, object]]) -> Markup:
    return render('<dl class="facts">{rows}</dl>', rows=join(
        render("<dt>{k}</dt><dd>{v}</dd>", k=k, v=v if v not in (None, "") else "-") for k, v in rows))


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
    facts = _dl([("Severity", severity_badge(alert["severity"])), ("Kind", alert["kind"]),
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


def user_search_page(*, session: Session, query: str = "", error: str | None = None,
                     found: list[str] | None = None, partial: str | None = None) -> Markup:
    """`partial`: why the list may not be every match (the search stopped at a bound)."""
    results = Markup("")
    if found or partial:
        items = join(render('<li><a href="/console/users/{u}">{name}</a></li>', u=path_part(n), name=n)
                     for n in found or [])
        results = render('<h2>Users matching {q}</h2>{partial}<ul class="results">{items}</ul>', q=query,
                         items=items, partial=render('<p class="partial" role="status">{p}</p>', p=partial)
                         if partial else Markup(""))
    main = render(
        '<h1>Look up a user</h1>{error}'
        '<form method="get" action="/console/users" class="stack" role="search">'
        '<label for="user">User name</label><input id="user" name="user" value="{q}" required autofocus>'
        '<p class="hint">A whole name, its start, or any part of it.</p>'
        '<button type="submit">Look up</button></form>{results}',
        error=render('<p class="error" role="alert">{e}</p>', e=error) if error else Markup(""), q=query,
        results=results)
    return page("Look up a user", main, session)


def _action(user: str, path: str, label: str, csrf: str, *, extra: str = "", primary: bool = False,
            confirm: str = "") -> Markup:
    return render('<form method="post" action="/console/users/{u}/{path}" class="inline"{confirm}>'
                  '<input type="hidden" name="csrf" value="{csrf}">{extra}'
                  '<button type="submit"{cls}>{label}</button></form>',
                  u=path_part(user), path=path, csrf=csrf, extra=Markup(extra), label=label,
                  cls=Markup(' class="primary"') if primary else Markup(""),
                  confirm=render(' data-confirm="{c}"', c=confirm) if confirm else Markup(""))


def _state(view: Mapping[str, Any], what: str) -> Markup:
    """'no', or since when, why and until when the account is locked / its prompts suspended."""
    if not view[what]:
        return Markup("no")
    until = view.get(f"{what}_until")
    return render("yes, since {at} ({why}){until}", at=when(view.get(f"{what}_at")),
                  why=view.get(f"{what}_reason") or "-",
                  until=render(", until {u}", u=when(until)) if until else "")


def _challenge_row(c: Mapping[str, Any]) -> Markup:
    ctx: Mapping[str, Any] = c["context"] if isinstance(c.get("context"), dict) else {}
    status = (str(c.get("status")) + (f" ({c['reason']})" if c.get("reason") else "")
              + (f", revoked ({c['revoked']})" if c.get("revoked") else ""))
    return render(
        '<tr><td>{at}</td><td>{app}</td><td>{status}</td><td class="id">{ip}</td>'
        '<td>{location}</td><td class="ua">{ua}</td><td class="id">{phone_ip}</td></tr>',
        at=when(c.get("created_at")), app=c.get("app") or "-", status=status, ip=ctx.get("ip") or "-",
        location=ctx.get("location") or "-", ua=ctx.get("user_agent") or "-",
        phone_ip=c.get("phone_ip") or "-")


def _user_actions(view: Mapping[str, Any], session: Session) -> list[Markup]:
    user, csrf = str(view["user"]), session.csrf
    actions: list[Markup] = []
    if session.may("unlock"):
        if view["locked"]:
            actions.append(_action(user, "unlock", "Unlock", csrf, primary=True,
                                   extra='<input type="hidden" name="what" value="lock">'))
        if view["suspended"]:
            actions.append(_action(user, "unlock", "Lift the suspension", csrf, primary=True,
                                   extra='<input type="hidden" name="what" value="suspension">'))
        if not (view["locked"] or view["suspended"]) and any(
                b.get("kind") in ("push_bombing", "access_code_attempts", "otp_attempts")
                for b in view.get("blocks") or []):
            # unlock also ends the push-bombing and wrong-code windows (pushauth/accounts/service.py)
            actions.append(_action(user, "unlock", "Let the user back in now", csrf, primary=True,
                                   extra='<input type="hidden" name="what" value="all">'))
    if not view["locked"] and session.may("lock"):
        actions.append(_action(user, "lock", "Lock the account", csrf,
                               confirm=f"Lock {user}? Their pending prompts are denied and they cannot "
                                       "sign in until someone unlocks the account."))
    if session.may("access_code"):
        actions.append(_action(user, "access-code", "Issue an access code", csrf))
    if session.may("enroll"):
        actions.append(_action(user, "enrollment", "Enroll a new phone", csrf))
        actions.append(_action(user, "otp-methods", "Set up an authenticator app", csrf))
    return actions


_OTP_KINDS = {"app": "authenticator app", "hardware": "hardware token", "phone": "pushauth phone (offline)"}


def _otp_row(user: str, m: Mapping[str, Any], session: Session) -> Markup:
    """One offline-code method: never its seed (the view has none)."""
    detail = (f"serial {m['serial']}" if m.get("serial") else
              f"phone {m['device']}" if m.get("device") else "-")
    shape = f"{str(m.get('type', 'totp')).upper()}, {m.get('digits')} digits"
    revoke = (_action(user, f"otp-methods/{path_part(str(m['id']))}/revoke", "Revoke", session.csrf,
                      confirm=f"Revoke {m.get('name') or 'this method'}? Its codes stop working at once.")
              if session.may("revoke") and m.get("kind") != "phone" else Markup("-"))
    return render(
        '<tr><th scope="row">{name}</th><td>{kind}</td><td>{shape}</td><td>{status}</td><td>{detail}</td>'
        '<td>{activated}</td><td>{used}</td><td>{revoke}</td></tr>',
        name=m.get("name") or "-", kind=_OTP_KINDS.get(str(m.get("kind")), str(m.get("kind"))), shape=shape,
        status=str(m.get("status", "-")).replace("_", " "), detail=detail,
        activated=when(m.get("activated_at")), used=when(m.get("last_used_at")), revoke=revoke)


def user_page(view: Mapping[str, Any], open_alerts: list[dict[str, Any]], *, session: Session,
              done: str | None) -> Markup:
    user, csrf = str(view["user"]), session.csrf
    facts = _dl([("Locked", _state(view, "locked")), ("Prompts suspended", _state(view, "suspended")),
                 ("Consecutive failures", view.get("consecutive_failures")),
                 ("Account policy", view.get("policy") or "normal"),
                 ("Prompts paused by the user until", when(view.get("paused_until"))),
                 ("Remembered browsers", len(view.get("remembered_browsers") or []))])
    actions = _user_actions(view, session) or [render('<p class="hint">Your role can only look.</p>')]
    pending = [{**d, "status": "waiting for approval", "push": None} for d in view.get("pending_devices", [])]
    devices = join(render(
        '<tr><th scope="row">{name}</th><td>{platform}</td><td>{status}</td><td>{push}</td><td>{created}</td>'
        '<td class="id">{ip}</td><td class="id"><code>{id}</code></td><td>{revoke}</td></tr>',
        name=d.get("name") or "-", platform=d.get("platform") or "-", status=d.get("status") or "-",
        push=f"{d['push']['provider']} ({d['push']['state']})" if d.get("push") else "-",
        created=when(d.get("created_at")), ip=d.get("enrolled_from_ip") or "-", id=d["id"],
        revoke=_action(user, f"devices/{path_part(d['id'])}/revoke", "Revoke", csrf,
                       confirm=f"Revoke {d.get('name') or 'this phone'}? It can no longer approve sign-ins.")
        if d.get("status") in ("active", "waiting for approval") and session.may("revoke") else Markup("-"))
        for d in [*view.get("devices", []), *pending])
    blocks = view.get("blocks") or []
    block_items = join(render(
        '<li><strong>{kind}</strong> since {since}, {until} ({reason})</li>',
        kind=_BLOCK_WORDS.get(str(b.get("kind")), str(b.get("kind"))), since=when(b.get("since")),
        until=render("until {u}", u=when(b["until"])) if b.get("until") else "until the security team acts",
        reason=b.get("reason") or "-") for b in blocks) or render("<li>None: the user can sign in</li>")
    recent = join(_challenge_row(c) for c in view.get("recent_challenges", []))
    otps = join(_otp_row(user, m, session) for m in view.get("otp_methods") or []) or render(
        '<tr><td colspan="8">None</td></tr>')
    alerts = join(render('<li>{badge} <a href="/console/alerts/{id}">{title}</a></li>',
                         badge=severity_badge(str(a["severity"])), id=a["id"], title=alert_title(a))
                  for a in open_alerts) or render("<li>None</li>")
    main = render(
        '<h1>{user}</h1>{notice}{facts}<h2>What stops this user signing in</h2>'
        '<ul class="blocks">{blocks}</ul><h2>Actions</h2><div class="actions">{actions}</div>'
        '<h2>Devices</h2><div class="scroll"><table><thead><tr><th scope="col">Name</th>'
        '<th scope="col">Platform</th><th scope="col">Status</th><th scope="col">Push</th>'
        '<th scope="col">Enrolled</th><th scope="col">Enrolled from</th><th scope="col">Id</th>'
        '<th scope="col">Action</th></tr></thead><tbody>{devices}</tbody></table></div>'
        '<h2>One-time codes</h2><div class="scroll"><table><thead><tr><th scope="col">Name</th>'
        '<th scope="col">Kind</th><th scope="col">Codes</th><th scope="col">Status</th>'
        '<th scope="col">Token or phone</th><th scope="col">Activated</th><th scope="col">Last used</th>'
        '<th scope="col">Action</th></tr></thead><tbody>{otps}</tbody></table></div>'
        '<h2>Recent sign-in prompts</h2><div class="scroll"><table><thead><tr><th scope="col">Time</th>'
        '<th scope="col">Application</th><th scope="col">Answer</th><th scope="col">Login IP</th>'
        '<th scope="col">Location</th><th scope="col">Browser</th><th scope="col">Phone IP</th></tr></thead>'
        '<tbody>{recent}</tbody></table></div><h2>Open alerts</h2><ul class="open-alerts">{alerts}</ul>'
        '<p><a href="/console/audit?user={u}">Audit trail for {user}</a></p>',
        user=user, notice=notice(done), facts=facts, actions=join(actions), devices=devices, otps=otps,
        recent=recent,
        alerts=alerts, blocks=block_items, u=quote(user))
    return page(user, main, session)


_BLOCK_WORDS = {"locked": "Locked", "suspended": "Prompts suspended", "paused": "Paused by the user's phone",
                "push_bombing": "Too many prompts (push-bombing limit)",
                "access_code_attempts": "Too many wrong access codes",
                "otp_attempts": "Too many wrong one-time codes"}


def access_code_page(user: str, code: str, expires_at: str, *, session: Session) -> Markup:
    main = render(
        '<h1>Access code for {user}</h1>'
        '<p>Read this code to the user. It is shown only once, works once, and expires at '
        '{exp}.</p><p class="code" id="access-code">{code}</p>'
        '<p><a href="/console/users/{u}">Back to {user}</a></p>',
        user=user, exp=when(expires_at), code=code, u=path_part(user))
    return page("Access code", main, session)


def enrollment_page(user: str, uri: str, expires_at: str, qr: Markup, *, session: Session) -> Markup:
    main = render(
        '<h1>New phone for {user}</h1>'
        '<p>Ask the user to scan this code with the pushauth app on the new phone. It works once and expires '
        'at {exp}. The phone is active at once: it was issued by the security team.</p>'
        '<div class="qr" id="enrollment-qr">{qr}</div>'
        '<details><summary>The enrollment link, for a phone that cannot scan</summary>'
        '<p class="id"><code id="enrollment-uri">{uri}</code></p></details>'
        '<p><a href="/console/users/{u}">Back to {user}</a></p>',
        user=user, exp=when(expires_at), qr=qr, uri=uri, u=path_part(user))
    return page("New phone", main, session)


def otp_activation_form(user: str, method_id: str, csrf: str) -> Markup:
    return render(
        '<form method="post" action="/console/users/{u}/otp-methods/{m}/activate" class="stack">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<label for="otp-code">The code the app shows now</label>'
        '<input id="otp-code" name="code" inputmode="numeric" autocomplete="one-time-code" '
        'pattern="[0-9 -]{{6,10}}" required>'
        '<button type="submit" class="primary">Activate</button></form>',
        u=path_part(user), m=path_part(method_id), csrf=csrf)


def otp_enrollment_page(user: str, method_id: str, secret: str, expires_at: str, qr: Markup, *,
                        session: Session) -> Markup:
    """The one time the seed is shown: for the user to scan (or type) into their authenticator app on a
    service desk call. It is pending until one of its codes is typed back below."""
    main = render(
        '<h1>Authenticator app for {user}</h1>'
        '<p>Ask the user to scan this code with Microsoft Authenticator, Google Authenticator or FreeOTP. '
        'This page is the only time it is shown. Then type the 6-digit code their app shows, before {exp}: '
        'the method works only once that code is right.</p>'
        '<div class="qr" id="otp-qr">{qr}</div>'
        '<details><summary>The key, for an app that cannot scan</summary>'
        '<p class="id"><code id="otp-secret">{secret}</code></p></details>{form}'
        '<p><a href="/console/users/{u}">Back to {user}</a></p>',
        user=user, exp=when(expires_at), qr=qr, secret=secret, u=path_part(user),
        form=otp_activation_form(user, method_id, session.csrf))
    return page("Authenticator app", main, session)


def otp_activation_page(user: str, method_id: str, error: str, *, session: Session) -> Markup:
    """A wrong (or late) code: the form again, never the seed again."""
    main = render('<h1>Authenticator app for {user}</h1><p class="error" role="alert">{error}</p>{form}'
                  '<p><a href="/console/users/{u}">Back to {user}</a></p>',
                  user=user, error=error, form=otp_activation_form(user, method_id, session.csrf),
                  u=path_part(user))
    return page("Authenticator app", main, session)


def accounts_page(accounts: list[dict[str, Any]], *, session: Session, done: str | None) -> Markup:
    roles = _options(((r, r.replace("_", " ")) for r in ROLES), "viewer")
    rows = join(render(
        '<tr><th scope="row" class="id">{user}</th><td>{role}</td><td class="id">{by}</td><td>{at}</td>'
        '<td><form method="post" action="/console/accounts/{u}/remove" class="inline" data-confirm="{ask}">'
        '<input type="hidden" name="csrf" value="{csrf}"><button type="submit">Remove</button></form>'
        '</td></tr>',
        user=a["user"], role=str(a["role"]).replace("_", " "), by=a["set_by"], at=when(a["set_at"]),
        u=path_part(str(a["user"])), csrf=session.csrf,
        ask=f"Remove {a['user']}'s console account? They are signed out at once.") for a in accounts)
    main = render(
        '<h1>Console accounts</h1>{notice}'
        '<p>Each account is a pushauth user, who signs in here with a push to their own phone, and a role: '
        '<strong>viewer</strong> reads; <strong>service desk</strong> also unlocks, issues access codes and '
        'enrolls new phones; <strong>responder</strong> also acknowledges alerts, locks and revokes; '
        '<strong>owner</strong> also manages alert sinks, account policies and these accounts.</p>'
        '<form method="post" action="/console/accounts" class="filters">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<label>User name <input name="user" required size="28"></label>'
        '<label>Role <select name="role">{roles}</select></label>'
        '<button type="submit" class="primary">Save</button></form>'
        '<div class="scroll"><table class="accounts"><thead><tr><th scope="col">User</th>'
        '<th scope="col">Role</th><th scope="col">Set by</th><th scope="col">At</th>'
        '<th scope="col">Action</th>'
        '</tr></thead><tbody>{rows}</tbody></table></div>',
        notice=notice(done), csrf=session.csrf, roles=roles, rows=rows)
    return page("Console accounts", main, session)


def _audit_pager(entries: list[dict[str, Any]], filters: Mapping[str, str], after: str | None,
                 scanned: int | None) -> Markup:
    """The link on to older entries; and, when the read stopped at its bound before filling the page, that
    the older part of the trail was not searched (never "No entries match" about entries not looked at)."""
    if not after:
        return Markup("") if entries else render("No entries match.")
    if scanned is None:
        return _page_link("/console/audit", filters, "Older entries", before=after)
    back_to = rfc3339(int(after.split("-", 1)[0]) // 1000)
    return render(
        '<span class="partial" role="status">{found} among the {n} entries searched, back to {at}; older '
        'entries were not searched.</span> {link}',
        found=f"{len(entries)} {'entry matches' if len(entries) == 1 else 'entries match'}" if entries
        else "No entries match", n=f"{scanned:,}", at=when(back_to),
        link=_page_link("/console/audit", filters, "Search older entries", before=after))


def audit_page(entries: list[dict[str, Any]], *, session: Session, filters: Mapping[str, str],
               after: str | None, partial_after: int | None = None) -> Markup:
    """`partial_after`: how many entries the read looked at, when it stopped at its bound before it
    filled the page (None when it did not)."""
    rows = join(render(
        '<tr><td>{at}</td><td>{what}</td><td class="id">{user}</td><td class="id">{who}</td><td>{why}</td>'
        '<td class="ua">{details}</td></tr>',
        at=when(e["at"]), what=e["what"], user=e["user"] or "-", who=e["who"] or "-", why=e["why"] or "-",
        details=json_text(e["details"]) if e.get("details") else "-") for e in entries)
    csv_query = urlencode({k: v for k, v in filters.items() if k in ("user", "who", "what") and v})
    main = render(
        '<h1>Audit trail</h1>'
        '<form method="get" action="/console/audit" class="filters" role="search" '
        'aria-label="Filter the trail"><label>User <input name="user" value="{user}" size="20"></label>'
        '<label>Actor <input name="who" value="{who}" size="20" placeholder="console:name or admin:...">'
        '</label>'
        '<label>Action <input name="what" value="{what}" size="16" placeholder="e.g. unlocked"></label>'
        '<button type="submit">Filter</button> <a href="/console/audit">Clear</a></form>'
        '<p><a href="/console/audit.csv?{csv}" download>Download as CSV</a></p>'
        '<div class="scroll"><table class="audit"><thead><tr><th scope="col">Time</th>'
        '<th scope="col">Action</th>'
        '<th scope="col">User</th><th scope="col">By</th><th scope="col">Why</th><th scope="col">Details</th>'
        '</tr></thead><tbody>{rows}</tbody></table></div><p class="pager">{more}</p>',
        user=filters.get("user", ""), who=filters.get("who", ""), what=filters.get("what", ""), rows=rows,
        csv=csv_query, more=_audit_pager(entries, filters, after, partial_after))
    return page("Audit trail", main, session)


# -- the sample login page -------------------------------------------------------------------------------


def demo_login_page(*, app_name: str, csrf: str, wait_s: int) -> Markup:
    main = render(
        '<h1>Sign in to {app}</h1>'
        '<p class="hint">A sample login page: it asks pushauth for a prompt on the user\'s phone, as any '
        'login flow would, from its own server.</p>'
        '<form id="demo-form" class="stack" data-csrf="{csrf}" data-wait="{wait}">'
        '<label for="user">User name</label>'
        '<input id="user" name="user" autocomplete="username" required autofocus>'
        '<button type="submit" class="primary">Sign in</button></form>'
        '<section id="demo-prompt" hidden aria-labelledby="demo-prompt-title">'
        '<h2 id="demo-prompt-title">Approve the sign-in on your phone</h2>'
        '<p>Type this number in the app:</p><p id="demo-number" class="number"></p></section>'
        '<p id="demo-result" class="result" role="status" aria-live="assertive"></p>',
        app=app_name, csrf=csrf, wait=wait_s)
    return layout(f"Sign in to {app_name}", main, script="demo.js", section="Sample login page")
