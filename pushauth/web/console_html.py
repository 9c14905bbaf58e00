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
from typing import Any
from urllib.parse import quote

from aiohttp import web

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
           script: str = "console.js", section: str = "pushauth console") -> Markup:
    nav = Markup("")
    if csrf is not None:
        nav = render(
            '<nav aria-label="Console"><ul>'
            '<li><a href="/console">Alerts</a></li><li><a href="/console/users">Users</a></li></ul>'
            '<form method="post" action="/console/logout" class="inline">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<span class="who">Signed in as {who}</span> <button type="submit">Sign out</button>'
            '</form></nav>',
            csrf=csrf, who=who or "")
    return render(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} - {section}</title>'
        '<link rel="stylesheet" href="{static}console.css">'
        '<script src="{static}{script}" defer></script></head>'
        '<body><a class="skip" href="#main">Skip to content</a>'
        '<header><p class="brand">{section}</p>{nav}</header>'
        '<main id="main" tabindex="-1">{main}</main></body></html>\n',
        title=title, section=section, static=STATIC, script=script, nav=nav, main=main)


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
        '<form id="login-form" method="post" action="/console/login" class="stack">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="off" required autofocus>'
        '<button type="submit">Sign in</button></form>'
        '<p class="hint">An admin token of this server (<code>pushauth admin new-token</code>).</p>',
        error=error or "", hidden=Markup("") if error else Markup("hidden"))
    return layout("Sign in", main)


def severity_badge(severity: str) -> Markup:
    return render('<span class="badge sev-{sev}">{label}</span>', sev=severity, label=severity.upper())


def feed_item(alert: Mapping[str, Any]) -> Markup:
    """One alert in the feed; console.js builds the same markup for alerts that arrive live."""
    return render(
        '<li id="alert-{id}" class="alert sev-{sev}" data-version="{version}">'
        '<a href="/console/alerts/{id}">{badge} <span class="kind">{kind}</span> '
        '<span class="user">{user}</span> <span class="count">{count} event(s)</span> '
        '<time datetime="{updated}">{updated}</time>{escalated}</a></li>',
        escalated=Markup(' <span class="escalated">ESCALATED</span>') if alert.get("version", 1) > 1 else "",
        id=alert["id"], sev=alert["severity"], version=alert.get("version", 1),
        badge=severity_badge(str(alert["severity"])), kind=alert["kind"], user=alert["user"],
        count=alert.get("evidence", {}).get("event_count", alert.get("event_count", 0)),
        updated=alert.get("updated_at") or alert["created_at"])


def feed_page(alerts: list[dict[str, Any]], *, since: str, csrf: str, who: str,
              done: str | None) -> Markup:
    main = render(
        '<h1>Open alerts</h1>{notice}'
        '<p id="feed-status" class="hint" role="status">Live updates start when the page has loaded.</p>'
        '<p id="feed-empty" {hidden}>No open alerts.</p>'
        '<ol id="feed" class="feed" aria-live="polite" aria-relevant="additions text" '
        'data-events="/console/events?since={since}">{items}</ol>',
        notice=notice(done), hidden=Markup("hidden") if alerts else Markup(""), since=since,
        items=join(feed_item(a) for a in alerts))
    return layout("Open alerts", main, csrf=csrf, who=who)


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
        '<tr><th scope="row">{badge} {kind}</th><td><time datetime="{at}">{at}</time></td><td>{app}</td>'
        '<td>{ip}</td><td>{location}</td><td class="ua">{ua}</td><td>{phone_ip}</td><td>{answer}</td>'
        '<td><code>{cid}</code>{extra}</td></tr>',
        badge=severity_badge(str(event.get("severity", "info"))), kind=event.get("kind", "-"),
        at=event.get("at", "-"), app=event.get("app") or "-", ip=login.get("ip") or "-",
        location=login.get("location") or "-", ua=login.get("user_agent") or "-",
        phone_ip=event.get("phone_ip") or "-", answer=answer, cid=event.get("challenge_id") or "-",
        extra=render(" <span class=\"hint\">{e}</span>", e=extra) if extra else Markup(""))


def alert_page(alert: Mapping[str, Any], *, csrf: str, who: str) -> Markup:
    evidence = alert.get("evidence", {})
    events = evidence.get("events", [])
    contained = evidence.get("containment", [])
    user_link = render('<a href="/console/users/{u}">{user}</a>', u=path_part(alert["user"]),
                       user=alert["user"])
    facts = _dl([("Severity", severity_badge(alert["severity"])), ("Kind", alert["kind"]),
                 ("User", user_link),
                 ("Status", alert["status"] + (f" by {alert.get('acked_by')} at {alert.get('acked_at')}"
                                               if alert["status"] == "acked" else "")),
                 ("Raised", alert["created_at"]), ("Updated", alert.get("updated_at")),
                 ("Events", evidence.get("event_count")), ("Challenge", alert.get("challenge_id")),
                 ("Device", alert.get("device_id"))])
    table = render(
        '<table><caption>Evidence, oldest first</caption><thead><tr><th scope="col">Event</th>'
        '<th scope="col">Time</th><th scope="col">Application</th><th scope="col">Login IP</th>'
        '<th scope="col">Location</th><th scope="col">Browser</th><th scope="col">Phone IP</th>'
        '<th scope="col">Answer</th><th scope="col">Challenge</th></tr></thead><tbody>{rows}</tbody></table>',
        rows=join(_event_row(e) for e in events if isinstance(e, dict)))
    actions = (join(render('<li>{action} <time datetime="{at}">{at}</time></li>', action=c.get("action", "-"),
                           at=c.get("at", "-")) for c in contained if isinstance(c, dict))
               or render("<li>None</li>"))
    ack = Markup("")
    if alert["status"] == "open":
        ack = render('<form method="post" action="/console/alerts/{id}/ack">'
                     '<input type="hidden" name="csrf" value="{csrf}">'
                     '<button type="submit" class="primary">Acknowledge</button></form>',
                     id=alert["id"], csrf=csrf)
    main = render(
        '<h1>{badge} {kind}: {user}</h1>{facts}{ack}<h2>Containment</h2><ul class="contained">{actions}</ul>'
        '<h2>Evidence</h2><div class="scroll">{table}</div>'
        '<p><a href="/console/users/{u}">Look up {user}</a> (unlock, lift a suspension, revoke a phone)</p>',
        badge=severity_badge(alert["severity"]), kind=alert["kind"], user=alert["user"], facts=facts, ack=ack,
        actions=actions, table=table, u=path_part(alert["user"]))
    return layout(f"Alert {alert['kind']}", main, csrf=csrf, who=who)


def user_search_page(*, csrf: str, who: str, query: str = "", error: str | None = None) -> Markup:
    main = render(
        '<h1>Look up a user</h1>{error}'
        '<form method="get" action="/console/users" class="stack" role="search">'
        '<label for="user">User name</label><input id="user" name="user" value="{q}" required autofocus>'
        '<button type="submit">Look up</button></form>',
        error=render('<p class="error" role="alert">{e}</p>', e=error) if error else Markup(""), q=query)
    return layout("Look up a user", main, csrf=csrf, who=who)


def _action(user: str, path: str, label: str, csrf: str, *, extra: str = "",
            primary: bool = False) -> Markup:
    return render('<form method="post" action="/console/users/{u}/{path}" class="inline">'
                  '<input type="hidden" name="csrf" value="{csrf}">{extra}'
                  '<button type="submit"{cls}>{label}</button></form>',
                  u=path_part(user), path=path, csrf=csrf, extra=Markup(extra), label=label,
                  cls=Markup(' class="primary"') if primary else Markup(""))


def _state(view: Mapping[str, Any], what: str) -> str:
    """'no', or since when, why and until when the account is locked / its prompts suspended."""
    if not view[what]:
        return "no"
    until = view.get(f"{what}_until")
    return (f"yes, since {view.get(f'{what}_at')} ({view.get(f'{what}_reason') or '-'})"
            + (f", until {until}" if until else ""))


def _challenge_row(c: Mapping[str, Any]) -> Markup:
    ctx: Mapping[str, Any] = c["context"] if isinstance(c.get("context"), dict) else {}
    status = (str(c.get("status")) + (f" ({c['reason']})" if c.get("reason") else "")
              + (f", revoked ({c['revoked']})" if c.get("revoked") else ""))
    return render(
        '<tr><td><time datetime="{at}">{at}</time></td><td>{app}</td><td>{status}</td><td>{ip}</td>'
        '<td>{location}</td><td class="ua">{ua}</td><td>{phone_ip}</td></tr>',
        at=c.get("created_at") or "-", app=c.get("app") or "-", status=status, ip=ctx.get("ip") or "-",
        location=ctx.get("location") or "-", ua=ctx.get("user_agent") or "-",
        phone_ip=c.get("phone_ip") or "-")


def user_page(view: Mapping[str, Any], *, csrf: str, who: str, done: str | None) -> Markup:
    user = str(view["user"])
    facts = _dl([("Locked", _state(view, "locked")), ("Prompts suspended", _state(view, "suspended")),
                 ("Consecutive failures", view.get("consecutive_failures")),
                 ("Account policy", view.get("policy") or "normal"),
                 ("Prompts paused by the user until", view.get("paused_until")),
                 ("Remembered browsers", len(view.get("remembered_browsers") or []))])
    actions: list[Markup] = []
    if view["locked"]:
        actions.append(_action(user, "unlock", "Unlock", csrf, primary=True,
                               extra='<input type="hidden" name="what" value="lock">'))
    if view["suspended"]:
        actions.append(_action(user, "unlock", "Lift the suspension", csrf, primary=True,
                               extra='<input type="hidden" name="what" value="suspension">'))
    blocks = view.get("blocks") or []
    if not (view["locked"] or view["suspended"]) and any(
            b.get("kind") in ("push_bombing", "access_code_attempts") for b in blocks):
        # unlock also ends the push-bombing and wrong-code windows (pushauth/accounts/service.py)
        actions.append(_action(user, "unlock", "Let the user back in now", csrf, primary=True,
                               extra='<input type="hidden" name="what" value="all">'))
    if not view["locked"]:
        actions.append(_action(user, "lock", "Lock the account", csrf))
    actions.append(_action(user, "access-code", "Issue an access code", csrf))
    pending = [{**d, "status": "waiting for approval", "push": None} for d in view.get("pending_devices", [])]
    devices = join(render(
        '<tr><th scope="row">{name}</th><td>{platform}</td><td>{status}</td><td>{push}</td><td>{created}</td>'
        '<td>{ip}</td><td><code>{id}</code></td><td>{revoke}</td></tr>',
        name=d.get("name") or "-", platform=d.get("platform") or "-", status=d.get("status") or "-",
        push=f"{d['push']['provider']} ({d['push']['state']})" if d.get("push") else "-",
        created=d.get("created_at") or "-", ip=d.get("enrolled_from_ip") or "-", id=d["id"],
        revoke=_action(user, f"devices/{path_part(d['id'])}/revoke", "Revoke", csrf)
        if d.get("status") in ("active", "waiting for approval") else Markup("-"))
        for d in [*view.get("devices", []), *pending])
    block_items = join(render(
        '<li><strong>{kind}</strong> since <time datetime="{since}">{since}</time>, {until} ({reason})</li>',
        kind=_BLOCK_WORDS.get(str(b.get("kind")), str(b.get("kind"))), since=b.get("since") or "-",
        until=f"until {b['until']}" if b.get("until") else "until the security team acts",
        reason=b.get("reason") or "-") for b in blocks) or render("<li>None: the user can sign in</li>")
    recent = join(_challenge_row(c) for c in view.get("recent_challenges", []))
    alerts = join(render('<li><a href="/console/alerts/{id}">{id}</a></li>', id=a)
                  for a in view.get("open_alerts", [])) or render("<li>None</li>")
    main = render(
        '<h1>{user}</h1>{notice}{facts}<h2>What stops this user signing in</h2>'
        '<ul class="blocks">{blocks}</ul><h2>Actions</h2><div class="actions">{actions}</div>'
        '<h2>Devices</h2><div class="scroll"><table><thead><tr><th scope="col">Name</th>'
        '<th scope="col">Platform</th><th scope="col">Status</th><th scope="col">Push</th>'
        '<th scope="col">Enrolled</th><th scope="col">Enrolled from</th><th scope="col">Id</th>'
        '<th scope="col">Action</th></tr></thead><tbody>{devices}</tbody></table></div>'
        '<h2>Recent sign-in prompts</h2><div class="scroll"><table><thead><tr><th scope="col">Time</th>'
        '<th scope="col">Application</th><th scope="col">Answer</th><th scope="col">Login IP</th>'
        '<th scope="col">Location</th><th scope="col">Browser</th><th scope="col">Phone IP</th></tr></thead>'
        '<tbody>{recent}</tbody></table></div><h2>Open alerts</h2><ul>{alerts}</ul>',
        user=user, notice=notice(done), facts=facts, actions=join(actions), devices=devices, recent=recent,
        alerts=alerts, blocks=block_items)
    return layout(user, main, csrf=csrf, who=who)


_BLOCK_WORDS = {"locked": "Locked", "suspended": "Prompts suspended", "paused": "Paused by the user's phone",
                "push_bombing": "Too many prompts (push-bombing limit)",
                "access_code_attempts": "Too many wrong access codes"}


def access_code_page(user: str, code: str, expires_at: str, *, csrf: str, who: str) -> Markup:
    main = render(
        '<h1>Access code for {user}</h1>'
        '<p>Read this code to the user. It is shown only once, works once, and expires at '
        '<time datetime="{exp}">{exp}</time>.</p><p class="code" id="access-code">{code}</p>'
        '<p><a href="/console/users/{u}">Back to {user}</a></p>',
        user=user, exp=expires_at, code=code, u=path_part(user))
    return layout("Access code", main, csrf=csrf, who=who)


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
