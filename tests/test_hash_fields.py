"""Every hash field a Lua script names is documented in `pushauth.store.keyspace.HASH_FIELDS` (issue 15,
item 1: "readable hash field names, or one documented table of them").

The scripts are read as text: each `redis.call('HSET' | 'HSETNX' | 'HINCRBY' | 'HGET' | 'HMGET' | 'HDEL',
<key>, <fields...>)` is split into its arguments, the key expression tells which kind of hash it is
(`KEY_KINDS`), and each field given as a literal ('st') or as a literal and a suffix ('pd:' .. did) must be
in that kind's table. Fields passed in from Python (ARGV) are checked on a real Redis instead, by
tests/test_keyspace_table.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pushauth.store.keyspace import HASH_FIELDS, KEYS, field_spec

REPO = Path(__file__).resolve().parent.parent
LUA = sorted(REPO.glob("pushauth/**/lua/*.lua"))
COMMANDS = ("HSET", "HSETNX", "HINCRBY", "HGET", "HMGET", "HDEL")
WRITES = ("HSET", "HSETNX", "HINCRBY")

# Which kind of hash a script's key expression names: by expression anywhere, then by (file, expression)
# for KEYS[n] (each script's header says what its KEYS are).
KEY_KINDS: dict[str, str] = {
    "uk('user')": "user", "uk('acode')": "acode", "uk('seen')": "seen", "uk('remembered')": "remembered",
    "uk('alert:' .. aid)": "alert", "akey": "alert",
    "uk('ch:' .. cid)": "challenge", "ckey": "challenge",
    "uk('dev:' .. did)": "device", "uk('dev:' .. c[8])": "device", "uk('dev:' .. by)": "device",
    "uk('dev:' .. target)": "device", "dkey": "device", "ARGV[1] .. did": "device",
    "uk('otp:' .. mid)": "otp", "uk('dev:' .. method[2])": "device",
}
FILE_KEY_KINDS: dict[tuple[str, str], str] = {
    ("ledger.lua", "KEYS[1]"): "user",
    ("ledger.lua", "key"): "challenge",  # deny_open's loops
    ("device_gate.lua", "KEYS[2]"): "device",
    ("device_gate.lua", "key"): "challenge",  # mark_seen
    ("ack_alert.lua", "KEYS[1]"): "alert",
    ("forget_alert_failures.lua", "KEYS[1]"): "alert",
    ("mark_alert_delivery.lua", "KEYS[1]"): "alert",
    ("enroll_mode.lua", "KEYS[1]"): "user",
    ("pause_prompts.lua", "KEYS[1]"): "user",
    ("revoke_device.lua", "KEYS[2]"): "device",
    ("update_push_token.lua", "KEYS[1]"): "device",
    ("mark_stale.lua", "KEYS[1]"): "device",
    ("read_targets.lua", "KEYS[1]"): "challenge",
    ("set_delivery.lua", "KEYS[1]"): "challenge",
    ("rate_limit.lua", "KEYS[1]"): "rate_bucket",
    ("rate_auth_failure.lua", "KEYS[1]"): "rate_bucket",
    ("activate_code.lua", "key"): "otp",
    ("reseal_seed.lua", "KEYS[1]"): "otp",
    ("deliver_seed.lua", "KEYS[1]"): "otp",
    ("rate_lease.lua", "KEYS[1]"): "rate_bucket",
}
_CALL = re.compile(r"redis\.call\(\s*'(" + "|".join(COMMANDS) + r")'\s*,")
_LITERAL = re.compile(r"^'([^'\\]*)'$")
_LITERAL_THEN = re.compile(r"^'([^'\\]*)'\s*\.\.\s*(.+)$")


def _arguments(text: str, start: int) -> list[str]:
    """The comma-separated arguments from `start` up to the call's closing parenthesis (nesting and
    strings respected)."""
    args, depth, current, i = [], 0, [], start
    while True:
        ch = text[i]
        if ch in "'\"":
            end = text.index(ch, i + 1)
            current.append(text[i:end + 1])
            i = end + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append("".join(current).strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1


def _calls(path: Path) -> list[tuple[int, str, str, list[str]]]:
    """(line, command, key expression, field expressions) of each hash command in the file."""
    text = path.read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] if not line.lstrip().startswith("--@") else ""
                     for line in text.splitlines())
    out = []
    for m in _CALL.finditer(code):
        command = m.group(1)
        args = _arguments(code, m.end())
        key, rest = args[0], args[1:]
        fields = rest[::2] if command in ("HSET", "HSETNX") else rest[:1] if command in ("HINCRBY", "HGET") \
            else rest
        out.append((code.count("\n", 0, m.start()) + 1, command, key, fields))
    return out


def _field(expression: str) -> tuple[str, bool] | None:
    """A field expression's literal name (and whether a suffix follows it), or None when it is not
    spelled out here (ARGV, a variable, unpack(...))."""
    if m := _LITERAL.match(expression):
        return m.group(1), False
    if m := _LITERAL_THEN.match(expression):
        return m.group(1), True
    return None


def _documented(kind: str, name: str, has_suffix: bool) -> bool:
    if not has_suffix:
        return field_spec(kind, name) is not None
    # 'pd:' .. did: a family in the table starting with exactly that literal, then a <placeholder>
    return any(pattern.startswith(name + "<") for pattern in HASH_FIELDS[kind])


def test_the_reader_finds_the_calls() -> None:
    calls = {(p.name, c[1], c[2]): c[3] for p in LUA for c in _calls(p)}
    assert calls[("update_push_token.lua", "HSET", "KEYS[1]")] == ["'pprov'", "'ptok'", "'ptok_at'"]
    assert calls[("set_delivery.lua", "HSET", "KEYS[1]")] == ["ARGV[1]"]
    assert ("cancel.lua", "HGET", "ckey") in calls
    assert sum(1 for p in LUA for c in _calls(p) if c[1] in WRITES) > 40


@pytest.mark.parametrize("path", LUA, ids=[p.name for p in LUA])
def test_every_field_a_script_names_is_documented(path: Path) -> None:
    unknown_keys, undocumented = [], []
    for line, command, key, fields in _calls(path):
        kind = FILE_KEY_KINDS.get((path.name, key)) or KEY_KINDS.get(key)
        if kind is None:
            unknown_keys.append(f"{path.name}:{line}: {command} {key}")
            continue
        for expression in fields:
            if (found := _field(expression)) is None:
                continue  # from ARGV: checked on a real Redis (tests/test_keyspace_table.py)
            name, has_suffix = found
            if not _documented(kind, name, has_suffix):
                written = "writes" if command in WRITES else "reads"
                undocumented.append(f"{path.relative_to(REPO)}:{line}: {command} {written} "
                                    f"{name}{'...' if has_suffix else ''} of a {kind} hash")
    assert not unknown_keys, f"say which kind of hash these keys are (KEY_KINDS): {unknown_keys}"
    assert not undocumented, "fields missing from pushauth.store.keyspace.HASH_FIELDS:\n" + "\n".join(
        undocumented)


def test_every_hash_key_names_its_fields_and_every_field_table_is_used() -> None:
    hashes = [spec for spec in KEYS if spec.type == "hash"]
    assert all(spec.fields in HASH_FIELDS for spec in hashes), [s.pattern for s in hashes if not s.fields]
    assert {spec.fields for spec in hashes} == set(HASH_FIELDS)
    assert all(spec.fields is None for spec in KEYS if spec.type != "hash")
