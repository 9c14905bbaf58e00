"""JSON that means one thing: an object that names a key twice is refused, at any depth.

RFC 8259 leaves duplicate names to the parser, and parsers disagree: msgspec, Python's json and browsers
keep the last, others the first, some refuse. A proxy or firewall in front of pushauth that reads the first
`"alg"` or `"user"` would see a different request from the one pushauth acted on. RFC 7515 section 5.2
lets a JWS parser either refuse duplicate header names or keep the last; pushauth refuses, in every JWS
it reads and every request body.

The check costs well under a microsecond for what clients send (PROTOCOL.md's bodies and JWS parts; see
`unique_keys`), because it runs on every request of a sign-in.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Final

import msgspec

# What msgspec raises on bytes that are not JSON: DecodeError, but UnicodeDecodeError for bytes that are
# not UTF-8 inside a string (`{"typ":"\xff"}`), and RecursionError for hostile nesting depth.
NOT_JSON: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_decode: Final = msgspec.json.Decoder().decode


class DuplicateKey(ValueError):
    """A JSON object has the same key twice."""


def decode(data: bytes) -> Any:
    """`data` as untyped Python values. Raises one of NOT_JSON for bytes that are not JSON, DuplicateKey for
    an object that has a key twice."""
    value = _decode(data)
    unique_keys(data, value)
    return value


def unique_keys(data: bytes, value: Any) -> None:
    """Raise DuplicateKey if an object in `data`, which msgspec decoded to `value`, has a key twice.

    Every ':' in a JSON text ends a key, or is inside a string. msgspec keeps one member per distinct key,
    so if the text has no more ':' than `value` has members in all its objects, no string holds a ':' and
    no key came twice: the usual case, decided by a byte count and a walk of the objects. Otherwise (a
    colon in a value, such as an IPv6 address, or a duplicate) Python's json parses the text again and
    looks at every object's keys as written, escapes decoded (`"\\u0061lg"` is `"alg"`)."""
    if data.count(b":") == _members(value):
        return
    try:
        json.loads(data.decode("utf-8"), object_pairs_hook=_pairs_once)
    except DuplicateKey:
        raise
    except (ValueError, RecursionError) as exc:  # what msgspec read but json will not: not JSON either
        raise msgspec.DecodeError("JSON is malformed") from exc


def _members(value: Any) -> int:
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        # json.dumps: the name as an escaped ASCII string, whatever the client put in it
        raise DuplicateKey(f"duplicate key {json.dumps(twice[:40])} in a JSON object")
    return obj
