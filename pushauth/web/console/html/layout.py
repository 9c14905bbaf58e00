"""The shell every console page shares, and its safety: the headers each page carries (a
Content-Security-Policy with no inline script or style, no caching), escaping, the page layout and its
navigation, notices, error pages, and the small pieces the pages share (times, severity badges, fact
lists, select options, pager links). The OpenID Provider's pages and the sample login page use it too.

Safe by default: `render(template, **values)` escapes every value with `html.escape` unless it is `Markup`
that these modules built from their own constant templates. User names, user agents and locations come
from attackers (a login flow passes on whatever a browser claimed), so no value is ever trusted to be
plain text. Behaviour and looks come from the static files in console_static/, and data for the scripts
from `data-*` attributes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from aiohttp import web

from pushauth.operators import may

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


# -- pieces the pages share ----------------------------------------------------------------------------


def severity_badge(severity: str) -> Markup:
    return render('<span class="badge sev-{sev}">{label}</span>', sev=severity, label=severity.upper())


def when(at: object) -> Markup:
    """A time: UTC in the markup (and on hover), shown in the viewer's own zone by console.js."""
    if not at or at == "-":
        return Markup("-")
    return render('<time datetime="{at}" title="{at}">{at}</time>', at=at)


def json_text(value: object) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) if isinstance(value, dict) else str(value)


def dl(rows: Iterable[tuple[str, object]]) -> Markup:
    return render('<dl class="facts">{rows}</dl>', rows=join(
        render("<dt>{k}</dt><dd>{v}</dd>", k=k, v=v if v not in (None, "") else "-") for k, v in rows))


def options(choices: Iterable[tuple[str, str]], chosen: str) -> Markup:
    return join(render('<option value="{v}"{sel}>{label}</option>', v=v, label=label,
                       sel=Markup(" selected") if v == chosen else Markup(""))
                for v, label in choices)


def page_link(path: str, filters: Mapping[str, str], label: str, **changes: object) -> Markup:
    query = {k: v for k, v in filters.items() if k not in ("start", "before", "done") and v}
    query.update({k: str(v) for k, v in changes.items()})
    return render('<a href="{path}?{q}" rel="next">{label}</a>', path=path, q=urlencode(query), label=label)
