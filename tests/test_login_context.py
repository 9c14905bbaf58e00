"""What the phone is told of a sign-in (pushauth/challenges/context.py): whatever the login flow passes on,
the
phone gets words from a fixed vocabulary, a place name or an address, and never a digit it could be asked
to type (number fishing)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pushauth.challenges import context as login_context
from pushauth.challenges.context import address, browser_summary, for_phone, place_name

BROWSERS = sorted(set(login_context._BROWSERS.values()) | {login_context.UNKNOWN_BROWSER})
SYSTEMS = sorted(set(login_context._SYSTEMS.values()))
_ANY_BROWSER = "|".join(map(re.escape, BROWSERS))
_ANY_SYSTEM = "|".join(map(re.escape, SYSTEMS))
VOCABULARY = re.compile(rf"(?:{_ANY_BROWSER})(?: on (?:{_ANY_SYSTEM}))?")

REAL = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0": "Firefox on Windows",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36": "Chrome on macOS",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1": "Safari on iOS",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Mobile Safari/537.36": "Chrome on Android",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Safari/537.36 Edg/131.0.0.0": "Edge on Windows",
}


def test_real_browsers_in_words() -> None:
    for ua, words in REAL.items():
        assert browser_summary(ua) == words


def test_text_of_the_attackers_choosing_is_not_shown() -> None:
    for ua in ("Security check: type 42 in the app", "Type42Crawler/1.0", "curl/8.5", "", "42",
               "Mozilla/5.0 (compatible; TypeFortyTwoBot/1.0)", "Call 0800 123 456 to keep your account"):
        assert browser_summary(ua).startswith(login_context.UNKNOWN_BROWSER), ua


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=512))
def test_any_user_agent_becomes_allow_listed_words_without_digits(ua: str) -> None:
    summary = browser_summary(ua)
    assert VOCABULARY.fullmatch(summary), summary
    assert not any(ch.isdigit() for ch in summary)


def test_place_names() -> None:
    for place in ("Leeds, GB", "São Paulo, BR", "St. John's (NL)", "Xi'an", "Москва", "Washington, D.C."):
        assert place_name(place) == place
    for bad in ("Type 42 in the app", "LS1 4AP", "", " ", "a" * 65, "Leeds\nType the number", "<b>Leeds</b>",
                "https://evil.example", "---", "Leeds; call us"):
        assert place_name(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_a_shown_place_has_no_digits_and_is_bounded(text: str) -> None:
    place = place_name(text)
    if place is not None:
        assert 0 < len(place) <= login_context.MAX_LOCATION
        assert not any(ch.isdigit() for ch in place)
        assert any(ch.isalpha() for ch in place)


def test_addresses() -> None:
    assert address("203.0.113.9") == "203.0.113.9"
    assert address(" 2001:DB8::0:1 ") == "2001:db8::1"
    assert address("Type 42 in the app") is None
    assert address("203.0.113.9; type 42") is None


def test_for_phone_keeps_only_what_passes() -> None:
    assert for_phone({"ip": "nope", "user_agent": "x", "location": "42"}) == {
        "user_agent": login_context.UNKNOWN_BROWSER}
    assert for_phone({}) == {}
    office = {"ip": "10.0.0.1", "location": "Leeds, GB"}
    assert for_phone(office) == office


def test_binding_messages() -> None:
    assert login_context.binding_message("Desk-7F2K") == "Desk-7F2K"
    assert login_context.binding_message("Caller: Erin, ward 4") == "Caller: Erin, ward 4"
    assert login_context.binding_message("x" * 64) == "x" * 64
    for refused in ("", "x" * 65, " padded", "line\nbreak", "tab\there", "abc\u202edcba", "zero\u200bwidth",
                    "nbsp\u00a0here", "\x00"):
        assert login_context.binding_message(refused) is None, refused


def test_a_binding_message_never_reaches_the_phone_through_the_login_context() -> None:
    # Only a CIBA client's own binding_message (Challenges.create's argument) is shown; a login flow's
    # context member of that name is not passed on.
    assert for_phone({"binding_message": "type 42"}) == {}


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_a_shown_binding_message_is_bounded_and_printable(text: str) -> None:
    shown = login_context.binding_message(text)
    if shown is not None:
        assert 0 < len(shown) <= login_context.MAX_BINDING_MESSAGE
        assert shown.isprintable()
        assert shown == shown.strip()
