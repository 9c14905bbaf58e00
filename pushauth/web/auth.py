"""Bearer credentials for login flows (per-application API keys) and the security team (admin tokens).

Only SHA-256 digests are configured. A presented key is hashed and looked up; the lookup is by digest, so
its timing reveals nothing about any stored key, and the final comparison is constant-time anyway.

A token is read only in RFC 6750's syntax (`b64token`, ASCII): anything else in `Authorization: Bearer`
(bytes that are not UTF-8, which aiohttp hands over as lone surrogates; a space, a quote) is a malformed
credential, refused with the same 401 as an unknown one and counted as a failed authentication, before
it is hashed, looked up or logged.

Admin tokens carry a role (pushauth/operators.py): those in `admin.token_sha256` are owners, those in
`[[admin.tokens]]` have the role configured there. `Credentials.admin(request, action)` refuses a token
whose role may not do `action` with the contract's 403 (`role_forbidden`); called without an action it
asks for an owner, so a route that forgets to name its action fails closed rather than open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from pushauth.config import Application, Settings
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.errors import Forbidden, Unauthorized
from pushauth.operators import require


@dataclass(frozen=True, slots=True)
class Admin:
    token_hash_prefix: str  # identifies which token acted, for the audit trail, without revealing it
    role: str = "owner"
    name: str = ""  # a role token's configured name

    @property
    def who(self) -> str:
        """The audit "who": `admin:<name>` for a named token, else `admin:<hash prefix>`."""
        return f"admin:{self.name or self.token_hash_prefix}"


Principal = Application | Admin


class Credentials:
    def __init__(self, settings: Settings) -> None:
        self._apps = {h: app for app in settings.applications for h in app.api_key_sha256}
        self._admin_settings = settings.admin

    def _lookup(self, token: str) -> Principal | None:
        digest = sha256_hex(token)
        app = self._apps.get(digest)
        if app is not None and any(equal(digest, h) for h in app.api_key_sha256):
            return app
        role = self._admin_settings.role_of(digest)
        if role is not None:
            return Admin(digest[:12], role[0], role[1])
        return None

    def identify(self, request: web.Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("missing Authorization: Bearer <api key>",
                               headers={"WWW-Authenticate": 'Bearer realm="pushauth"'})
        who = self._lookup(token)
        if who is None:
            raise Unauthorized("unknown API key or admin token", headers={"WWW-Authenticate": _INVALID_TOKEN})
        return who

    def application_of(self, request: web.Request) -> Application | None:
        """The application whose API key the request carries, or None; never raises. For the rate limits,
        which count such calls per application before any handler runs (a hash and a dict lookup). A
        malformed token is no application's: its call is counted against its address, which is refused
        while blocked, before the handler that refuses the token runs."""
        try:
            token = bearer_token(request)
        except Unauthorized:
            return None
        who = self._lookup(token) if token is not None else None
        return who if isinstance(who, Application) else None

    def admin(self, request: web.Request, action: str = "accounts") -> Admin:
        """The admin token's holder, if its role may do `action` (an `operators.ACTIONS` key). Without an
        action, an owner token is needed."""
        who = self.identify(request)
        if not isinstance(who, Admin):
            raise Forbidden("this call needs a security-team admin token")
        require(who.role, action)
        return who

    def admin_role(self, token_hash_prefix: str) -> Admin | None:
        """The admin token whose SHA-256 starts with this prefix, as it is configured now (None once it is
        no longer): a console session signed in with a token re-reads its role on every page."""
        for digest in [*self._admin_settings.token_sha256, *(t.sha256 for t in self._admin_settings.tokens)]:
            if digest.startswith(token_hash_prefix):
                role = self._admin_settings.role_of(digest)
                if role is not None:
                    return Admin(token_hash_prefix, role[0], role[1])
        return None

    def application(self, request: web.Request) -> Application:
        who = self.identify(request)
        if not isinstance(who, Application):
            raise Forbidden("this call needs an application API key")
        return who


# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*", re.ASCII)
_INVALID_TOKEN: Final = 'Bearer realm="pushauth", error="invalid_token"'  # noqa: S105 (a header, no secret)


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None when the request has no such header (none,
    or another scheme). Raises `Unauthorized` for a token that is not a b64token: whatever its bytes,
    it is then neither hashed nor compared, and never reaches anything that would have to encode it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer":
        return None
    token = token.strip(" \t")
    if not token:
        return None
    if not _B64TOKEN.fullmatch(token):
        raise Unauthorized("malformed bearer token: not an RFC 6750 b64token",
                           headers={"WWW-Authenticate": _INVALID_TOKEN})
    return token
