"""Request middlewares: a request id and one canonical log line per request, and the error boundary.

The error boundary is the only place an exception becomes a response. An `ApiError` becomes the
contract's `{"error", "message"}` with its status; aiohttp's own HTTP errors (unknown route, wrong method,
body too large) are reshaped the same way; Redis being unreachable is a 503 (fail closed); anything else
is logged with its traceback and the client gets a bare 500 with no detail.
"""

from __future__ import annotations

import random
import time
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pushauth import metrics
from pushauth.errors import ApiError, StoreUnavailable
from pushauth.store import STORE_DOWN_ERRORS

log = structlog.get_logger("pushauth.access")

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid", 429: "rate_limited"}


_STORE_DOWN: tuple[type[Exception], ...] = (StoreUnavailable, *STORE_DOWN_ERRORS)

# Request ids correlate log lines; they authorise nothing and are no secret, so they come from a fast PRNG
# (seeded from os.urandom) rather than a getrandom() system call per request.
_ids = random.Random()  # noqa: S311 (no secret: see above)
# The metrics' labelled children per (route, method, status): prometheus_client's labels() takes a lock and
# builds its key on every call. Bounded, since a client chooses the method.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_CHILDREN_MAX: Final = 1000


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")
    # isascii first: isalnum() is true of "é" and "١" too, and bytes that are not UTF-8 arrive as lone
    # surrogates; neither may be echoed in a response header or written to the log.
    if not (0 < len(request_id) <= 64 and request_id.isascii() and request_id.replace("-", "").isalnum()):
        request_id = f"{_ids.getrandbits(64):016x}"
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        resource = request.match_info.route.resource
        # The route pattern, not the raw path: paths carry ids, never secrets, but patterns aggregate.
        route = resource.canonical if resource is not None else "-"
        seconds = time.perf_counter() - start
        log.info("request", method=request.method, route=route, status=status, ms=round(seconds * 1000, 2))
        _count(route, request.method, status, seconds)


def _count(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    children = _CHILDREN.get(key)
    if children is None:
        children = (metrics.HTTP_REQUESTS.labels(route, method, str(status)),
                    metrics.HTTP_SECONDS.labels(route))
        if len(_CHILDREN) < _CHILDREN_MAX:
            _CHILDREN[key] = children
    children[0].inc()
    children[1].observe(seconds)


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        structlog.contextvars.bind_contextvars(error=exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        message = "request body too large" if exc.status == 413 else exc.reason
        return error_response(exc.status, code, message)
    except _STORE_DOWN as exc:
        log.error("store_unavailable", error=type(exc).__name__)
        metrics.REDIS_ERRORS.labels("api").inc()
        return error_response(503, "unavailable", "pushauth cannot reach its store; try again shortly",
                              {"Retry-After": "2"})
    except Exception:
        log.exception("unhandled_error")
        return error_response(500, "internal", "internal error")
