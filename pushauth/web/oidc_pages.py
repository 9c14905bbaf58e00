"""The provider's pages: sign in, the number while the phone decides, and what happened.

No script at all. The number page waits for the phone with a plain navigation: it refreshes itself after a
second (`<meta http-equiv="refresh" content="1; url=...&poll=1">`), and the server holds that request (a
long-poll of up to 25 s) until the phone answers; meanwhile the browser keeps showing the number. One
request per 25 s per waiting browser, no polling storm, and nothing for the Content-Security-Policy to
allow (`script-src 'none'`). Every value is escaped (pushauth/web/console/html/layout.py's `render`).
"""

from __future__ import annotations

from aiohttp import web

from pushauth.web.console.html.layout import SECURITY_HEADERS, STATIC, Markup, render

# The console's policy, with no script at all and forms posting only here.
CSP = ("default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": CSP}


def _layout(title: str, main: Markup, *, refresh: str | None = None) -> Markup:
    # One second before the long-poll starts: the number is on screen, readable, before the browser begins
    # a navigation (while one is pending, some tools, assistive ones among them, see no document).
    head_extra = (render('<meta http-equiv="refresh" content="1; url={url}">', url=refresh)
                  if refresh else Markup(""))
    return render(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">{extra}'
        '<title>{title} - pushauth</title><link rel="stylesheet" href="{static}console.css"></head>'
        '<body><header><p class="brand">pushauth sign-in</p></header>'
        '<main id="main">{main}</main></body></html>\n',
        title=title, extra=head_extra, static=STATIC, main=main)


def respond(body: Markup, *, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)


def signin(app_name: str, signin_id: str, csrf: str, *, user: str = "", password: bool = True,
           error: str | None = None) -> Markup:
    fields = render(
        '<label for="user">User name</label>'
        '<input id="user" name="user" autocomplete="username" required value="{user}" {focus_user}>',
        user=user, focus_user=Markup("" if user else "autofocus"))
    if password:
        fields = Markup(fields + render(
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password" required '
            '{focus}>', focus=Markup("autofocus" if user else "")))
    main = render(
        '<h1>Sign in to {app}</h1>{error}'
        '<form method="post" action="/oidc/signin" class="stack">'
        '<input type="hidden" name="signin" value="{signin_id}">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '{fields}<button type="submit">Continue</button></form>'
        '<p class="hint">You will approve the sign-in on your phone.</p>',
        app=app_name, signin_id=signin_id, csrf=csrf, fields=fields,
        error=render('<p class="error" role="alert">{e}</p>', e=error) if error else Markup(""))
    return _layout("Sign in", main)


def number(app_name: str, number_text: str, poll_url: str, *, code_url: str | None = None) -> Markup:
    page = _number(app_name, number_text)
    if code_url:  # offline codes (pushauth/web/oidc_codes.py): for a phone with no signal
        page = Markup(page + render('<p class="hint"><a href="{url}">No signal on your phone? Use a code '
                                    'instead</a></p>', url=code_url))
    return _layout("Approve on your phone", page, refresh=poll_url)


def code_form(app_name: str, signin_id: str, csrf: str, *, error: str | None = None) -> Markup:
    """"Use a code": the one-time code from the phone's offline codes, an authenticator app or a token."""
    main = render(
        '<h1>Sign in to {app} with a code</h1>{error}'
        '<form method="post" action="/oidc/code" class="stack">'
        '<input type="hidden" name="signin" value="{signin_id}">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<label for="code">Code</label>'
        '<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" '
        'pattern="[0-9 ]{{6,9}}" maxlength="9" required autofocus>'
        '<button type="submit">Sign in</button></form>'
        '<p class="hint">The 6-digit code from the pushauth app (offline codes), your authenticator app or '
        'your token.</p>',
        app=app_name, signin_id=signin_id, csrf=csrf,
        error=render('<p class="error" role="alert">{e}</p>', e=error) if error else Markup(""))
    return _layout("Sign in with a code", main)


def _number(app_name: str, number_text: str) -> Markup:
    if number_text:
        main = render(
            '<h1>Approve on your phone</h1><p>Open the pushauth app and enter this number to sign in to '
            '{app}:</p><p class="number" aria-live="polite"><strong>{number}</strong></p>'
            '<p class="hint">This page moves on by itself once you have answered.</p>',
            app=app_name, number=number_text)
    else:
        main = render('<h1>Approve on your phone</h1><p>Open the pushauth app and approve the sign-in to '
                      '{app}.</p><p class="hint">This page moves on by itself once you have answered.</p>',
                      app=app_name)
    return main


def message(title: str, text: str, *, back: str | None = None) -> Markup:
    link = render('<p><a href="{back}">Back to the application</a></p>', back=back) if back else Markup("")
    return _layout(title, render('<h1>{title}</h1><p role="alert">{text}</p>{link}', title=title, text=text,
                                 link=link))


def form_post(action: str, fields: dict[str, str]) -> Markup:
    """OAuth 2.0 Form Post Response Mode: the answer as a form the browser posts to the client. A one-line
    script (console_static/form-post.js) submits it; without script, the button does."""
    inputs = Markup("".join(render('<input type="hidden" name="{name}" value="{value}">', name=k, value=v)
                            for k, v in fields.items()))
    main = render('<h1>Signing you in</h1><form method="post" action="{action}" id="form-post">{inputs}'
                  '<button type="submit">Continue</button></form>', action=action, inputs=inputs)
    return render(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<title>Signing you in - pushauth</title><link rel="stylesheet" href="{static}console.css">'
        '<script src="{static}form-post.js" defer></script>'
        '</head><body><main id="main">{main}</main></body></html>\n', static=STATIC, main=main)


def respond_form_post(body: Markup, action_origin: str) -> web.Response:
    """The form-post page may run our one script and post to the client's origin, nothing else."""
    csp = (f"default-src 'none'; script-src 'self'; style-src 'self'; form-action {action_origin}; "
           "frame-ancestors 'none'; base-uri 'none'")
    return web.Response(text=body, content_type="text/html", charset="utf-8",
                        headers={**HEADERS, "Content-Security-Policy": csp})

