"""The console's audit trail page: its filters, the entries, the CSV link, and the pager, which says when
a filtered read stopped at its bound before filling the page (the older part of the trail not searched).
The CSV itself is written by `pushauth/web/console/pages.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pushauth.clock import rfc3339
from pushauth.web.console.html.layout import Markup, join, json_text, page, page_link, render, when

if TYPE_CHECKING:
    from pushauth.web.console.sessions import Session


def _audit_pager(entries: list[dict[str, Any]], filters: Mapping[str, str], after: str | None,
                 scanned: int | None) -> Markup:
    """The link on to older entries; and, when the read stopped at its bound before filling the page, that
    the older part of the trail was not searched (never "No entries match" about entries not looked at)."""
    if not after:
        return Markup("") if entries else render("No entries match.")
    if scanned is None:
        return page_link("/console/audit", filters, "Older entries", before=after)
    back_to = rfc3339(int(after.split("-", 1)[0]) // 1000)
    return render(
        '<span class="partial" role="status">{found} among the {n} entries searched, back to {at}; older '
        'entries were not searched.</span> {link}',
        found=f"{len(entries)} {'entry matches' if len(entries) == 1 else 'entries match'}" if entries
        else "No entries match", n=f"{scanned:,}", at=when(back_to),
        link=page_link("/console/audit", filters, "Search older entries", before=after))


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
