"""One RADIUS sign-in: from a decoded Access-Request to the answer, on the same services as the REST path.

    first request    the password check (`primary`: ldap | radius | none) -- a wrong password is
                     rejected here, before any prompt exists, so password spraying never reaches a phone
                     -> Challenges.create (policy, lock, suspension, pause, push bombing, rate limits per
                     user, detection and alerts all apply there, as for any login flow)
       auto          hold the request until the phone answers or the client's deadline passes; the prompt
                     asks approve/deny (no number: the client cannot show one)
       challenge     Access-Challenge: "Enter 42 in the app", with a State (pushauth/radius/states.py); for
                     a user with no phone but an active code method, "Enter the code from your
                     authenticator app", whose answer is checked as a one-time code
       code          the password field ends in a one-time code ("password,123456", `codes.radius_delimiter`):
                     the password is checked without it, then the code; no phone is prompted
    follow-up        (challenge mode: the request carries the State) the user pressed Enter -> wait for the
                     phone's answer until the deadline; or typed a temporary access code or a one-time code
                     (6 or 8 digits) instead -> verify it

Every answer is Accept, Reject or Challenge, with a Reply-Message a person can read; nothing here raises for
a refusal (`Forbidden`, `RateLimited`, an invalid user name) - those are Rejects with their message.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from pushauth import clock
from pushauth.accounts.service import Accounts
from pushauth.accounts.users import canonical
from pushauth.audit import Audit
from pushauth.challenges import context as login_context
from pushauth.challenges.service import Allowed, Challenges
from pushauth.codes.service import Codes
from pushauth.codes.totp import normal_code
from pushauth.config import Application, Settings
from pushauth.directory import Verdict
from pushauth.errors import ApiError, PromptsPaused, RateLimited, StoreUnavailable
from pushauth.radius.primary import PasswordCheck
from pushauth.radius.settings import RadiusClient
from pushauth.radius.states import ChallengeRef, ChallengeStates
from pushauth.ratelimit.limiter import RateLimiter
from pushauth.store.connection import STORE_DOWN_ERRORS

log = structlog.get_logger(__name__)

_STORE_DOWN: tuple[type[Exception], ...] = (StoreUnavailable, *STORE_DOWN_ERRORS)


class Code(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"


@dataclass(frozen=True, slots=True, repr=False)
class Request:
    """What a sign-in needs of an Access-Request. `password` is the decrypted User-Password (None: the
    request carried none, e.g. CHAP or EAP, which cannot be checked by a bind)."""

    user: str
    password: str | None
    state: bytes | None = None
    calling_station: str = ""
    nas_identifier: str = ""

    def __repr__(self) -> str:  # never the password
        return f"Request(user={self.user!r}, state={self.state is not None})"


@dataclass(frozen=True, slots=True)
class Answer:
    code: Code
    message: str = ""
    state: bytes | None = field(default=None, repr=False)  # a live reference to a prompt: not for logs
    # What happened, for metrics and logs ("approved", "wrong_password", "locked", ...).
    outcome: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)


def reject(outcome: str, message: str, **facts: Any) -> Answer:
    return Answer(Code.REJECT, message, outcome=outcome, facts=facts)


class SignIns:
    """The sign-in logic of the RADIUS front, for every client."""

    def __init__(self, settings: Settings, challenges: Challenges, accounts: Accounts, limiter: RateLimiter,
                 audit: Audit, states: ChallengeStates, checks: Mapping[str, PasswordCheck], *,
                 codes: Codes | None = None) -> None:
        self._settings = settings
        self._challenges = challenges
        self._accounts = accounts
        self._limiter = limiter
        self._audit = audit
        self._states = states
        self._checks = checks
        self._codes = codes
        self._delimiter = settings.codes.radius_delimiter if codes is not None else ""
        self._apps: Mapping[str, Application] = {a.id: a for a in settings.applications}
        self._user_message = settings.policy.user_message

    async def answer(self, client: RadiusClient, request: Request) -> Answer:
        """Accept, Reject or Challenge for `request` from `client`. Redis down: Reject (fail closed)."""
        try:
            return await self._answer(client, request)
        except _STORE_DOWN as exc:
            log.error("radius_store_unavailable", client=client.name, error=type(exc).__name__)
            return reject("store_unavailable", "The sign-in service is unavailable. Try again shortly.")

    async def _answer(self, client: RadiusClient, request: Request) -> Answer:
        if request.password is None and request.state is None:  # (a follow-up may carry no password: Enter)
            return reject("not_pap", "This server accepts PAP passwords only.")
        try:
            user = canonical(request.user)
        except ApiError:
            return reject("invalid_user", "The user name is not valid.")
        try:
            await self._limiter.radius_client(client.name, client.rate_limit)
        except RateLimited:
            return reject("rate_limited", "Too many sign-ins. Try again shortly.")
        app = self._apps[client.application]
        if request.state is not None:
            return await self._follow_up(client, app, user, request)
        return await self._first(client, app, user, request)

    async def _first(self, client: RadiusClient, app: Application, user: str, request: Request) -> Answer:
        password, code = self._split_code(request.password or "")
        verdict = await self._checks[client.primary].check(user, password)
        if verdict is not Verdict.OK:
            await self._audit.record("refused", user=user, who=f"radius:{client.name}",
                                     why=f"password check: {verdict.value}", ip=request.calling_station)
            if verdict is Verdict.UNAVAILABLE:
                return reject("primary_unavailable", "The password could not be checked. Try again shortly.")
            return reject("wrong_password", "Wrong user name or password.")
        if code is not None:
            return await self._one_time_code(client, user, code)
        auto = client.mode == "auto"
        try:
            created = await self._challenges.create(app, user, _context(client, request), client.deadline_s,
                                                    number_matching=not auto, by=f"radius:{client.name}")
        except ApiError as exc:  # locked, suspended, paused, not enrolled, push bombing
            if exc.code == "not_enrolled" and self._codes is not None and await self._codes.usable(user):
                return await self._ask_for_code(client, user)
            return reject(exc.code or "refused", _message(exc, self._user_message))
        if isinstance(created, Allowed):
            return Answer(Code.ACCEPT, outcome=f"allowed_{created.reason}")
        if auto:
            return await self._decision(app, created.id, client.deadline_s)
        ref = ChallengeRef(created.id, user, client.name, created.expires_at)
        state = await self._states.issue(ref)
        text = (f"Enter {created.number} in the pushauth app on your phone, then press Enter."
                if created.number else "Approve the sign-in on your phone, then press Enter.")
        return Answer(Code.CHALLENGE, text, state=state, outcome="challenged")

    async def _ask_for_code(self, client: RadiusClient, user: str) -> Answer:
        """A user with no phone but an authenticator app or a token: in challenge mode the Access-Challenge
        asks for the code (a State with no prompt behind it); in auto mode the client shows no challenge, so
        the code must come after the password."""
        if client.mode != "challenge":
            if self._delimiter:
                return reject("not_enrolled", f"No phone is set up for this account: type your password, "
                                              f"then {self._delimiter} and the code from your "
                                              "authenticator app.")
            return reject("not_enrolled", "No phone is set up for this account.")
        ref = ChallengeRef("", user, client.name, clock.now() + client.deadline_s)
        state = await self._states.issue(ref)
        return Answer(Code.CHALLENGE, "Enter the code from your authenticator app or token.", state=state,
                      outcome="challenged_code")

    async def _follow_up(self, client: RadiusClient, app: Application, user: str, request: Request) -> Answer:
        ref = await self._states.take(request.state or b"")
        if ref is None or ref.user != user or ref.client != client.name:
            return reject("unknown_state", "This sign-in has expired. Start again.")
        typed = (request.password or "").strip()
        if not ref.challenge_id and self._codes is not None:
            # the challenge asked for a code (no phone): whatever comes back is checked as one, and a wrong
            # answer is a wrong code (it counts toward the lockout and the wrong-code limit)
            return await self._one_time_code(client, user, typed)
        if self._codes is not None and normal_code(typed) is not None:
            # A one-time code from an app, a token or the phone's offline codes, typed instead of Enter.
            answer = await self._one_time_code(client, user, typed)
            if answer.code is Code.ACCEPT:
                await self._cancel(app, ref.challenge_id)
            return answer
        if _looks_like_access_code(typed):
            # Not the Enter the challenge asked for: a temporary access code, typed instead of the phone.
            try:
                valid, why = await self._accounts.verify_access_code(user, typed, by=f"radius:{client.name}")
            except RateLimited:
                valid, why = False, "rate_limited"
            if not valid:
                return reject(f"access_code_{why}", "That code is not valid.")
            await self._cancel(app, ref.challenge_id)
            return Answer(Code.ACCEPT, outcome="access_code")
        wait_s = min(client.deadline_s, ref.expires_at - clock.now())
        return await self._decision(app, ref.challenge_id, wait_s)

    def _split_code(self, password: str) -> tuple[str, str | None]:
        """("password", "123456") from "password,123456"; the whole field and None when it ends in no code."""
        if not self._delimiter or self._delimiter not in password:
            return password, None
        head, _, tail = password.rpartition(self._delimiter)
        return (head, tail) if normal_code(tail) == tail else (password, None)

    async def _one_time_code(self, client: RadiusClient, user: str, code: str) -> Answer:
        assert self._codes is not None
        try:
            checked = await self._codes.verify(user, code, via="radius", by=f"radius:{client.name}")
        except RateLimited:
            return reject("otp_rate_limited", "Too many wrong codes. Try again later.")
        if checked.valid:
            return Answer(Code.ACCEPT, outcome="otp")
        if checked.reason in ("locked", "suspended"):
            return reject(f"otp_{checked.reason}",
                          f"Sign-in is blocked for this account. {self._user_message}")
        return reject(f"otp_{checked.reason}", "That code is not valid.")

    async def _decision(self, app: Application, cid: str, wait_s: float) -> Answer:
        """Wait for the phone's answer (the same long-poll the REST login flow uses)."""
        view = await self._challenges.status(app, cid, max(0.0, wait_s))
        status = view.get("status")
        if status == "approved":
            return Answer(Code.ACCEPT, outcome="approved")
        if status in ("pending", "expired"):  # the deadline passed (a prompt's life is the deadline)
            return reject("no_answer", "No answer from your phone. Try again.")
        if status == "denied":
            message = "Sign-in denied on your phone."
            if view.get("reason") == "not_me":
                message += " " + self._user_message
            return reject(f"denied_{view.get('reason') or 'other'}", message)
        return reject(str(status), "The sign-in was cancelled. Start again.")

    async def _cancel(self, app: Application, cid: str) -> None:
        with contextlib.suppress(ApiError):  # answered or expired meanwhile: nothing to withdraw
            await self._challenges.cancel(app, cid)


def _looks_like_access_code(typed: str) -> bool:
    """An access code is 12 letters and digits (dashes and spaces optional; pushauth/accounts/service.py).
    Anything shorter is taken as Enter: most likely the number, typed at the prompt as well as on the phone,
    which must not count as a wrong access code toward the user's lockout."""
    return len(typed.replace("-", "").replace(" ", "")) >= 8


def _context(client: RadiusClient, request: Request) -> dict[str, str]:
    """The login context, as a login flow would send it: the address the user signs in from (a VPN's
    Calling-Station-Id is the user's public address; pam_radius_auth sends the SSH client's), and for the
    security team's evidence which RADIUS client asked. The phone shows only what `for_phone` lets through."""
    ctx = {"radius_client": client.name}
    if request.calling_station and login_context.address(request.calling_station):
        ctx["ip"] = request.calling_station
    elif request.calling_station:
        ctx["calling_station"] = request.calling_station[:64]
    if request.nas_identifier:
        ctx["nas_identifier"] = request.nas_identifier[:64]
    return ctx


# How Challenges.create says that the user's own phone paused the prompts (code "suspended" like a suspension;
# PROTOCOL.md 10.3: "the message says which").
def _message(exc: ApiError, user_message: str) -> str:
    if isinstance(exc, PromptsPaused):
        # The user's own pause (a holiday), not the security team's block: nobody to call, the phone resumes.
        return f"Sign-in prompts are paused on your phone until {exc.until}."
    if exc.code in ("locked", "suspended"):
        return f"Sign-in is blocked for this account. {user_message}"
    if exc.code == "not_enrolled":
        return "No phone is set up for this account."
    if isinstance(exc, RateLimited):
        return "Too many sign-in prompts. Try again later."
    return "Sign-in refused."

