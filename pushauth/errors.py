"""One exception tree for pushauth.

    PushAuthError
    ├── ConfigError              bad settings; the message names the key (start-up only)
    ├── KeyStoreError            keys/ folder missing, unreadable or inconsistent
    ├── StoreUnavailable         Redis unreachable or timing out: fail closed (503)
    └── ApiError                 something a client did or asked for; carries HTTP status + code
        ├── BadRequest           400 malformed JSON, bad query parameter
        ├── Unauthorized         401 missing or bad credentials / signature
        ├── Forbidden            403 authenticated but not allowed (locked, not_enrolled, ...)
        ├── NotFound             404 unknown, or not yours (never says which)
        ├── Conflict             409 state conflict: already decided, expired, code used
        ├── PayloadTooLarge      413
        ├── Unprocessable        422 well-formed but invalid fields
        ├── RateLimited          429 with Retry-After
        └── ServiceUnavailable   503 for a dependency that is down (raised from StoreUnavailable)

Only `ApiError` reaches a client, rendered as the contract's `{"error", "message"}`; anything else is
logged and becomes a generic 500 without detail. Domain code raises `ApiError` subclasses directly
because the mapping to a status word *is* part of the contract (e.g. 403 "locked"), and keeping the code
next to the decision that produces it avoids a second translation table that could drift.
"""

from __future__ import annotations

from typing import ClassVar


class PushAuthError(Exception):
    """Root of every error pushauth raises on purpose."""


class ConfigError(PushAuthError):
    """Settings that cannot be used. The message names the offending key."""


class KeyStoreError(PushAuthError):
    """The server signing keys cannot be loaded or changed."""


class StoreUnavailable(PushAuthError):
    """Redis did not answer. Callers must fail closed."""


class ApiError(PushAuthError):
    """An error with a place in the wire contract."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    default_code = "forbidden"


class PromptsPaused(Forbidden):
    """The user's own phone paused their prompts (a holiday): on the wire a `suspended` refusal, as v1
    clients know it; the fronts that word it themselves (RADIUS) tell it from the security team's block."""

    def __init__(self, until: str) -> None:
        super().__init__(f"the user's phone has paused sign-in prompts until {until}", code="suspended")
        self.until = until


class NotFound(ApiError):
    status = 404
    default_code = "not_found"


class Conflict(ApiError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


class Unprocessable(ApiError):
    status = 422
    default_code = "invalid"


class RateLimited(ApiError):
    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after_s))})
        self.retry_after_s = retry_after_s


class ServiceUnavailable(ApiError):
    status = 503
    default_code = "unavailable"
