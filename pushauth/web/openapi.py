"""The OpenAPI 3.1 document of the whole HTTP surface, served at `/openapi.json`.

Request bodies come from the same msgspec structs the handlers decode with (`web/schemas.py`), so the
document cannot disagree with validation. Every route is listed in `OPERATIONS`; tests/test_openapi.py
checks that the router and this table list the same (method, path) pairs, and that each documented error
shape is the contract's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from pushauth import __version__
from pushauth.web import schemas as s
from pushauth.web.ops import UNLIMITED

routes = web.RouteTableDef()

APP_KEY = "apiKey"
ADMIN = "adminToken"
DEVICE = "deviceSignature"
CONSOLE = "consoleSession"
NONE = ""


@dataclass(frozen=True, slots=True)
class Op:
    method: str
    path: str
    tag: str
    summary: str
    auth: str = NONE
    body: type[msgspec.Struct] | None = None
    ok: int = 200
    errors: tuple[int, ...] = ()
    content: str = "application/json"


_COMMON = (400, 401, 404, 413, 422, 503)
# A phone's calls can also meet 403 `device_pending` (a further phone not approved yet).
_DEVICE = (*_COMMON, 403)

OPERATIONS: tuple[Op, ...] = (
    # -- public ----------------------------------------------------------------------------------------
    Op("GET", "/.well-known/jwks.json", "public", "The server's public signing keys (ES256 JWKS)"),
    Op("GET", "/healthz", "operations", "Liveness: 200 while the process runs"),
    Op("GET", "/readyz", "operations", "Readiness: Redis reachable and keys loaded (workers reported)",
       errors=(503,)),
    Op("GET", "/metrics", "operations", "Prometheus metrics: from metrics.allow_from (this host by default), "
       "or with a metrics token when configured", errors=(401, 403), content="text/plain"),
    Op("GET", "/openapi.json", "operations", "This document"),
    # -- login flow ------------------------------------------------------------------------------------
    Op("POST", "/v1/challenges", "login flow", "Ask for a sign-in prompt (or learn that none is needed)",
       APP_KEY, s.CreateChallenge, 201, (*_COMMON, 403)),
    Op("GET", "/v1/challenges/{id}", "login flow", "Challenge status; `wait` long-polls up to 30 s", APP_KEY,
       errors=_COMMON),
    Op("DELETE", "/v1/challenges/{id}", "login flow", "Cancel a pending challenge", APP_KEY,
       errors=(*_COMMON, 409)),
    Op("POST", "/v1/enrollments", "login flow", "One-time enrollment code and QR URI for a user",
       APP_KEY, s.CreateEnrollment, 201, (*_COMMON, 403)),
    Op("POST", "/v1/access-codes/verify", "login flow", "Check a temporary access code (single use)",
       APP_KEY, s.VerifyAccessCode, 200, _COMMON),
    Op("POST", "/v1/codes/verify", "login flow", "Check an offline one-time code (TOTP): a signed "
       "assertion when valid", APP_KEY, s.VerifyCode, 200, (*_COMMON, 429)),
    Op("POST", "/v1/remembered/revoke", "login flow", "Forget one remembered browser", APP_KEY,
       s.RevokeRemembered, 200, _COMMON),
    Op("POST", "/v1/signals/password-reset", "login flow", "The user's password was reset: forget every "
       "remembered browser", APP_KEY, s.UserSignal, 200, _COMMON),
    # -- phone -----------------------------------------------------------------------------------------
    Op("POST", "/v1/devices", "phone", "Register a phone (enrollment; JWS carries the new `jwk`)", DEVICE,
       s.RegisterDevice, 201, (*_COMMON, 403)),
    Op("GET", "/v1/device/challenges", "phone", "Pending challenges for this phone (polling)", DEVICE,
       errors=_DEVICE),
    Op("GET", "/v1/device/challenges/{id}", "phone", "One challenge as a server-signed JWS", DEVICE,
       errors=(*_DEVICE, 409)),
    Op("POST", "/v1/device/challenges/{id}/response", "phone", "Approve (with the number) or deny", DEVICE,
       s.DeviceAnswer, 200, (*_DEVICE, 409)),
    Op("PUT", "/v1/device/push-token", "phone", "Replace this phone's push token", DEVICE,
       s.UpdatePushToken, 200, _DEVICE),
    Op("GET", "/v1/device/activation", "phone", "Is this phone active yet (a further phone waits for "
       "approval on one of the user's phones)", DEVICE, errors=_DEVICE),
    Op("DELETE", "/v1/device", "phone", "Unenroll this phone", DEVICE, errors=_DEVICE),
    Op("POST", "/v1/device/pause", "phone", "Pause the user's prompts (holiday)", DEVICE, s.Pause, 200,
       _DEVICE),
    Op("DELETE", "/v1/device/pause", "phone", "Resume the user's prompts", DEVICE, errors=_DEVICE),
    Op("GET", "/v1/device/devices", "phone", "The user's phones", DEVICE, errors=_DEVICE),
    Op("DELETE", "/v1/device/devices/{device_id}", "phone", "Revoke another phone of the user (lost)",
       DEVICE, errors=_DEVICE),
    Op("GET", "/v1/device/notices", "phone", "Notices for this phone's user (a phone was added), once",
       DEVICE, errors=_DEVICE),
    # -- security team ---------------------------------------------------------------------------------
    Op("GET", "/v1/alerts", "security team", "Alerts, newest first or `order=severity` (`status`, `user`, "
       "`severity`, `kind`, `app`, `since`, `until`, `range`, `start`, `limit`)", ADMIN,
       errors=(*_COMMON, 403)),
    Op("GET", "/v1/alerts/{id}", "security team", "One alert with its evidence", ADMIN,
       errors=(*_COMMON, 403)),
    Op("POST", "/v1/alerts/{id}/ack", "security team", "Acknowledge an alert (optional note)", ADMIN,
       s.AckAlert, 200, (*_COMMON, 403, 409)),
    Op("GET", "/v1/users/{user}", "security team", "A user: devices, lock, suspension, recent challenges",
       ADMIN, errors=(*_COMMON, 403)),
    Op("POST", "/v1/users/{user}/unlock", "security team", "Unlock and/or lift a suspension", ADMIN,
       s.Unlock, 200, (*_COMMON, 403)),
    Op("POST", "/v1/users/{user}/lock", "security team", "Lock a user (pending prompts denied)", ADMIN,
       errors=(*_COMMON, 403)),
    Op("DELETE", "/v1/users/{user}/devices/{device_id}", "security team", "Revoke a phone", ADMIN,
       errors=(*_COMMON, 403)),
    Op("POST", "/v1/users/{user}/devices/{device_id}/allow-revoke", "security team",
       "Let a phone in its cool-down revoke the user's older phones", ADMIN, errors=(*_COMMON, 403)),
    Op("PUT", "/v1/users/{user}/policy", "security team", "Mark an account exempt or shared", ADMIN,
       s.AccountPolicy, 200, (*_COMMON, 403, 409)),
    Op("POST", "/v1/users/{user}/access-codes", "security team", "Issue a temporary access code", ADMIN,
       ok=201, errors=(*_COMMON, 403)),
    Op("GET", "/v1/users/{user}/remembered", "security team", "The user's remembered browsers", ADMIN,
       errors=(*_COMMON, 403)),
    Op("DELETE", "/v1/users/{user}/remembered", "security team", "Forget all remembered browsers", ADMIN,
       errors=(*_COMMON, 403)),
    Op("DELETE", "/v1/users/{user}/remembered/{token_id}", "security team", "Forget one remembered browser",
       ADMIN, errors=(*_COMMON, 403)),
    Op("GET", "/v1/users/{user}/otp-methods", "security team", "The user's one-time-code methods (no seed)",
       ADMIN, errors=(*_COMMON, 403)),
    Op("POST", "/v1/users/{user}/otp-methods", "security team", "Enroll an authenticator app: otpauth:// URI "
       "and QR code, shown once; pending until activated", ADMIN, s.EnrollCodeMethod, 201,
       (*_COMMON, 403)),
    Op("POST", "/v1/users/{user}/otp-methods/{id}/activate", "security team", "Activate a pending method "
       "with one of its codes", ADMIN, s.ActivateCodeMethod, 200, (*_COMMON, 403, 409)),
    Op("DELETE", "/v1/users/{user}/otp-methods/{id}", "security team", "Revoke a one-time-code method",
       ADMIN, errors=(*_COMMON, 403)),
    Op("POST", "/v1/otp-methods/import", "security team", "Import hardware tokens (RFC 6030 PSKC or CSV), "
       "each assigned to a user", ADMIN, s.ImportTokens, 201, (*_COMMON, 403)),
    Op("GET", "/v1/audit", "security team", "The audit trail (`user`, `who`, `what`, `before`, `limit`); "
       "`complete` false when a filtered read stopped at its scan bound, `resume_before` where to search on",
       ADMIN, errors=(*_COMMON, 403)),
    Op("GET", "/v1/console-accounts", "security team", "Console accounts and their roles (owner)", ADMIN,
       errors=(*_COMMON, 403)),
    Op("PUT", "/v1/console-accounts/{user}", "security team", "Add a console account or change its role "
       "(owner)", ADMIN, s.ConsoleAccount, 200, (*_COMMON, 403)),
    Op("DELETE", "/v1/console-accounts/{user}", "security team", "Remove a console account (owner)", ADMIN,
       errors=(*_COMMON, 403)),
    Op("GET", "/v1/alert-deliveries/dead", "security team", "Alert deliveries in the dead letter", ADMIN,
       errors=(*_COMMON, 403)),
    Op("POST", "/v1/alert-deliveries/dead/{entry}/replay", "security team", "Replay a dead delivery",
       ADMIN, errors=(*_COMMON, 403)),
    Op("GET", "/v1/alert-sinks", "security team", "Configured alert sinks and which are disabled", ADMIN,
       errors=(*_COMMON, 403)),
    Op("POST", "/v1/alert-sinks/{name}/enable", "security team", "Re-enable a sink a 410 disabled", ADMIN,
       errors=(*_COMMON, 403)),
)

# HTML pages (the console and the demo login page) are listed too, so the route check covers them.
PAGES: tuple[Op, ...] = (
    Op("GET", "/console/login", "console", "Sign-in form", content="text/html"),
    Op("POST", "/console/login", "console", "Sign in with an admin token", content="text/html"),
    Op("POST", "/console/login/push", "console", "Sign in with a push to the person's own phone: start"),
    Op("POST", "/console/login/push/wait", "console", "Sign in with a push: wait for the phone's answer"),
    Op("GET", "/console/accounts", "console", "Console accounts (owners)", CONSOLE, content="text/html"),
    Op("POST", "/console/accounts", "console", "Add a console account or change its role (owners)", CONSOLE,
       content="text/html"),
    Op("POST", "/console/accounts/{user}/remove", "console", "Remove a console account (owners)", CONSOLE,
       content="text/html"),
    Op("GET", "/console/history", "console", "Acknowledged alerts, paginated", CONSOLE, content="text/html"),
    Op("GET", "/console/audit", "console", "The audit trail, filtered and paginated", CONSOLE,
       content="text/html"),
    Op("GET", "/console/audit.csv", "console", "The filtered audit trail as CSV", CONSOLE,
       content="text/csv"),
    Op("POST", "/console/users/{user}/enrollment", "console", "Enroll a new phone (QR code on screen)",
       CONSOLE, content="text/html"),
    Op("POST", "/console/logout", "console", "Sign out", CONSOLE, content="text/html"),
    Op("GET", "/console", "console", "Open alerts, live", CONSOLE, content="text/html"),
    Op("GET", "/console/events", "console", "Server-sent events: new and escalated alerts", CONSOLE,
       content="text/event-stream"),
    Op("GET", "/console/alerts/{id}", "console", "An incident and its evidence", CONSOLE,
       content="text/html"),
    Op("POST", "/console/alerts/{id}/ack", "console", "Acknowledge", CONSOLE, content="text/html"),
    Op("GET", "/console/users", "console", "Look up a user", CONSOLE, content="text/html"),
    Op("GET", "/console/users/{user}", "console", "A user and the actions on them", CONSOLE,
       content="text/html"),
    Op("POST", "/console/users/{user}/unlock", "console", "Unlock / lift a suspension", CONSOLE,
       content="text/html"),
    Op("POST", "/console/users/{user}/lock", "console", "Lock", CONSOLE, content="text/html"),
    Op("POST", "/console/users/{user}/devices/{device_id}/revoke", "console", "Revoke a phone", CONSOLE,
       content="text/html"),
    Op("POST", "/console/users/{user}/access-code", "console", "Issue an access code", CONSOLE,
       content="text/html"),
    Op("POST", "/console/users/{user}/otp-methods", "console", "Set up an authenticator app (QR code once)",
       CONSOLE, content="text/html"),
    Op("POST", "/console/users/{user}/otp-methods/{method_id}/activate", "console", "Activate it with a code",
       CONSOLE, content="text/html"),
    Op("POST", "/console/users/{user}/otp-methods/{method_id}/revoke", "console",
       "Revoke a one-time-code method", CONSOLE, content="text/html"),
    Op("GET", "/console/static/{name}", "console", "Console CSS and JavaScript", content="text/css"),
    Op("GET", "/demo/login", "demo", "Sample login page (demo mode only)", content="text/html"),
    Op("POST", "/demo/challenges", "demo", "Sample login page: start a sign-in (demo mode only)"),
    Op("GET", "/demo/challenges/{id}", "demo", "Sample login page: wait for the answer (demo mode only)"),
)

_ERROR = {"type": "object", "required": ["error", "message"], "additionalProperties": False,
          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}
_RETRY_AFTER = {"required": True, "description": "Seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1}}
_STATUS_TEXT = {200: "OK", 201: "Created", 400: "Malformed request", 401: "Missing or bad credentials",
                403: "Not allowed (locked, suspended, not_enrolled, shared_account, device_pending, "
                     "cooldown, ...)",
                404: "Unknown, or not yours",
                409: "State conflict (already decided, expired, containment_active)",
                413: "Body too large", 422: "Well-formed but invalid",
                429: "Rate limited: per client address, per application, or after failed authentications; "
                     "or a per-user limit (push bombing, access-code attempts)",
                503: "Redis unreachable: failing closed"}


def document() -> dict[str, Any]:
    bodies = sorted({op.body for op in OPERATIONS if op.body is not None}, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    components["Error"] = _ERROR
    paths: dict[str, dict[str, Any]] = {}
    for op in (*OPERATIONS, *PAGES):
        item: dict[str, Any] = {"tags": [op.tag], "summary": op.summary,
                                "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}"
                                .replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")}
        params = [p[1:-1] for p in op.path.split("/") if p.startswith("{")]
        if params:
            item["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                  for p in params]
        if op.auth:
            item["security"] = [{op.auth: []}]
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
        responses: dict[str, Any] = {str(op.ok): {"description": _STATUS_TEXT.get(op.ok, "OK"),
                                                  "content": {op.content: {}}}}
        # Every route but the health checks is under a rate limit (pushauth/web/limits.py); /metrics under
        # the auth-failure block only.
        errors = op.errors if op.path in UNLIMITED else (*op.errors, 429)
        for status in sorted(set(errors)):
            responses[str(status)] = {"description": _STATUS_TEXT[status], "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            if status in (429, 503):
                responses[str(status)]["headers"] = {"Retry-After": _RETRY_AFTER}
        item["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "pushauth", "version": __version__,
                 "description": "Push sign-in approval. The wire contract; PROTOCOL.md explains each flow, "
                                "with test vectors."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            APP_KEY: {"type": "http", "scheme": "bearer", "description": "A login flow's API key"},
            ADMIN: {"type": "http", "scheme": "bearer", "description": "A security-team admin token"},
            DEVICE: {"type": "apiKey", "in": "header", "name": "Authorization",
                     "description": "PushAuth <JWS signed with the phone's P-256 key> (PROTOCOL.md)"},
            CONSOLE: {"type": "apiKey", "in": "cookie", "name": "pushauth_console",
                      "description": "Console session cookie (CSRF token on every form)"},
        }},
    }


_DOCUMENT = msgspec.json.encode(document())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_DOCUMENT, content_type="application/json")
