"""The console's sign-in page: a push to the person's own phone (their console account), or an admin
token (for the first owner, before any console account exists)."""

from __future__ import annotations

from pushauth.web.console.html.layout import Markup, layout, render


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
