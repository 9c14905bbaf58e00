"""The console accounts page (owners only): who may sign in to the console, with which role, set by whom,
and the form that adds or changes one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pushauth.operators import ROLES
from pushauth.web.console.html.layout import Markup, join, notice, options, page, path_part, render, when

if TYPE_CHECKING:
    from pushauth.web.console.sessions import Session


def accounts_page(accounts: list[dict[str, Any]], *, session: Session, done: str | None) -> Markup:
    roles = options(((r, r.replace("_", " ")) for r in ROLES), "viewer")
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
