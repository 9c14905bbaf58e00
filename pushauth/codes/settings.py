"""`[codes]` settings: offline one-time codes (TOTP, RFC 6238).

    [codes]
    enabled = true
    issuer = "NHSmail"          # what authenticator apps show above the code
    algorithm = "SHA1"          # new authenticator-app methods: SHA1 (what every app reads), SHA256, SHA512
    digits = 6
    window = 1                  # steps of 30 s either side of now that are accepted
    attempts = 5                # wrong codes per user in window_s before verification answers 429
    window_s = 900
    pending_ttl_s = 900         # an enrollment not activated with a code by then is gone
    phone_seeds = true          # give each pushauth phone a TOTP seed at registration (its offline codes)
    radius_delimiter = ","      # RADIUS: "password,123456"
"""

from __future__ import annotations

import msgspec

from pushauth.codes.totp import ALGORITHMS, Algorithm


class CodeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Off: no code verifies anywhere (methods stay stored) and no method can be enrolled.
    enabled: bool = True
    # The issuer in otpauth:// URIs: the name the authenticator app lists the account under.
    issuer: str = "pushauth"
    # New authenticator-app methods: SHA1 / 6 digits / 30 s is what every app reads. SHA256 and SHA512 are
    # allowed (Microsoft Authenticator and Google Authenticator ignore the algorithm and make SHA1 codes:
    # check the app before changing this).
    algorithm: Algorithm = "SHA1"
    digits: int = 6
    # Steps (of a method's period) accepted either side of now, for clock drift: 1 is RFC 6238's advice.
    window: int = 1
    # An HOTP (counter-based) hardware token: codes of this many counters from the next expected one are
    # accepted, for a button pressed without signing in (RFC 4226 section 7.4); each costs one more guess
    # an attacker gets per try, so keep it small.
    hotp_look_ahead: int = 10
    # Wrong codes per user tolerated in window_s before verification is refused (429); each wrong code
    # also counts toward the account lockout, and reaching the limit raises an `otp_guessing` alert.
    attempts: int = 5
    window_s: int = 900
    # An authenticator-app enrollment must be activated with one valid code within this time.
    pending_ttl_s: int = 900
    # Wrong codes tried at activation before the pending method is thrown away.
    activation_attempts: int = 5
    # Give each pushauth phone a TOTP seed at registration, shown as its offline code (PROTOCOL.md 17.5).
    # Off: push only.
    phone_seeds: bool = True
    # RADIUS: a code after this character in the password field ("password,123456"); "" turns that off.
    radius_delimiter: str = ","

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError("algorithm must be SHA1, SHA256 or SHA512")
        if self.digits not in (6, 8):
            raise ValueError("digits must be 6 or 8")
        if not 0 <= self.window <= 3:
            raise ValueError("window must be 0..3")
        if not 1 <= self.hotp_look_ahead <= 50:
            raise ValueError("hotp_look_ahead must be 1..50")
        if not (1 <= self.attempts <= 100 and 60 <= self.window_s <= 86400):
            raise ValueError("attempts must be 1..100 and window_s 60..86400")
        if not 60 <= self.pending_ttl_s <= 7 * 86400:
            raise ValueError("pending_ttl_s must be 60..604800")
        if not 1 <= self.activation_attempts <= 20:
            raise ValueError("activation_attempts must be 1..20")
        if len(self.radius_delimiter) > 1 or self.radius_delimiter.isalnum():
            raise ValueError("radius_delimiter must be one character that is not a letter or digit, or empty")
        if not (1 <= len(self.issuer) <= 64 and self.issuer.isprintable() and ":" not in self.issuer):
            raise ValueError("issuer must be 1..64 printable characters without ':'")
