"""What the phone is told about a sign-in, from what the login flow said about it.

The login flow's `context` (`ip`, `user_agent`, `location`) is passed on from the browser that is signing
in, which may be the attacker's. Shown verbatim on the phone it is a channel from the attacker to the
victim: a User-Agent of "Security check: type 42 in the app" was shown, the victim typed 42 and approved
(number fishing, issue 14). So the phone never receives free text from the login flow:

    user_agent  -> a summary in a fixed vocabulary ("Firefox on Windows"), from ua-parser (the maintained
                   uap-core rules; browser and system rules only, on its Rust matcher: ~8 us a new string,
                   +18 MiB per process, and an LRU cache in front), with browser and system families on an
                   allow-list: a family the rules take from the string itself ("a Type42Crawler") is shown
                   as "an unrecognised browser". No version numbers: a number is exactly what must never
                   reach the phone from outside.
    location    -> shown only if it is a place name: letters, marks, spaces and , . ' ’ - ( ) /, at most 64
                   characters, no digits. Otherwise the phone gets no location (the login flow is not
                   refused: v1 login flows keep working; PROTOCOL.md 8.2 says so).
    ip          -> shown only if it is an IP address, in its normal form.

One member is text, and shown as such: a CIBA `binding_message` (OpenID CIBA Core 7.1), which the
requesting client (an authenticated OpenID client, or a Keycloak realm for its client) shows the user on its
side too, so that the two screens can be matched. It never comes from the browser signing in, and the client
that writes it is the one that is told the number, so it cannot fish for a number it does not already know.
It is still bounded (`binding_message`): at most 64 printable characters, none of them a control, format
(bidirectional overrides) or line-breaking character; anything else is refused with the request.

The security team's evidence keeps what the login flow sent (escaped wherever it is shown); only the phone's
copy is reduced. The application's name on the phone is the configured one (`[[applications]] name`).
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata
from collections.abc import Mapping
from typing import Final

import ua_parser
from ua_parser.loaders import load_builtins

MAX_LOCATION = 64
MAX_BINDING_MESSAGE = 64
_LOCATION_PUNCTUATION: Final = frozenset(" ,.'’-()/")

# ua-parser family -> what the phone shows. Anything not here is "an unrecognised browser".
_BROWSERS: Final = {
    "Chrome": "Chrome", "Chrome Mobile": "Chrome", "Chrome Mobile iOS": "Chrome", "Chromium": "Chromium",
    "Chrome Mobile WebView": "an in-app browser",
    "HeadlessChrome": "Chrome (headless)", "Firefox": "Firefox", "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox", "Safari": "Safari", "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "an in-app browser", "Edge": "Edge", "Edge Mobile": "Edge",
    "Opera": "Opera", "Opera Mobile": "Opera", "Samsung Internet": "Samsung Internet",
    "IE": "Internet Explorer", "Yandex Browser": "Yandex Browser", "Vivaldi": "Vivaldi", "Brave": "Brave",
    "UC Browser": "UC Browser", "Silk": "Silk", "Electron": "a desktop app", "Thunderbird": "Thunderbird",
    "Outlook": "Outlook",
}
_SYSTEMS: Final = {
    "Windows": "Windows", "Mac OS X": "macOS", "iOS": "iOS", "Android": "Android", "Linux": "Linux",
    "Ubuntu": "Linux", "Fedora": "Linux", "Debian": "Linux", "Chrome OS": "ChromeOS",
    "Windows Phone": "Windows Phone",
}
UNKNOWN_BROWSER = "an unrecognised browser"


@functools.cache
def _parser() -> ua_parser.Parser:
    """Browser and system rules only: the device rules are two thirds of uap-core and say nothing shown
    here. The Rust matcher (ua-parser-rs) when installed, else the pure-Python one."""
    user_agents, systems, _devices = load_builtins()
    try:
        from ua_parser import regex  # the Rust matcher
        return ua_parser.Parser(regex.Resolver((user_agents, systems, [])))
    except ImportError:
        from ua_parser import basic
        return ua_parser.Parser(basic.Resolver((user_agents, systems, [])))


@functools.lru_cache(maxsize=4096)
def browser_summary(user_agent: str) -> str:
    """"Firefox on Windows": a phrase made only of allow-listed words."""
    parsed = _parser().parse(user_agent)
    family = parsed.user_agent.family if parsed.user_agent is not None else ""
    system = parsed.os.family if parsed.os is not None else ""
    browser = _BROWSERS.get(family, UNKNOWN_BROWSER)
    return f"{browser} on {_SYSTEMS[system]}" if system in _SYSTEMS else browser


def place_name(location: str) -> str | None:
    """`location` if it is a bounded place name (see the module docstring), else None."""
    text = unicodedata.normalize("NFC", location).strip()
    if not 0 < len(text) <= MAX_LOCATION:
        return None
    has_letter = False
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "L":
            has_letter = True
        elif category[0] != "M" and ch not in _LOCATION_PUNCTUATION:
            return None
    return text if has_letter else None


def binding_message(text: str) -> str | None:
    """`text` (NFC) if it may be shown on the phone as a binding message, else None."""
    text = unicodedata.normalize("NFC", text)
    # str.isprintable is False for every Cc, Cf (U+202E and the other bidi controls), Zl, Zp, unassigned
    # and private-use character, and for every space but U+0020.
    if not 0 < len(text) <= MAX_BINDING_MESSAGE or not text.isprintable() or text != text.strip():
        return None
    return text


def address(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        return None


def for_phone(context: Mapping[str, str]) -> dict[str, str]:
    """The phone's copy of a login context: only members that pass (see the module docstring)."""
    out: dict[str, str] = {}
    if context.get("ip") and (ip := address(context["ip"])):
        out["ip"] = ip
    if context.get("user_agent"):
        out["user_agent"] = browser_summary(context["user_agent"])
    if context.get("location") and (place := place_name(context["location"])):
        out["location"] = place
    return out


def warm_up() -> None:
    """ua-parser compiles its rules when the parser is made (~0.1 s): at start-up, not in a sign-in."""
    _parser()
