"""Bearer credentials for login flows (per-application API keys) and the security team (admin tokens).

Only SHA-256 digests are configured. A presented key is hashed and looked up; the lookup is by digest, so
its timing reveals nothing about any stored key, and the final comparison is constant-time anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pushauth.config import Application, Settings
from pushauth.crypto.secrets import equal, sha256_hex
from pushauth.errors import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class Admin:
    token_hash_prefix: str  # identifies which token acted, for the audit trail, without revealing it


Principal = Application | Admin


class Credentials:
    def __init__(self, settings: Settings) -> None:
        self._apps = {h: app for app in settings.applications for h in app.api_key_sha256}
        self._admins = set(settings.admin.token_sha256)

    def _lookup(self, token: str) -> Principal | None:
        digest = sha256_hex(token)
        app = self._apps.get(digest)
        if app is not None and any(equal(digest, h) for h in app.api_key_sha256):
            return app
        if digest in self._admins:
            return Admin(digest[:12])
        return None

    def identify(self, request: web.Request) -> Principal:
        token = _bearer(request)
        if token is None:
            raise Unauthorized("missing Authorization: Bearer <api key>",
                               headers={"WWW-Authenticate": 'Bearer realm="pushauth"'})
        who = self._lookup(token)
        if who is None:
            raise Unauthorized("unknown API key or admin token",
                               headers={"WWW-Authenticate": 'Bearer realm="pushauth", error="invalid_token"'})
        return who

    def application_of(self, request: web.Request) -> Application | None:
        """The application whose API key the request carries, or None; never raises. For the rate limits,
        which count such calls per application before any handler runs (a hash and a dict lookup)."""
        token = _bearer(request)
        who = self._lookup(token) if token is not None else None
        return who if isinstance(who, Application) else None

    def admin(self, request: web.Request) -> Admin:
        who = self.identify(request)
        if not isinstance(who, Admin):
            raise Forbidden("this call needs a security-team admin token")
        return who

    def application(self, request: web.Request) -> Application:
        who = self.identify(request)
        if not isinstance(who, Application):
            raise Forbidden("this call needs an application API key")
        return who


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme == "Bearer" and token else None
