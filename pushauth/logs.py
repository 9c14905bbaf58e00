"""structlog set-up: JSON lines when not on a terminal, a readable console on one.

Nothing secret is ever passed to a logger in the first place (codes, keys, tokens, numbers, nonces);
`redact` is a second line of defence that masks values under names that usually hold secrets.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_NAMES = frozenset({"code", "token", "api_key", "authorization", "number", "nonce", "secret",
                           "password", "push_token", "private_key", "remember_token"})


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in _SECRET_NAMES.intersection(event):
        event[name] = "[redacted]"
    return event


def _json_bytes(event: Any, **_: Any) -> bytes:
    # msgspec renders a log line in about half the time of the stdlib json module (bench/README.md);
    # default=str keeps an unexpected value type from ever failing a log call. No newline here: the
    # BytesLogger ends every line itself (a second one left a blank line after each).
    return _ENCODE(event)


_ENCODE = msgspec.json.Encoder(enc_hook=str).encode


class _BadHttpFilter(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (a scanner's garbage, an oversized header) as
    "Error handling request" at ERROR with a full traceback, on the stdlib logger `aiohttp.server`. That
    is a client's mistake, answered 400 by aiohttp itself: log it as one warning line without the
    traceback (the client's bytes are not logged either), and keep real errors as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        structlog.get_logger("pushauth.access").warning("bad_http_request", status=exc.code,
                                                        error=type(exc).__name__)
        return False


_BAD_HTTP_FILTER = _BadHttpFilter()


def configure(level: str = "info", fmt: str = "auto") -> None:
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_HTTP_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_HTTP_FILTER)
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_json_bytes) if json_lines
                     else structlog.dev.ConsoleRenderer())
    factory: Any = (structlog.BytesLoggerFactory(file=sys.stderr.buffer) if json_lines
                    else structlog.PrintLoggerFactory(file=sys.stderr))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
