"""Detection rules and containment: what turns a sign-in event into a possible-compromise alert, and what
pushauth does about it before anyone picks up a phone.

Every rule is in `RULES` below with its severity, its thresholds (settings in `[detection]` and
`[containment]`) and where its default comes from. They are evaluated inside Redis, in the same Lua
script as the transition that caused them (`lua/ledger.lua`, included by the transition scripts; its
calling convention is `pushauth.detection.ledger`), so an alert and the state change it is about are
written together or not at all, and the counters the rules read cannot change between the read and the
decision.

    event                               rule fired                      severity   containment
    deny "not_me" (also on a prompt     denied_not_me                   critical   suspend prompts, revoke
      that expired or was cancelled)                                               remembered browsers, deny
                                                                                   pending and just-approved
                                                                                   challenges
    deny "mistake"                      denied                          low
    approve with the wrong number       wrong_number                    high       counts toward the lockout
    a prompt beyond N in a window       push_bombing                    high       the prompt is refused (429)
    N denials/wrong numbers in window   repeated_denials                high
    approval after N failures           approved_after_denials          critical
    N prompts expired unanswered, or    ignored_prompts                 medium
      cancelled after reaching a phone
    N prompts cancelled in a window     prompt_cycling                  high
    answer after expiry                 late_response                   medium     (a late not_me is still
                                                                                   denied_not_me, contained)
    prompt from a network and location  new_context                     low
      not seen for the user recently
    N consecutive wrong numbers or      account_locked                  high       lock; deny pending and
      wrong access codes                                                           just-approved challenges
    a further phone added to a user     device_enrolled                 high       the other phones are told
    a phone revokes another phone       device_revoked                  high
    a new phone tries to revoke an      device_revoke_refused           high       refused (cool-down)
      older one within the cool-down
    exempt/shared set during an open    policy_override                 high
      incident (forced by the team)
    prompt while suspended / locked     blocked_prompt (event only)     info

Alerts are incidents: every event for a user within `incident_window_s` of the previous one joins the
open incident (its `evidence.events`), so a push-bombing run is one alert with many events, not fifty
pages. An incident is re-announced (`alert.updated`) only when its severity rises.

Only failures that show the authenticator being guessed at count toward the lockout: wrong numbers, and
wrong temporary access codes while a code exists for the user. NIST SP 800-63B 5.2.2 limits "consecutive
failed authentication attempts" by a claimant; a denial is the user refusing (not a failed attempt: "not
me" has its own containment), and an ignored prompt, or a wrong code for a user who has none, is something
anyone with the user's name and an application key can cause, so counting them would let a stranger lock
any user out. They raise their alerts, and do not lock. An approval resets the count; a new challenge never
does. Expired prompts are counted when the expiry worker or the user's next event settles them, whichever
comes first (`pushauth/challenges/lua/settle.lua`).

The security team's unlock also ends the blocks that refuse the user (the push-bombing window and the
wrong-access-code window; issuing an access code ends the latter): each has a reset mark on the user
(`bomb_reset`, `acode_reset`: the sequence number of the last history entry at the reset) up to which the
history no longer counts toward it; the history itself is kept for the other rules and as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from pushauth import netaddr
from pushauth.netaddr import parse_ip

SEVERITIES: Final = ("info", "low", "medium", "high", "critical")


def severity_rank(name: str) -> int:
    return SEVERITIES.index(name) + 1 if name in SEVERITIES else 0


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    severity: str
    what: str
    default_source: str


RULES: Final = (
    Rule("denied_not_me", "critical", "the user denied a prompt saying they did not request it",
         "Microsoft Entra 'report suspicious activity' marks the user high risk; Duo's fraud report can lock "
         "the user out. A person denying a prompt they did not cause is the strongest signal there is."),
    Rule("denied", "low", "the user denied a prompt by mistake",
         "the mission: every denial is escalated, at low severity when the user says it was a mistake"),
    Rule("wrong_number", "high", "an approval carried the wrong number",
         "CISA 'Implementing number matching in MFA applications' (2022): a wrong number means someone "
         "approved without seeing the login page"),
    Rule("push_bombing", "high", "more than `push_bombing_max` prompts for one user within the window",
         "the issue's 5 prompts in 5 minutes; Microsoft Authenticator and Okta Verify also throttle "
         "repeated prompts to one user"),
    Rule("repeated_denials", "high", "`repeated_denials_count` denials or wrong numbers within the window",
         "3 in 15 minutes: a person who mistypes once does not deny three times"),
    Rule("approved_after_denials", "critical",
         "an approval after `approved_after_failures` failures (denials, wrong numbers, ignored prompts) "
         "within the window: MFA fatigue that worked",
         "the Uber (2022) and Cisco (2022) breaches: approval after a run of rejected prompts"),
    Rule("ignored_prompts", "medium", "`ignored_prompts_count` prompts expired unanswered, or cancelled by "
         "the login flow after they reached a phone, within the window",
         "3 in 15 minutes: unanswered prompts the user did not cause are the quiet form of push bombing; a "
         "prompt the phone showed and the login flow then withdrew was seen and not answered all the same"),
    Rule("prompt_cycling", "high", "`prompt_cycling_count` prompts cancelled by the login flow within the "
         "window",
         "4 in 15 minutes: number fishing cancels every prompt whose number is not the one it talked the "
         "user into typing; a person who starts over once or twice cancels one or two"),
    Rule("late_response", "medium", "an answer arrived after the challenge expired",
         "an approval nobody is waiting for: the user may be approving a prompt they did not cause"),
    Rule("new_context", "low", "a prompt from a network (/24, /48) and location not seen in an approved "
         "sign-in for `new_context_days`",
         "30 days, as Microsoft Entra's 'unfamiliar sign-in properties' learns a user's usual locations; "
         "quiet until the user has one approved sign-in"),
    Rule("account_locked", "high", "`lockout_after_failures` consecutive wrong numbers or wrong access codes "
         "(while a code exists) locked the account",
         "NIST SP 800-63B 5.2.2: at most 100 consecutive failed authentication attempts; 10 is the common "
         "default (Microsoft Entra smart lockout). Only guesses at the authenticator count (see above)"),
    Rule("otp_guessing", "high", "`codes.attempts` wrong or replayed one-time codes for one user within "
         "`codes.window_s`: further codes are refused (429) until the window moves on",
         "RFC 4226 section 7.3 (throttling) and NIST SP 800-63B 5.2.2: a 6-digit code falls to guessing "
         "without a limit; every wrong code also counts toward the lockout"),
    Rule("otp_enrolled", "info", "a one-time-code method (authenticator app or hardware token) was activated",
         "a new second factor on the account is worth a line in the feed, as an access code is"),
    Rule("device_enrolled", "high", "a further phone was added to a user who already had an active one",
         "Microsoft and Duo notify the user and require the existing method to add a new one; a second "
         "phone is how a phished password becomes a lasting second factor"),
    Rule("device_revoked", "high", "one of the user's phones revoked another",
         "the second step of a phone takeover: the new phone removes the real one"),
    Rule("device_revoke_refused", "high", "a phone added within the cool-down tried to revoke an older one",
         "`enrollment.revoke_cooldown_s` (24 hours): a lost phone is replaced through the service desk, not "
         "by the newest phone"),
    Rule("policy_override", "high", "the security team forced an account exempt or shared while it was "
         "locked, suspended, push-bombed or had an open alert",
         "an exemption must never silently lift containment"),
)


class DetectionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Events for a user within this time of the previous one join the same incident (one alert).
    incident_window_s: int = 900
    push_bombing_max: int = 5
    push_bombing_window_s: int = 300
    repeated_denials_count: int = 3
    repeated_denials_window_s: int = 900
    approved_after_failures: int = 3
    approved_after_window_s: int = 900
    ignored_prompts_count: int = 3
    ignored_prompts_window_s: int = 900
    prompt_cycling_count: int = 4
    prompt_cycling_window_s: int = 900
    # 0 turns new_context off.
    new_context_days: int = 30
    # Most events kept in one alert's evidence (the count keeps counting).
    max_events: int = 50

    def __post_init__(self) -> None:
        if not 60 <= self.incident_window_s <= 86400:
            raise ValueError("incident_window_s must be 60..86400")
        for name in ("push_bombing_max", "repeated_denials_count", "approved_after_failures",
                     "ignored_prompts_count", "prompt_cycling_count"):
            if not 1 <= getattr(self, name) <= 1000:
                raise ValueError(f"{name} must be 1..1000")
        for name in ("push_bombing_window_s", "repeated_denials_window_s", "approved_after_window_s",
                     "ignored_prompts_window_s", "prompt_cycling_window_s"):
            if not 10 <= getattr(self, name) <= 86400:
                raise ValueError(f"{name} must be 10..86400")
        if not 0 <= self.new_context_days <= 365:
            raise ValueError("new_context_days must be 0..365")
        if not 5 <= self.max_events <= 500:
            raise ValueError("max_events must be 5..500")


class ContainmentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # After a "not_me" denial: refuse further prompts for the user ...
    suspend_on_not_me: bool = True
    # ... for this long (0: until the security team lifts it).
    suspend_for_s: int = 0
    # ... and revoke every remembered browser of the user.
    revoke_remembered_on_not_me: bool = True
    # Lock after this many consecutive failed authentication attempts: wrong numbers, and wrong access codes
    # while the user has one (denials and ignored prompts never lock: see the module docstring). NIST SP
    # 800-63B allows at most 100. 0 turns lockout off.
    lockout_after_failures: int = 10
    # Unlock by itself after this long (0: only the security team unlocks).
    auto_unlock_after_s: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.lockout_after_failures <= 100:
            raise ValueError("lockout_after_failures must be 0..100 (NIST SP 800-63B: at most 100)")
        if not (0 <= self.suspend_for_s <= 90 * 86400 and 0 <= self.auto_unlock_after_s <= 90 * 86400):
            raise ValueError("suspend_for_s and auto_unlock_after_s must be 0..7776000")


def ledger_config(detection: DetectionSettings, containment: ContainmentSettings, *,
                  assertion_life_s: int, remember_s: int = 0, other_windows_s: int = 0) -> str:
    """The thresholds as the JSON the Lua ledger decodes (its ARGV[3], CFG; built once per process).
    `other_windows_s`: the longest window another user of the history needs (access-code attempts)."""
    d, c = detection, containment
    keep = max(d.push_bombing_window_s, d.repeated_denials_window_s, d.approved_after_window_s,
               d.ignored_prompts_window_s, d.prompt_cycling_window_s, d.incident_window_s, other_windows_s)
    return msgspec.json.encode({
        "incident_window_s": d.incident_window_s, "max_events": d.max_events,
        "bomb_max": d.push_bombing_max, "bomb_win": d.push_bombing_window_s,
        "rep_n": d.repeated_denials_count, "rep_win": d.repeated_denials_window_s,
        "aad_n": d.approved_after_failures, "aad_win": d.approved_after_window_s,
        "ign_n": d.ignored_prompts_count, "ign_win": d.ignored_prompts_window_s,
        "cyc_n": d.prompt_cycling_count, "cyc_win": d.prompt_cycling_window_s,
        "ctx_s": d.new_context_days * 86400, "hist_keep_s": keep,
        "suspend": c.suspend_on_not_me, "suspend_for_s": c.suspend_for_s,
        "revoke_remembered": c.revoke_remembered_on_not_me,
        "lock_n": c.lockout_after_failures, "unlock_s": c.auto_unlock_after_s,
        "assertion_life_s": assertion_life_s, "remember_s": remember_s,
    }).decode()


def network_of(ip: str) -> str:
    """The network a login IP belongs to for `new_context`: /24 for IPv4, /48 for IPv6 (what one site or
    one home connection usually spans). Not an IP: empty (the rule then looks at the location only)."""
    addr = parse_ip(ip)
    return "" if addr is None else netaddr.network_of(addr, v4=24, v6=48)
