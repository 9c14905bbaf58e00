"""Reading requests: bounded JSON bodies into typed structs, query parameters, the caller's address."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from pushauth.errors import BadRequest, Unprocessable

T = TypeVar("T")


async def read_body(request: web.Request) -> bytes:
    # aiohttp enforces client_max_size (413) while reading.
    return await request.read()


def decode(body: bytes, type_: type[T]) -> T:
    if not body:
        raise BadRequest("a JSON body is required", code="bad_json")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise Unprocessable(_field_message(str(exc)), code="invalid") from None
    except (msgspec.DecodeError, RecursionError):
        raise BadRequest("body is not valid JSON", code="bad_json") from None


def peek_str(body: bytes, field: str) -> str | None:
    """A top-level string field of a JSON object body, or None; never raises. For reading the one field
    that must be acted on before the body as a whole is validated (the enrollment code)."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


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


def json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")
