"""A user on the console: the user search (and that it stopped short, when it did), a user's page (what
stops them signing in, their devices, one-time-code methods, recent prompts, open alerts, and the actions
the viewer's role allows), and what the service desk hands a user: a temporary access code, a new phone's
enrollment QR code, an authenticator app's seed and the form that activates it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pushauth.web.console.html.alerts import alert_title
from pushauth.web.console.html.layout import (
    Markup,
    dl,
    join,
    notice,
    page,
    path_part,
    render,
    severity_badge,
    when,
)

if TYPE_CHECKING:
    from pushauth.web.console.sessions import Session


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
    facts = dl([("Locked", _state(view, "locked")), ("Prompts suspended", _state(view, "suspended")),
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
