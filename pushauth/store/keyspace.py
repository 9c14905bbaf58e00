"""Every Redis key pushauth writes, in one table (`KEYS`), and the field names of its hashes (`HASH_FIELDS`).

Key names start with the configured prefix (`store.prefix`, e.g. "pa"). A user's keys share the hash tag
`{<uid>}`, so they live in one Redis Cluster slot and one script can change a challenge, the user's counters
and the alert it raises together; the scripts that include the detection ledger build them from the user's key
prefix (`KeySpace.user_prefix`). The other keys are global, each family under a tag of its own (`{alerts}`,
`{push}`, `{expiry}`, `{audit}`, `{workers}`, `{notify}`), or untagged where a key is the only one its command
touches (the user index, enrollment codes, console sessions, rate-limit buckets, RADIUS States and request
claims). What links a user's slot to the global alert stream is the per-user outbox (`aout`): an alert is
written with its cause, announced to the stream right after, and announced again by the alert worker's sweep
if the server died in between (pushauth/alerts/store.py).

`KeySpace` builds the names most code uses; `KeySpec.built_by` says where each name is built (some in
Lua from the user's prefix, a few outside this module). `describe(key)` names the row a concrete key
belongs to; tests/test_keyspace_table.py runs every part of pushauth on a real Redis and fails on any key
this table does not describe; `render()` prints it.

The table, as `help()` shows it, follows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from pushauth.crypto.secrets import sha256_hex

# -- the key table ---------------------------------------------------------------------------------------

# What each <placeholder> of a pattern stands for in a concrete key (pushauth/ids.py makes the ids).
_B32 = "[a-z2-7]"
PLACEHOLDERS: dict[str, str] = {
    "prefix": r"[A-Za-z0-9_-]{1,16}",  # store.prefix (checked in pushauth/config.py)
    "uid": rf"{_B32}{{16}}",
    "cid": rf"c{_B32}{{42}}",  # challenge id: "c" + uid + 26
    "did": rf"d{_B32}{{32}}",  # device id: "d" + uid + 16
    "aid": rf"a{_B32}{{32}}",  # alert id: "a" + uid + 16
    "tid": rf"t{_B32}{{32}}",  # one-time-code (TOTP) method id: "t" + uid + 16 (pushauth/codes/store.py)
    "jti": r"[A-Za-z0-9_-]{16,64}",  # a signed request's id (ids.valid_jti)
    "jkt": r"[A-Za-z0-9_-]{1,128}",  # the server key's JWK thumbprint the enrollment QR code names
    "sha256(user)": r"[0-9a-f]{64}",
    "sha256(code)": r"[0-9a-f]{64}",
    "sha256(session id)": r"[0-9a-f]{64}",
    "sha256(State)": r"[0-9a-f]{64}",
    "sha256(request)": r"[0-9a-f]{64}",  # a RADIUS request (KeySpace.radius_request)
    "sha256(token)": r"[0-9a-f]{64}",
    "sign-in id": r"[A-Za-z0-9_-]{22,64}",
    "notification id": r"[A-Za-z0-9_-]{22}",
    "worker kind": r"push|alerts|expiry|radius",  # pushauth.store.heartbeats.WORKER_KINDS
    "address": r".+",  # a client address, IPv6 as its /64 ("<network>/64")
    "application id": r".+",
    "RADIUS client name": r".+",
    # in hash field names
    "sink": r".+",  # an alert sink's configured name
    "version": r"[0-9]+",  # an alert's version
    "network": r".+",
    "location": r".+",
    "worker name": r".+",
    "user name": r".+",
}
_PLACEHOLDER = re.compile(r"<([^<>]+)>")


def _compile(pattern: str) -> re.Pattern[str]:
    """A pattern's `<placeholders>` as their regular expressions, everything else literal."""
    parts = []
    last = 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last:m.start()]))
        parts.append(f"(?:{PLACEHOLDERS[m.group(1)]})")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts))


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One kind of key: its name pattern (`<placeholders>`, literal `{}` are Redis hash tags), Redis type,
    the package that owns it, how long it lives, what it is for, and where its name is built."""

    pattern: str
    type: str  # string | hash | set | zset | list | stream | channel (pub/sub: no key is stored)
    owner: str
    lifetime: str
    purpose: str
    built_by: str
    fields: str | None = None  # the kind of hash in HASH_FIELDS
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile(self.pattern))


_U = "<prefix>:{<uid>}:"  # a user's keys
_LEDGER = "(the ledger's uk(), from KeySpace.user_prefix)"

KEYS: tuple[KeySpec, ...] = (
    # -- the user index, then a user's own slot --
    KeySpec("<prefix>:u:<sha256(user)>", "string", "pushauth.devices", "permanent",
            "user index: the canonical user name's uid (own slot; never changes once set)",
            "KeySpace.user_index"),
    KeySpec(_U + "user", "hash", "pushauth.accounts", "permanent",
            "the user's state: name, lock, suspension, pause, policy flags, counters",
            f"KeySpace.user; Lua: uk('user') {_LEDGER}", fields="user"),
    KeySpec(_U + "devs", "set", "pushauth.devices", "permanent (members leave when revoked)",
            "the user's active device ids", f"KeySpace.devices; Lua: uk('devs') {_LEDGER}"),
    KeySpec(_U + "ndevs", "set", "pushauth.devices",
            "permanent (members leave when approved or refused)",
            "further phones waiting for an existing phone's approval",
            f"KeySpace.new_devices; Lua: uk('ndevs') {_LEDGER}"),
    KeySpec(_U + "dev:<did>", "hash", "pushauth.devices",
            "permanent once active; a phone waiting for approval expires with its approval prompt",
            "a device: public key, push token, status",
            f"KeySpace.device; Lua: uk('dev:' .. did) {_LEDGER}; read_targets.lua from ARGV[1]",
            fields="device"),
    KeySpec(_U + "notices:<did>", "list", "pushauth.devices",
            "until the phone reads them (GET /v1/device/notices deletes it); 50 newest kept",
            "notices for a phone to show its user (another phone was added), newest first",
            f"KeySpace.notices; Lua: uk('notices:' .. other) {_LEDGER}"),
    KeySpec(_U + "jti:<did>:<jti>", "string", "pushauth.devices",
            "2 x device_auth.max_skew_s + 5 s (EX)",
            "replay cache of a device's signed requests (DEVICE_GATE)", "KeySpace.jti"),
    KeySpec(_U + "ch:<cid>", "hash", "pushauth.challenges",
            "until exp + challenges.retention_s (EXPIREAT)",
            "a challenge (sign-in prompt, or an approval prompt for a further phone) and its push delivery",
            f"KeySpace.challenge; Lua: uk('ch:' .. cid) {_LEDGER}; from KeySpace.challenge_prefix in "
            "device_gate.lua and revoke_device.lua", fields="challenge"),
    KeySpec(_U + "pending", "zset", "pushauth.challenges",
            "permanent (members leave when decided or settled)",
            "the user's pending challenge ids by expiry", f"KeySpace.pending; Lua: uk('pending') {_LEDGER}"),
    KeySpec(_U + "recent", "zset", "pushauth.challenges", "permanent, trimmed to 7 days and 200 entries",
            "the user's recent challenge ids by creation (evidence, the admin view)",
            f"KeySpace.recent; Lua: uk('recent') {_LEDGER}"),
    KeySpec(_U + "remembered", "hash", "pushauth.challenges",
            "permanent; expired entries pruned past 100, all dropped on a new phone or 'not me'",
            "remembered browsers: token id -> {app, browser hash, exp}",
            f"KeySpace.remembered; Lua: uk('remembered') {_LEDGER}", fields="remembered"),
    KeySpec(_U + "hist", "zset", "pushauth.detection", "permanent, trimmed to the longest detection window",
            "security history for the detection windows (\"<seq>:<kind>:<cid>\" by time)",
            f"Lua only: uk('hist') {_LEDGER}"),
    KeySpec(_U + "seen", "hash", "pushauth.detection", "permanent",
            "networks and locations of approved sign-ins, and when (new_context)",
            f"Lua only: uk('seen') {_LEDGER}", fields="seen"),
    KeySpec(_U + "incident", "string", "pushauth.detection", "detection.incident_window_s (EX)",
            "the open incident (alert id) new events join",
            f"KeySpace.incident; Lua: uk('incident') {_LEDGER}"),
    KeySpec(_U + "acode", "hash", "pushauth.accounts",
            "until the code expires (EXPIREAT); deleted when used",
            "the user's temporary access code (hashed)",
            f"KeySpace.access_code; Lua: uk('acode') {_LEDGER}", fields="acode"),
    KeySpec(_U + "otps", "set", "pushauth.codes", "permanent (members leave when revoked)",
            "the user's one-time-code (TOTP) method ids, pending and active",
            "KeySpace.otp_methods; Lua: uk('otps') " + _LEDGER),
    KeySpec(_U + "otp:<tid>", "hash", "pushauth.codes",
            "permanent once active; pending: until codes.pending_ttl_s (EXPIREAT), deleted when revoked",
            "a one-time-code method: its seed sealed under the key-encryption key, how its codes are made",
            "KeySpace.otp_method; Lua: uk('otp:' .. tid) " + _LEDGER, fields="otp"),
    KeySpec(_U + "alert:<aid>", "hash", "pushauth.alerts", "permanent",
            "an alert (incident), its evidence and its delivery to each sink",
            f"KeySpace.alert; Lua: uk('alert:' .. aid) {_LEDGER}", fields="alert"),
    KeySpec(_U + "alerts", "zset", "pushauth.alerts", "permanent", "the user's alert ids by creation",
            f"KeySpace.alerts; Lua: uk('alerts') {_LEDGER}"),
    KeySpec(_U + "aout", "zset", "pushauth.alerts",
            "permanent (members leave once the alert worker has them)",
            "alert versions (\"<aid>|<version>\") not yet handled by the alert worker (outbox)",
            f"KeySpace.alert_outbox; Lua: uk('aout') {_LEDGER}; AlertStore.sweep's SCAN pattern"),
    # -- enrollment --
    KeySpec("<prefix>:enr:<sha256(code)>", "hash", "pushauth.devices",
            "enrollment.code_ttl_s (EXPIRE); deleted when used", "an unused enrollment code (own slot)",
            "KeySpace.enrollment", fields="enrollment"),
    KeySpec("<prefix>:jti:enr:<jkt>:<jti>", "string", "pushauth.devices",
            "2 x device_auth.max_skew_s + 5 s (EX)",
            "replay cache of enrollment requests (no uid yet)", "KeySpace.enrollment_jti"),
    # -- global --
    KeySpec("<prefix>:events", "channel", "pushauth.challenges", "pub/sub: nothing is stored",
            "challenge decisions, waking the login flows that wait on any server", "KeySpace.events"),
    KeySpec("<prefix>:{alerts}:index", "zset", "pushauth.alerts", "permanent",
            "every alert (\"<uid>/<aid>\") by creation: the security team's list", "KeySpace.alert_index"),
    KeySpec("<prefix>:{alerts}:open", "zset", "pushauth.alerts",
            "permanent (members leave when acknowledged)",
            "the alerts not yet acknowledged", "KeySpace.alert_open"),
    KeySpec("<prefix>:{alerts}:disabled", "hash", "pushauth.alerts", "permanent (until re-enabled)",
            "alert sinks disabled by a 410, and when", "KeySpace.alert_sinks_disabled",
            fields="sinks_disabled"),
    KeySpec("<prefix>:{alerts}:stream", "stream", "pushauth.alerts", "capped (~1,000,000 entries)",
            "alert versions to deliver (consumer group \"alerts\")",
            "StreamNames.for_(prefix, 'alerts') (pushauth/store/streams.py)"),
    KeySpec("<prefix>:{alerts}:delayed", "zset", "pushauth.alerts", "permanent (members leave when due)",
            "alert delivery retries, by when they are due", "StreamNames.for_(prefix, 'alerts')"),
    KeySpec("<prefix>:{alerts}:dead", "stream", "pushauth.alerts", "capped (~100,000 entries)",
            "alert deliveries given up (dead letter), for replay", "StreamNames.for_(prefix, 'alerts')"),
    KeySpec("<prefix>:{push}:stream", "stream", "pushauth.push", "capped (~1,000,000 entries)",
            "challenges and notices to push (consumer group \"push\")",
            "StreamNames.for_(prefix, 'push') (pushauth/store/streams.py)"),
    KeySpec("<prefix>:{push}:delayed", "zset", "pushauth.push", "permanent (members leave when due)",
            "push retries, by when they are due", "StreamNames.for_(prefix, 'push')"),
    KeySpec("<prefix>:{push}:dead", "stream", "pushauth.push", "capped (~100,000 entries)",
            "push entries given up (dead letter)", "StreamNames.for_(prefix, 'push')"),
    KeySpec("<prefix>:{expiry}:due", "zset", "pushauth.challenges", "permanent (members leave when claimed)",
            "challenge ids by expiry, for the expiry worker", "KeySpace.expiry_due"),
    KeySpec("<prefix>:{audit}:stream", "stream", "pushauth.audit", "capped (~1,000,000 entries)",
            "the audit trail", "KeySpace.audit"),
    KeySpec("<prefix>:{workers}:hb:<worker kind>", "hash", "pushauth.store",
            "60 s after the last beat (EXPIRE); entries a day old removed by readers",
            "worker heartbeats: worker name -> Unix time", "KeySpace.worker_heartbeats", fields="heartbeats"),
    KeySpec("<prefix>:console:sess:<sha256(session id)>", "string", "pushauth.web",
            "8 h idle (EX, extended on each use), 24 h at most", "a security-team console session (JSON)",
            "KeySpace.console_session"),
    KeySpec("<prefix>:console:accounts", "hash", "pushauth.operators",
            "permanent (fields leave when removed)",
            "named console accounts: pushauth user name -> role record (JSON)", "KeySpace.console_accounts",
            fields="console_accounts"),
    KeySpec("<prefix>:console:push:<sha256(session id)>", "string", "pushauth.web",
            "the sign-in prompt's life (EX); deleted when it is answered",
            "a console sign-in waiting for the person's phone: the account and its prompt (JSON)",
            "KeySpace.console_push"),
    KeySpec("<prefix>:rl:ip:<address>", "hash", "pushauth.ratelimit", "a rate-limit window at most (EXPIRE)",
            "rate-limit bucket of a client address (requests and authentication failures)",
            "KeySpace.rate_bucket", fields="rate_bucket"),
    KeySpec("<prefix>:rl:a:<application id>", "hash", "pushauth.ratelimit",
            "a rate-limit window at most (EXPIRE)",
            "rate-limit bucket of an application", "KeySpace.rate_bucket", fields="rate_bucket"),
    KeySpec("<prefix>:rl:r:<RADIUS client name>", "hash", "pushauth.ratelimit",
            "a rate-limit window at most (EXPIRE)",
            "rate-limit bucket of a RADIUS client", "KeySpace.rate_bucket", fields="rate_bucket"),
    KeySpec("<prefix>:oidc:signin:<sign-in id>", "string", "pushauth.oidc",
            "oidc.signin_ttl_s (EX); deleted when the code is issued",
            "an OpenID sign-in in progress: the relying party's request, the browser it is bound to, its "
            "prompt (JSON)", "KeySpace.oidc_signin"),
    KeySpec("<prefix>:oidc:code:<sha256(code)>", "string", "pushauth.oidc",
            "oidc.code_ttl_s (EX); once exchanged, 10 minutes (EX)",
            "an authorization code: what its token request gets (JSON); once exchanged, x: and the key of "
            "the access token it gives, which a replay revokes", "KeySpace.oidc_code"),
    KeySpec("<prefix>:oidc:at:<sha256(token)>", "string", "pushauth.oidc", "oidc.access_token_ttl_s (EX)",
            "an access token for userinfo (JSON), or revoked (its code was replayed)",
            "KeySpace.oidc_access_token"),
    KeySpec("<prefix>:oidc:ciba:<sha256(token)>", "string", "pushauth.oidc",
            "the request's expiry (EX); deleted when its tokens are issued",
            "a backchannel (CIBA) authentication request by its auth_req_id: client, user, prompt (JSON)",
            "KeySpace.oidc_ciba"),
    KeySpec("<prefix>:{notify}:due", "zset", "pushauth.oidc", "permanent (members leave when delivered)",
            "CIBA pings and Keycloak callbacks waiting for a prompt's decision, by when their server's lease "
            "ends (a server that stops or dies leaves them for another to adopt)", "KeySpace.notify_due"),
    KeySpec("<prefix>:{notify}:n:<notification id>", "string", "pushauth.oidc",
            "the prompt's life and the retries (EX); deleted when delivered",
            "one such notification: the prompt it waits for, where it goes, its bearer (JSON)",
            "KeySpace.notification"),
    KeySpec("<prefix>:kc:req:<sha256(token)>", "string", "pushauth.oidc",
            "until the realm's bearer expires (EX)",
            "a Keycloak authentication channel request already taken (its bearer's jti): a replay starts no "
            "second prompt", "KeySpace.keycloak_request"),
    KeySpec("<prefix>:radius:state:<sha256(State)>", "string", "pushauth.radius",
            "until the prompt expires (EXAT); deleted when used",
            "what an Access-Challenge's State refers to: the prompt, user and client a RADIUS follow-up "
            "answers (JSON)", "KeySpace.radius_state"),
    KeySpec("<prefix>:radius:rx:<sha256(request)>", "string", "pushauth.radius",
            "the client's deadline_s + radius.reply_cache_s (PX) while claimed; reply_cache_s once answered",
            "a RADIUS Access-Request claimed by the instance answering it (\"p\"), then its reply sealed "
            "under the client's secret (\"r1.<...>\"): a client's retransmit reaching another instance is "
            "dropped, then answered with that reply (pushauth/radius/retransmits.py; own slot)",
            "KeySpace.radius_request"),
)


def describe(key: str | bytes) -> KeySpec | None:
    """The row of `KEYS` a concrete key name belongs to (any prefix), or None."""
    name = key.decode() if isinstance(key, bytes) else key
    for spec in KEYS:
        if spec.regex.fullmatch(name):
            return spec
    return None


# -- hash field names ------------------------------------------------------------------------------------

# The fields of each kind of hash, short names kept as they are stored. A name with a <placeholder> is a
# family of fields. tests/test_keyspace_table.py checks every field a Lua script names is here, and every
# field of every hash a full run leaves in Redis.
HASH_FIELDS: dict[str, dict[str, str]] = {
    "user": {
        "name": "the canonical user name",
        "seq": "sequence number of the user's last history entry (`hist`)",
        "enrolled": "phones ever activated",
        "approvals": "sign-ins approved",
        "fails": "consecutive authentication failures (wrong numbers, wrong access codes): the lockout count",
        "locked": "'1' while locked",
        "locked_at": "when locked",
        "locked_why": "why (who locked it, or 'failures')",
        "locked_until": "when the lock lifts by itself (0: never)",
        "unlocked_at": "when last unlocked",
        "unlocked_by": "by whom ('auto' when the time was up)",
        "suspended": "'1' while prompts are suspended",
        "susp_at": "when suspended",
        "susp_why": "why ('not_me')",
        "susp_until": "when the suspension lifts by itself (0: never)",
        "lifted_at": "when the suspension was last lifted",
        "lifted_by": "by whom ('auto' when the time was up)",
        "bomb_reset": "`seq` when the push-bombing count was last reset (an unlock)",
        "acode_reset": "`seq` when the wrong-access-code count was last reset (an unlock, a new code)",
        "otp_step": "start (Unix time) of the last one-time code's time step accepted: no earlier or equal "
                    "step is accepted again (replay)",
        "otp_reset": "`seq` when the wrong one-time-code count was last reset (an unlock)",
        "acode_grant": "until when a further phone may be added without approval (a valid access code)",
        "paused_until": "prompts paused by a phone until then",
        "paused_by": "the phone that paused them",
        "paused_at": "when paused",
        "paused_refused": "prompts refused while paused",
        "policy_exempt": "'1': the security team exempted the account",
        "policy_shared": "'1': the security team marked it a shared mailbox",
    },
    "device": {
        "user": "the canonical user name",
        "jwk": "the phone's public key (JWK)",
        "jkt": "the server key the enrollment named (JWK thumbprint)",
        "name": "the phone's name",
        "platform": "android | ios | other",
        "pprov": "push provider (fcm | apns | none)",
        "ptok": "push token",
        "ptok_at": "when the push token was last replaced",
        "ptok_stale": "'1': the provider refused the token",
        "ptok_stale_at": "when it did",
        "created": "when registered",
        "eid": "the enrollment id",
        "enroll_ip": "the address it enrolled from",
        "by": "who issued the enrollment (admin:..., app:..., cli)",
        "st": "active | pending (waiting for approval) | refused | revoked",
        "activated": "when activated",
        "appr": "the approval challenge of a pending phone",
        "refused_at": "when its approval was refused",
        "refused_by": "by which phone",
        "refused_why": "why (the denial reason)",
        "revoked_at": "when revoked",
        "revoked_by": "by whom (admin:..., device:<did>, device)",
        "may_revoke": "'1': the security team let this new phone revoke older ones",
    },
    "challenge": {
        "app": "the application",
        "user": "the canonical user name",
        "st": "pending | approved | denied | cancelled",
        "iat": "when created",
        "exp": "when it expires",
        "nonce": "the nonce the phone signs",
        "num": "the number to match ('' without number matching)",
        "ctx": "the login context (JSON)",
        "pctx": "what the phone is shown of it (JSON)",
        "rmb": "sha256 of the browser id to remember on approval",
        "devs": "the targeted device ids, comma-joined",
        "net": "the client's network",
        "loc": "the client's location",
        "purp": "'add_device' for an approval prompt",
        "newdev": "the phone an approval prompt is about",
        "ndp": "that phone's platform",
        "dat": "when decided",
        "dev": "the device that answered",
        "rsn": "the denial reason ('-': none)",
        "aip": "the answering phone's address ('-': unknown)",
        "seen": "when a targeted phone fetched it",
        "ign": "'1': counted as an ignored prompt",
        "revoked": "an approval taken back by containment: why",
        "revoked_at": "when",
        "late": "an answer after expiry or cancellation (\"<status>:<reason>\")",
        "late_at": "when it came",
        "late_dev": "from which device",
        "pd:<did>": "push delivery to that device: \"<state>\" or \"<state>:<reason>\" (pushauth/push)",
    },
    "alert": {
        "id": "the alert id",
        "kind": "the headline kind",
        "sev": "severity",
        "user": "the canonical user name",
        "created": "when opened",
        "updated": "when last changed",
        "status": "open | acked",
        "ver": "version, raised when the headline changes",
        "n": "events joined",
        "events": "evidence (JSON)",
        "kinds": "events per kind (JSON)",
        "contained": "containment actions taken (JSON)",
        "cid": "the challenge of the headline",
        "did": "the device of the headline",
        "ctx": "login context (JSON)",
        "acked_at": "when acknowledged",
        "acked_by": "by whom",
        "ack_note": "the note the acknowledger left (the console's acknowledge form)",
        "dl:<sink>:<version>": "that version settled for the sink: delivered (Unix time) or \"dead:<why>\"",
        "dls:<sink>:<version>": "a retry of that version is scheduled (\"retrying:<n>:<reason>\")",
    },
    "otp": {
        "st": "pending | active",
        "kind": "app (an authenticator app) | hardware (an imported token) | phone (a pushauth phone's own)",
        "seed": "the seed, AES-GCM sealed under the key-encryption key (pushauth/codes/seal.py)",
        "alg": "SHA1 | SHA256 | SHA512", "dig": "digits (6 or 8)", "per": "period in seconds (30 or 60)",
        "name": "what the security team calls it", "serial": "a hardware token's serial number",
        "by": "who enrolled or imported it", "created": "when", "act": "when activated",
        "exp": "a pending method's deadline (0: none, an imported token)",
        "tries": "wrong codes tried at activation", "used": "when a code of it was last accepted",
        "did": "the pushauth phone whose seed it is",
        "typ": "hotp for a counter-based (RFC 4226) token; absent: TOTP",
        "ctr": "an HOTP token's next expected counter (accepted counters move it past them)",
    },
    "acode": {"h": "sha256 of the code", "exp": "when it expires", "by": "who issued it", "at": "when"},
    "enrollment": {
        "id": "the enrollment id",
        "user": "the canonical user name",
        "exp": "when it expires",
        "by": "who asked (admin:..., app:..., cli)",
        "vouch": "admin | access_code | '' (a further phone then waits for approval)",
    },
    "seen": {"n:<network>": "last approval from that network", "l:<location>": "last approval from there"},
    "remembered": {
        "r<cid>": "a remembered browser, named by the approval that remembered it: JSON {app, bid, created, "
                  "exp}",
    },
    "rate_bucket": {
        "t": "theoretical arrival time of the next request (GCRA)",
        "fn": "authentication failures in the window",
        "fe": "when that window ends",
    },
    "sinks_disabled": {"<sink>": "when the sink was disabled (a 410)"},
    "heartbeats": {"<worker name>": "the worker's last beat (Unix time)"},
    "console_accounts": {"<user name>": "the account's role, who set it and when (JSON)"},
}


_FIELD_FAMILIES = {kind: [(name, _compile(name)) for name in fields if "<" in name]
                   for kind, fields in HASH_FIELDS.items()}


def field_spec(kind: str, name: str) -> str | None:
    """The documented field of a `kind` hash (see HASH_FIELDS) that a concrete field `name` is: itself, or
    its family (e.g. "pd:<did>"); None when undocumented."""
    if name in HASH_FIELDS[kind]:
        return name
    return next((pattern for pattern, regex in _FIELD_FAMILIES[kind] if regex.fullmatch(name)), None)


def render() -> str:
    """The table as text (the module docstring ends with it)."""
    lines = []
    for spec in KEYS:
        lines.append(f"    {spec.pattern:<44} {spec.type:<7} {spec.owner}")
        lines.append(f"        {spec.purpose}; lives: {spec.lifetime}; name built by {spec.built_by}")
    lines.append("")
    for kind, fields in HASH_FIELDS.items():
        lines.append(f"    {kind} hash: " + ", ".join(fields))
    return "\n".join(lines) + "\n"


__doc__ = (__doc__ or "") + "\n" + render()


class KeySpace:
    __slots__ = ("alert_index", "alert_open", "alert_sinks_disabled", "audit", "console_accounts", "events",
                 "expiry_due", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events = f"{prefix}:events"
        self.alert_index = f"{prefix}:{{alerts}}:index"
        self.alert_open = f"{prefix}:{{alerts}}:open"
        self.alert_sinks_disabled = f"{prefix}:{{alerts}}:disabled"
        self.expiry_due = f"{prefix}:{{expiry}}:due"
        self.audit = f"{prefix}:{{audit}}:stream"
        self.console_accounts = f"{prefix}:console:accounts"

    def user_prefix(self, uid: str) -> str:
        """What the Lua ledger builds a user's other keys from (same hash tag)."""
        return f"{self.prefix}:{{{uid}}}:"

    def alert(self, uid: str, aid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:alert:{aid}"

    def alerts(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:alerts"

    def alert_outbox(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:aout"

    def incident(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:incident"

    def recent(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:recent"

    def otp_methods(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:otps"

    def otp_method(self, uid: str, tid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:otp:{tid}"

    def access_code(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:acode"

    def remembered(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:remembered"

    def user_index(self, canonical_user: str) -> str:
        return f"{self.prefix}:u:{hashlib.sha256(canonical_user.encode()).hexdigest()}"

    def user(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:user"

    def devices(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:devs"

    def new_devices(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:ndevs"

    def notices(self, uid: str, did: str) -> str:
        return f"{self.prefix}:{{{uid}}}:notices:{did}"

    def challenge_prefix(self, uid: str) -> str:
        """A challenge's key is this and its id (what a script builds challenge keys from)."""
        return f"{self.prefix}:{{{uid}}}:ch:"

    def device(self, uid: str, did: str) -> str:
        return f"{self.prefix}:{{{uid}}}:dev:{did}"

    def challenge(self, uid: str, cid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:ch:{cid}"

    def pending(self, uid: str) -> str:
        return f"{self.prefix}:{{{uid}}}:pending"

    def jti(self, uid: str, did: str, jti: str) -> str:
        return f"{self.prefix}:{{{uid}}}:jti:{did}:{jti}"

    def enrollment(self, code: str) -> str:
        return f"{self.prefix}:enr:{sha256_hex(code)}"

    def enrollment_jti(self, jkt: str, jti: str) -> str:
        return f"{self.prefix}:jti:enr:{jkt}:{jti}"

    def rate_bucket(self, kind: str, subject: str) -> str:
        # No hash tag: each bucket is the only key its scripts touch, so any slot will do.
        return f"{self.prefix}:rl:{kind}:{subject}"

    def worker_heartbeats(self, kind: str) -> str:
        return f"{self.prefix}:{{workers}}:hb:{kind}"

    def oidc_signin(self, signin_id: str) -> str:
        return f"{self.prefix}:oidc:signin:{signin_id}"

    # Codes and tokens by their hash only: a copy of Redis cannot be exchanged or presented.
    def oidc_code(self, code: str) -> str:
        return f"{self.prefix}:oidc:code:{sha256_hex(code)}"

    def oidc_access_token(self, token: str) -> str:
        return f"{self.prefix}:oidc:at:{sha256_hex(token)}"

    def oidc_ciba(self, auth_req_id: str) -> str:
        return f"{self.prefix}:oidc:ciba:{sha256_hex(auth_req_id)}"

    @property
    def notify_due(self) -> str:
        return f"{self.prefix}:{{notify}}:due"

    def notification(self, notification_id: str) -> str:
        return f"{self.prefix}:{{notify}}:n:{notification_id}"

    def keycloak_request(self, issuer: str, jti: str) -> str:
        return f"{self.prefix}:kc:req:{sha256_hex(issuer + chr(0) + jti)}"

    def radius_state(self, state: bytes) -> str:
        # Only the State's hash: a copy of Redis cannot answer a RADIUS challenge in flight.
        return f"{self.prefix}:radius:state:{hashlib.sha256(state).hexdigest()}"

    def radius_request(self, client: str, address: str, port: int, identifier: int,
                       authenticator: bytes) -> str:
        """One Access-Request and its retransmits: what makes two packets copies of one request (source
        address and port, Identifier, Request Authenticator), and the client it came from; each part
        length-prefixed, so no two different requests share a digest."""
        digest = hashlib.sha256()
        for part in (client.encode(), address.encode(), str(port).encode(), str(identifier).encode(),
                     authenticator):
            digest.update(len(part).to_bytes(4, "big"))
            digest.update(part)
        return f"{self.prefix}:radius:rx:{digest.hexdigest()}"

    def console_session(self, session_id: str) -> str:
        # Only the id's hash is stored: a copy of Redis does not hold a usable session cookie.
        return f"{self.prefix}:console:sess:{sha256_hex(session_id)}"

    def console_push(self, pending_id: str) -> str:
        return f"{self.prefix}:console:push:{sha256_hex(pending_id)}"
