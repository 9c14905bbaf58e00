"""One exception tree for everything the client can meet, mirroring PROTOCOL.md 2.4 and 11.

Branch on the class, never on a message: `error` codes are stable, `message` texts are not. A code this
library does not know (the contract lets a later server add codes) is mapped by its HTTP status, as the
contract asks (`from_response`), so a new 403 code is still a Forbidden and a new 409 still a Conflict.
"""

from __future__ import annotations


class PushAuthClientError(Exception):
    """The root: catch this to catch everything the library raises on purpose."""


class TransportError(PushAuthClientError):
    """The server could not be reached (connection refused, reset, timed out) even after the retries."""


class ProtocolError(PushAuthClientError):
    """The server's answer breaks the contract (not JSON, a missing field): a proxy in the way, or a bug."""


class InvalidAssertion(PushAuthClientError):
    """An assertion that must not sign anyone in: malformed, wrong key, bad signature, or wrong claims."""


class APIError(PushAuthClientError):
    """The server answered with the contract's `{"error", "message"}` body (or a status without one)."""

    def __init__(self, status: int, error: str, message: str, *, request_id: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {error}: {message}" if message else f"{status} {error}")
        self.status = status
        self.error = error
        # For a person; for locked and suspended it ends with what the organisation tells users to do.
        self.message = message
        # The server's X-Request-Id: quote it when reporting a problem.
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequest(APIError):
    """400: bad_json, bad_query: a bug in the caller (or in this library)."""


class Unauthorized(APIError):
    """401: no, an unknown or a malformed API key."""


class Forbidden(APIError):
    """403 forbidden (an admin token on a login-flow call), and the parent of the account refusals."""


class Locked(Forbidden):
    """403 locked: repeated wrong numbers or access codes, or the security team. Show `message`."""


class Suspended(Forbidden):
    """403 suspended: the user said "I didn't request this", or paused prompts on their phone."""


class NotEnrolled(Forbidden):
    """403 not_enrolled: no phone and MFA is enforced (offer an access code or enrollment)."""


class SharedAccount(Forbidden):
    """403 shared_account: shared mailboxes must not set up MFA."""


class NotFound(APIError):
    """404: no such challenge, another application's, or past retention (the server never says which)."""


class Conflict(APIError):
    """409: the challenge can no longer change."""


class AlreadyDecided(Conflict):
    """409 already_decided: cancelling a challenge that was approved, denied or cancelled already."""


class ChallengeExpired(Conflict):
    """409 expired: cancelling a challenge that has expired."""


class PayloadTooLarge(APIError):
    """413: a body over the server's max_body_bytes."""


class Invalid(APIError):
    """422: a field missing, unknown, of the wrong type or out of range."""


class InvalidUser(Invalid):
    """422 invalid_user: a user name that cannot be canonicalised (PROTOCOL.md 2.5)."""


class InvalidTTL(Invalid):
    """422 invalid_ttl: ttl_s out of the server's range."""


class RateLimited(APIError):
    """429: a rate limit, or the user's push-bombing limit on create. `retry_after` is in seconds."""


class ServerError(APIError):
    """5xx other than 503: a server bug."""


class Unavailable(ServerError):
    """503: the server cannot reach its store. Nothing approved was handed out; try again later."""


_BY_CODE: dict[str, type[APIError]] = {
    "bad_json": BadRequest, "bad_query": BadRequest, "unauthorized": Unauthorized, "forbidden": Forbidden,
    "locked": Locked, "suspended": Suspended, "not_enrolled": NotEnrolled, "shared_account": SharedAccount,
    "not_found": NotFound, "already_decided": AlreadyDecided, "expired": ChallengeExpired,
    "payload_too_large": PayloadTooLarge, "invalid": Invalid, "invalid_user": InvalidUser,
    "invalid_ttl": InvalidTTL, "rate_limited": RateLimited, "unavailable": Unavailable,
    "internal": ServerError,
}

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: Invalid, 429: RateLimited, 503: Unavailable,
}


def error_class(status: int, error: str) -> type[APIError]:
    """The class for an error answer: by code when the code belongs to that status' family, else by status
    (an unknown code, or a known code under an unexpected status, must not change what a caller catches)."""
    by_status = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    by_code = _BY_CODE.get(error)
    if by_code is not None and issubclass(by_code, by_status):
        return by_code
    return by_status
