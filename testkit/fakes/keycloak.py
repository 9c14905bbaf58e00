"""A protocol-faithful fake of one Keycloak realm running CIBA with the HTTP authentication channel.

No Keycloak can run here, so this fake stands in for the two halves of Keycloak that talk to the channel,
written from Keycloak's public source as of **Keycloak 26.4** (github.com/keycloak/keycloak, the 26.4.x
release line: its HttpAuthenticationChannelProvider posts through `org.keycloak.http.simple.SimpleHttp`,
published in Keycloak's API documentation for 26.4.0 and later, and passes the request's additional
parameters; the paths below are under services/src/main/java/org/keycloak/protocol/oidc/grants/
ciba/ unless they say otherwise). Read, never copied: what follows is what those files do, in Python.

1. The channel request (`channel/HttpAuthenticationChannelProvider.java`, `requestAuthentication`): a POST
   to the configured `httpAuthenticationChannelUri` with `Content-Type: application/json`, the JSON of
   `channel/AuthenticationChannelRequest.java` (`login_hint`, `scope`, `binding_message`,
   `is_consent_required`, `acr_values`, and (26.4; older releases sent only those) the request's other
   parameters as further top-level members; null members left out, as
   core/src/main/java/org/keycloak/util/JsonSerialization.java sets NON_NULL), and `Authorization: Bearer
   <token>`, where the token (`createBearerToken`) is an AccessToken the realm signs with its active key
   (`session.tokens().encode`: header `alg`, `typ` "JWT", `kid`) with `typ` "Bearer", `iss` and `aud` the
   realm's issuer, `jti` the request's `auth_result_id`, `azp` the client's id, `sub` the user's id, `iat` and
   `exp` (`iat` + the CIBA expiry: `endpoints/BackchannelAuthenticationEndpoint.java`, default 120 s).
   Anything but 201 and Keycloak gives up (its client gets 503). `request_authentication()` does this.
2. The callback (`endpoints/BackchannelAuthenticationCallbackEndpoint.java`, at
   `<issuer>/protocol/openid-connect/ext/ciba/auth/callback`): JSON `{"status": "SUCCEED" | "UNAUTHORIZED"
   | "CANCELLED"}` (`channel/AuthenticationChannelResponse.java`). Its checks, in its order: no bearer ->
   401 `invalid_token`; a bearer that fails the TokenVerifier's default checks (signature with the realm's
   key, `iss`, `typ` Bearer, `sub` present, active) or its audience -> 403 `invalid_token`; no pending
   request for its `jti` -> 403; a request already decided -> removed, 403; an `azp` that is no enabled
   client -> 400 `invalid_request` "Invalid token recipient", another client's -> 400 "Token recipient
   mismatch"; no status -> 400 "Invalid authentication status"; else the request is approved or denied and
   the answer is 200. Errors are `{"error", "error_description"}` (OAuth2ErrorRepresentation). The handler
   here does all of that and records what it took in `results` and every call in `callbacks`.

Not modelled: the client's own CIBA requests and token polling (`CibaGrantType`), the JWE that wraps the
auth_req_id, the user resolver (the fake sends `login_hint` as given, as the default resolver sends the
username), events, Keycloak's refusal of a non-JSON body (JAX-RS: 415) beyond the content type check, and
the callback's own ping to a ping-mode client (26.4's `sendClientNotificationRequest`): when that client's
notification endpoint fails, Keycloak answers the callback 400 after it has recorded the decision. A 4xx,
final for pushauth's outbox, which is right: a retry would find the request no longer pending (403).
For the tests: `fail_callbacks()` makes the callback answer 503 or drop the connection a few times first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

CALLBACK_PATH = "/protocol/openid-connect/ext/ciba/auth/callback"
CERTS_PATH = "/protocol/openid-connect/certs"
STATUSES = ("SUCCEED", "UNAUTHORIZED", "CANCELLED")
DEFAULT_EXPIRES_IN = 120  # CibaConfig's default expires_in


@dataclass
class Pending:
    """What the realm keeps for a CIBA request (its OAuth2DeviceCodeModel): the client, and the decision."""

    client_id: str
    exp: int
    status: str | None = None  # SUCCEED -> approved; UNAUTHORIZED / CANCELLED -> denied


@dataclass
class Callback:
    """One call to the callback endpoint: what came and what the realm answered."""

    status_code: int
    body: dict[str, Any]
    answer: dict[str, Any] = field(default_factory=dict)


class FakeKeycloak:
    """One realm (`realm`) on 127.0.0.1 with its RSA signing key and its clients (all enabled)."""

    def __init__(self, realm: str = "staff", clients: tuple[str, ...] = ("desk",)) -> None:
        self.realm = realm
        self.clients = set(clients)
        self.key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "use": "sig"})
        self._foreign = RSAKey.generate_key(2048)  # never published
        self.pending: dict[str, Pending] = {}  # by auth_result_id (the bearer's jti)
        self.callbacks: list[Callback] = []
        self._failures: list[Literal["503", "drop"]] = []
        self._decided = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifetime -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get(f"/realms/{self.realm}{CERTS_PATH}", self._certs)
        app.router.add_post(f"/realms/{self.realm}{CALLBACK_PATH}", self._callback)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        # Urls.realmIssuer: <base>/realms/<name>
        return f"{self.url}/realms/{self.realm}"

    @property
    def jwks_url(self) -> str:
        return self.issuer + CERTS_PATH

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "alg": "RS256"}]}

    # -- what Keycloak sends --------------------------------------------------------------------------------

    def bearer(self, user_id: str, client_id: str = "desk", *, expires_in: int = DEFAULT_EXPIRES_IN,
               issuer: str | None = None, audience: str | None = None, typ: str = "Bearer",
               foreign_key: bool = False, register: bool = True) -> tuple[str, str]:
        """(token, auth_result_id) as createBearerToken makes them; the request is remembered as pending
        (`register`). `foreign_key` signs with an unpublished key under the published kid."""
        now = int(time.time())
        auth_result_id = str(uuid.uuid4())
        claims = {"exp": now + expires_in, "iat": now, "jti": auth_result_id, "iss": issuer or self.issuer,
                  "aud": audience or self.issuer, "sub": user_id, "typ": typ, "azp": client_id}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key.kid}
        token = jwt.encode(header, claims, self._foreign if foreign_key else self.key, algorithms=["RS256"])
        if register:
            self.pending[auth_result_id] = Pending(client_id, now + expires_in)
        return token, auth_result_id

    @staticmethod
    def channel_request(login_hint: str, *, scope: str = "openid", binding_message: str | None = None,
                        acr_values: str | None = None, consent_required: bool = False,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """AuthenticationChannelRequest's JSON (nulls left out)."""
        body: dict[str, Any] = {"scope": scope, "binding_message": binding_message, "login_hint": login_hint,
                                "is_consent_required": consent_required, "acr_values": acr_values,
                                **(extra or {})}
        return {k: v for k, v in body.items() if v is not None}

    async def request_authentication(self, channel_uri: str, token: str,
                                     body: dict[str, Any] | bytes) -> tuple[int, Any]:
        """POST the channel request as SimpleHttp does; (status, the parsed answer or its text)."""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = body if isinstance(body, bytes) else None
        async with aiohttp.ClientSession() as http, http.post(
                channel_uri, headers=headers, data=data,
                json=None if isinstance(body, bytes) else body) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text

    # -- what Keycloak receives -----------------------------------------------------------------------------

    def fail_callbacks(self, *how: Literal["503", "drop"]) -> None:
        """The next callbacks answer 503, or have their connection closed unanswered, in this order."""
        self._failures.extend(how)

    async def result(self, auth_result_id: str, within_s: float = 10.0) -> str:
        """The decision the callback recorded for this request; waits for it."""
        async with asyncio.timeout(within_s), self._decided:
            await self._decided.wait_for(lambda: self.pending[auth_result_id].status is not None)
        status = self.pending[auth_result_id].status
        assert status is not None
        return status

    async def _certs(self, _request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        if self._failures:
            how = self._failures.pop(0)
            self.callbacks.append(Callback(503 if how == "503" else 0, {}))
            if how == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)  # never reaches the caller: the connection is gone
            return web.json_response({"error": "unknown_error"}, status=503)
        try:
            body = await request.json() if request.content_type == "application/json" else None
        except ValueError:
            body = None
        status_code, answer = self._take(request.headers.get("Authorization", ""), body)
        self.callbacks.append(Callback(status_code, body if isinstance(body, dict) else {}, answer))
        async with self._decided:
            self._decided.notify_all()
        return web.json_response(answer, status=status_code)

    def _take(self, authorization: str, body: Any) -> tuple[int, dict[str, Any]]:
        """processAuthenticationChannelResult and verifyAuthenticationRequest, in their order."""
        if body is None:  # @Consumes(application/json) / a body Jackson cannot read
            return 400, _error("invalid_request", "Invalid authentication status")
        scheme, _, raw = authorization.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return 401, _error("invalid_token", "Invalid token")
        try:
            claims = jwt.decode(raw.strip(), KeySet([self.key]), algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return 403, _error("invalid_token", "Invalid token")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if (claims.get("iss") != self.issuer or self.issuer not in audiences or claims.get("typ") != "Bearer"
                or not claims.get("sub") or not isinstance(claims.get("exp"), int)
                or claims["exp"] <= time.time()):
            return 403, _error("invalid_token", "Invalid token")
        pending = self.pending.get(str(claims.get("jti")))
        if pending is None:
            return 403, _error("invalid_token", "Invalid token")
        if pending.status is not None:  # cancelRequest: a second answer removes the request
            del self.pending[str(claims.get("jti"))]
            return 403, _error("invalid_token", "Invalid token")
        azp = claims.get("azp")
        if azp not in self.clients:
            return 400, _error("invalid_request", "Invalid token recipient")
        if pending.client_id != azp:
            return 400, _error("invalid_request", "Token recipient mismatch")
        status = body.get("status") if isinstance(body, dict) else None
        if status is None:
            return 400, _error("invalid_request", "Invalid authentication status")
        if status not in STATUSES:  # Jackson cannot map it to the enum: RESTEasy answers 400
            return 400, _error("invalid_request", "Invalid authentication status")
        pending.status = status
        return 200, {}


def _error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description}
