"""Sign-in policy: when the login flow needs a prompt at all, as an organisation like NHSmail states it to
its staff (its MFA FAQ, quoted in docs/nhsmail-mfa-faq.md). Each FAQ answer is one setting here:

    "asked each time you log in from a different device or browser"  remembered browsers
        (`remember_days`; the token is bound to user, application and the browser id the login flow sends)
    "do not set up MFA on a shared mailbox"                           shared accounts: enrollment refused,
                                                                      sign-in allowed without a prompt
    service and break-glass accounts                                  exempt accounts
    "from 30 June 2024 you will need to use MFA"                      enforcement dates (per application
                                                                      or group of users): before it, a user
                                                                      without a phone is allowed ("grace")
    "don't have access to a mobile device? contact your Service Desk" temporary access codes
    "my account is locked out"                                        the admin API's unlock

Every decision is written to the audit trail (pushauth/audit.py) and named in the login flow's response
(`reason`). Account flags set through the admin API (exempt, shared) live in the user's hash; patterns
here match canonical user names (shell-style: `*` and `?`).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Mapping

import msgspec


class EnforcementRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The date from which users matched here must use a phone (YYYY-MM-DD, UTC midnight).
    date: str
    # Which sign-ins it covers: these applications (ids) and/or users matching these patterns (a group).
    # Both empty: every sign-in. The first matching rule wins.
    applications: list[str] = []
    users: list[str] = []

    def __post_init__(self) -> None:
        _parse_date(self.date)

    def matches(self, app_id: str, user: str) -> bool:
        return ((not self.applications or app_id in self.applications)
                and (not self.users or _matches_any(user, self.users)))


class PolicySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Days an approved browser is remembered (no prompt from it); 0 turns remembering off. A token is only
    # issued when the login flow sends a `browser_id` with the challenge.
    remember_days: int = 30
    # Accounts allowed without a prompt, audited on every use (service and break-glass accounts).
    exempt: list[str] = []
    # Shared mailboxes: no phone may be enrolled on them; sign-in is allowed without a prompt, audited.
    shared: list[str] = []
    # From this date (YYYY-MM-DD) a user without a phone is refused (`not_enrolled`); before it they are
    # allowed (`grace`) and told by when to enroll. Empty: enforced from the start.
    enforcement_date: str = ""
    # Different dates per application or group of users (first match wins; else enforcement_date).
    enforcement: list[EnforcementRule] = []
    # Temporary access codes (for staff without a phone at hand): life, and how many wrong codes per user
    # are tolerated in the window before verification is refused (each wrong code also counts toward the
    # lockout).
    access_code_ttl_s: int = 3600
    access_code_attempts: int = 5
    access_code_window_s: int = 900
    # Longest a phone may pause its own prompts.
    max_pause_s: int = 30 * 86400
    # What the user is told to do after answering "I didn't request this", or when their account is locked
    # or its prompts suspended: the login page and the phone both show it (`user_message`). Say who to
    # call and how, as the organisation's own staff guidance does.
    user_message: str = "Contact your IT service desk."

    def __post_init__(self) -> None:
        if not 0 <= self.remember_days <= 365:
            raise ValueError("remember_days must be 0..365")
        if self.enforcement_date:
            _parse_date(self.enforcement_date)
        if not 300 <= self.access_code_ttl_s <= 7 * 86400:
            raise ValueError("access_code_ttl_s must be 300..604800")
        if not (1 <= self.access_code_attempts <= 100 and 60 <= self.access_code_window_s <= 86400):
            raise ValueError("access_code_attempts must be 1..100 and access_code_window_s 60..86400")
        if not 3600 <= self.max_pause_s <= 365 * 86400:
            raise ValueError("max_pause_s must be 3600..31536000")
        if not 1 <= len(self.user_message.strip()) <= 300 or not self.user_message.isprintable():
            raise ValueError("user_message must be 1..300 printable characters on one line")

    # -- decisions -------------------------------------------------------------------------------------------

    def account_kind(self, user: str, flags: Mapping[str, str]) -> str | None:
        """"shared", "exempt" or None, from the admin API's flags on the account and the patterns."""
        if flags.get("policy_shared") == "1" or _matches_any(user, self.shared):
            return "shared"
        if flags.get("policy_exempt") == "1" or _matches_any(user, self.exempt):
            return "exempt"
        return None

    def enforced_from(self, app_id: str, user: str) -> int:
        """Unix time from which `user` signing in to `app_id` must have a phone (0: always)."""
        for rule in self.enforcement:
            if rule.matches(app_id, user):
                return _parse_date(rule.date)
        return _parse_date(self.enforcement_date) if self.enforcement_date else 0


def _matches_any(user: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(user, p.casefold()) for p in patterns)


def _parse_date(value: str) -> int:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
