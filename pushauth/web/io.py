"""Reading requests: bounded JSON bodies into typed structs, query parameters, the caller's address."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
from aiohttp import web

from pushauth import strictjson
from pushauth.errors import ApiError, BadRequest, Unprocessable
from pushauth.web.state import PROXIES

T = TypeVar("T")

_CLIENT_IP: web.RequestKey[str | None] = web.RequestKey("client_ip")


class ApiError408(ApiError):
    status = 408
    default_code = "request_timeout"


# A client that sends its headers and then trickles the body (slowloris) holds a connection and a handler;
# it gets this long for the whole body. aiohttp has no deadline of its own for headers: put a reverse
# proxy with client timeouts in front for that (README, Deploying it).
BODY_TIMEOUT_S = 10.0


async def read_body(request: web.Request) -> bytes:
    # aiohttp enforces client_max_size (413) while reading.
    if request.content.is_eof():
        # The whole body has arrived (a small JSON body comes with its headers): nothing to wait for, so
        # no deadline to arm (a timeout context per request was ~2% of a sign-in's server CPU).
        return await request.read()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()
    except TimeoutError:
        raise ApiError408("the request body did not arrive in time") from None


def decode(body: bytes, type_: type[T]) -> T:
    """The body as `type_`: 400 bad_json when it is not JSON or an object in it has a key twice (checked
    first, so that no copy of a duplicated field is ever judged), then 422 for its fields."""
    if not body:
        raise BadRequest("a JSON body is required", code="bad_json")
    try:
        strictjson.decode(body)
        return msgspec.json.decode(body, type=type_)
    except strictjson.DuplicateKey as exc:
        raise _duplicate(exc) from None
    except msgspec.ValidationError as exc:
        raise Unprocessable(_field_message(str(exc)), code="invalid") from None
    except strictjson.NOT_JSON:
        raise BadRequest("body is not valid JSON", code="bad_json") from None


def peek_str(body: bytes, field: str) -> str | None:
    """A top-level string field of a JSON object body, or None. For reading the one field that must be
    acted on before the body as a whole is validated (the enrollment code). Raises only for a body with a
    key twice (400 bad_json), before anything is acted on: which of two codes would be spent?"""
    try:
        data = strictjson.decode(body)
    except strictjson.DuplicateKey as exc:
        raise _duplicate(exc) from None
    except strictjson.NOT_JSON:
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _duplicate(exc: strictjson.DuplicateKey) -> BadRequest:
    return BadRequest(f"body is not valid JSON: {exc}", code="bad_json")


def _field_message(msg: str) -> str:
    # "Expected `str`, got `int` - at `$.user`" -> "user: Expected `str`, got `int`"
    head, sep, where = msg.rpartition(" - at `$")
    if not sep:
        return msg
    return f"{where.rstrip('`').lstrip('.')}: {head}" if where.rstrip("`") else head


def int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # isascii: str.isdigit() also accepts "²" and "①", which int() then refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}", code="bad_query")
    return int(raw)


def header_text(request: web.Request, name: str) -> str:
    """A header that is no credential, as text to store or show ("" without one). aiohttp decodes header
    bytes as UTF-8 with surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates, which
    nothing downstream (JSON, Redis, a log) can encode: they become U+FFFD here."""
    value = request.headers.get(name, "")
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def client_ip(request: web.Request) -> str | None:
    """The client's address: the peer, or behind a trusted proxy the address it forwarded
    (`server.trusted_proxies`, pushauth.netaddr.TrustedProxies). Worked out once per request: the rate
    limits, the evidence of a phone's answer and the logs must agree on who asked."""
    if _CLIENT_IP not in request:
        request[_CLIENT_IP] = request.app[PROXIES].client(
            request.remote, request.headers.getall("X-Forwarded-For", ()))
    return request[_CLIENT_IP]


def json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")
