"""User-name canonicalisation is idempotent (issue 14, item 5): the name an alert shows is the name the
security team can open, lock and search by.

`canonical(canonical(x)) == canonical(x)` for every name `canonical` accepts, over the whole of Unicode
(hypothesis), over every code point whose NFKC begins or ends with white space (all of them, exhaustively:
where the old order, strip before NFKC, went wrong), and over HTTP against a real server and Redis.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import AdminClient, LoginFlow, RunningServer, assert_error

from pushauth.accounts import users
from pushauth.accounts.users import canonical
from pushauth.errors import Unprocessable
from pushauth.phone import Phone

# The examples: ACUTE ACCENT, DIAERESIS, SMALL TILDE (each U+0020 and a combining mark under NFKC).
REPORTED = ("\u00b4", "\u00a8", "\u02dc")


@functools.cache
def spacing_code_points() -> tuple[str, ...]:
    """Every code point, white space excepted, whose NFKC (or NFKC of its case folding) begins or ends with
    white space: a name that begins or ends with one of them is where stripping before normalising broke."""
    found = []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch.isspace() or 0xD800 <= cp <= 0xDFFF:
            continue
        for form in (unicodedata.normalize("NFKC", ch), unicodedata.normalize("NFKC", ch).casefold()):
            if form and (form[0].isspace() or form[-1].isspace()):
                found.append(ch)
                break
    return tuple(found)


def stable_or_refused(name: str) -> str | None:
    """The property: `canonical` refuses `name` with invalid_user, or its result is a fixed point that it
    accepts. Returns the canonical form (None when refused)."""
    try:
        once = canonical(name)
    except Unprocessable as exc:
        refused = exc.code
    else:
        assert canonical(once) == once, (name, once, canonical(once))
        return once
    assert refused == "invalid_user", (name, refused)
    return None


@pytest.mark.parametrize("accent", REPORTED)
def test_the_reported_accents_are_stable(accent: str) -> None:
    once = canonical(accent + "Alice@NHS.net")
    assert once == unicodedata.normalize("NFKC", accent).strip() + "alice@nhs.net"
    assert canonical(once) == once


def test_every_code_point_that_normalises_to_white_space_at_an_end() -> None:
    spacing = spacing_code_points()
    assert set(REPORTED) <= set(spacing)
    assert len(spacing) >= 50  # the issue counted about fifty
    for ch in spacing:
        for name in (ch, ch + "alice", "alice" + ch, ch + "alice" + ch, " " + ch + ch + " ", ch + "\u0301x"):
            stable_or_refused(name)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=40))  # every code point, Cs too
@example("\u00b4alice@nhs.net")
@example("\u037a")  # GREEK YPOGEGRAMMENI: U+0020 U+0345, and U+0345 case-folds to iota
@example("\u1fbf\u0301")
def test_canonical_is_idempotent_over_all_of_unicode(name: str) -> None:
    stable_or_refused(name)


def _targeted() -> st.SearchStrategy[str]:
    """Names built from the code points that meet at the edges: the spacing ones, combining marks (which
    compose with whatever ends up before them), white space, and ordinary letters."""
    spacing = st.sampled_from(spacing_code_points())
    marks = st.characters(categories=["Mn", "Mc", "Me"])
    spaces = st.sampled_from([" ", "\t", "\u00a0", "\u2000", "\u3000", "\u1680", "\u2028", "\u0085"])
    letters = st.sampled_from("aAzZßİıΣσςǰΐ\u0345\u1e9e")
    return st.lists(st.one_of(spacing, marks, spaces, letters), min_size=1, max_size=12).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_targeted())
def test_canonical_is_idempotent_where_normalising_makes_white_space(name: str) -> None:
    stable_or_refused(name)


def test_a_name_without_a_stable_form_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No name is known to change on a second pass with Python 3.11's Unicode 14 tables; a later table could
    make one. Folding made unstable on purpose, such a name is refused rather than stored."""
    monkeypatch.setattr(users, "_fold", lambda name: name.strip() + "!")
    with pytest.raises(Unprocessable) as refused:
        canonical("alice@nhs.net")
    assert refused.value.code == "invalid_user"
    assert refused.value.message == "user has no stable canonical form"


async def test_the_security_team_opens_the_user_an_alert_names(
        server: RunningServer, login: LoginFlow, http: aiohttp.ClientSession) -> None:
    """A user enrolled as "´alice@nhs.net" says "not me": the alert names the user, and that name opens,
    searches, locks and unlocks the user, as the name typed by the login flow does."""
    typed = "\u00b4Alice@NHS.net"
    phone = await Phone.enroll(await login.enroll_uri(typed), session=http)
    assert phone.user == canonical(typed)
    created = await login.create(typed)
    assert await phone.deny(created["id"], reason="not_me") == "denied"
    admin = AdminClient(http, server.url)
    [alert] = await admin.alerts()
    shown = alert["user"]
    assert shown == "\u0301alice@nhs.net"
    path = quote(shown, safe="")
    assert [a["id"] for a in await admin.alerts(user=path)] == [alert["id"]]
    seen = await admin.user(path)
    assert [d["id"] for d in seen["devices"]] == [phone.device_id]
    assert [c["id"] for c in seen["recent_challenges"]] == [created["id"]]
    status, body = await admin.call("POST", f"/v1/users/{path}/lock")
    assert status == 200, body
    assert (await admin.user(path))["locked"]
    status, body = await login.call("POST", "/v1/challenges", {"user": shown})
    assert_error(status, body, 403, "locked")
    status, body = await admin.call("POST", f"/v1/users/{path}/unlock", {"what": "all"})
    assert status == 200, body
    assert (await login.create(typed))["id"]
    whats = [e["what"] for e in await admin.audit(path)]
    assert {"device_enrolled", "locked", "refused", "unlocked"} <= set(whats), whats
