"""pushauth-client: the login flow's side of pushauth's REST API (PROTOCOL.md section 11).

    with Client("https://pushauth.example.org", api_key, application_id="webmail") as pa:
        created = pa.create("alice@nhs.net")
        ...

Everything raised on purpose is a PushAuthClientError; see `pushauth_client.errors` for the tree.
"""

from __future__ import annotations

from pushauth_client._core import RetryPolicy
from pushauth_client._version import __version__
from pushauth_client.client import AsyncClient, Client
from pushauth_client.errors import (
    AlreadyDecided,
    APIError,
    BadRequest,
    ChallengeExpired,
    Conflict,
    Forbidden,
    Invalid,
    InvalidAssertion,
    InvalidTTL,
    InvalidUser,
    Locked,
    NotEnrolled,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    PushAuthClientError,
    RateLimited,
    ServerError,
    SharedAccount,
    Suspended,
    TransportError,
    Unauthorized,
    Unavailable,
)
from pushauth_client.models import (
    AccessCodeResult,
    Allowed,
    AssertionClaims,
    ChallengeStatus,
    Pending,
    canonical_user,
)

__all__ = [
    "APIError",
    "AccessCodeResult",
    "Allowed",
    "AlreadyDecided",
    "AssertionClaims",
    "AsyncClient",
    "BadRequest",
    "ChallengeExpired",
    "ChallengeStatus",
    "Client",
    "Conflict",
    "Forbidden",
    "Invalid",
    "InvalidAssertion",
    "InvalidTTL",
    "InvalidUser",
    "Locked",
    "NotEnrolled",
    "NotFound",
    "PayloadTooLarge",
    "Pending",
    "ProtocolError",
    "PushAuthClientError",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "SharedAccount",
    "Suspended",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "canonical_user",
]
