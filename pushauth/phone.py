"""The phone simulator: the reference device implementation, used by the demo, the tests and the benchmark.

As strict as a real phone app must be: the enrollment URI is parsed strictly, the server is pinned by the
key thumbprint (`jkt`) in the QR code, and every challenge JWS has its signature, issuer, audience, subject
and lifetime checked before anything in it is shown or answered. Every request is signed with the device
key (`Authorization: PushAuth <JWS>`) over method, path, time, a fresh jti and the exact body bytes sent.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from yarl import URL

from pushauth import clock
from pushauth.codes import totp
from pushauth.crypto import device_auth, jws
from pushauth.errors import PushAuthError

CHALLENGE_TYP = "pushauth-challenge+jwt"
CLOCK_SKEW_S = 60
STATE_VERSION = 1
# The same shape the server requires of its own base_url: http(s), no trailing slash, query or fragment.
_BASE_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*[^/\s?#])?")


class PhoneError(PushAuthError):
    """Client-side failure: bad enrollment URI, server key pin mismatch, a challenge that does not verify."""


class ServerRejected(PhoneError):
    """The server answered 4xx/5xx with the contract's `{"error", "message"}` body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"server answered {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


@dataclass(frozen=True)
class Challenge:
    """A challenge whose JWS verified against a pinned server key and whose claims were checked."""

    id: str
    user: str
    app: str
    nonce: str
    iat: int
    exp: int
    number_matching: bool
    context: dict[str, str] | None
    token: str
    # "add_device": approve adding a new phone to the account (its platform in `new_device`), not a sign-in.
    purpose: str | None = None
    new_device: dict[str, str] | None = None


@dataclass(frozen=True)
class EnrollURI:
    server: str
    code: str
    jkt: str

    def __repr__(self) -> str:  # the code is a one-time secret
        return f"EnrollURI(server={self.server!r}, jkt={self.jkt!r})"


def parse_enroll_uri(uri: str) -> EnrollURI:
    """`pushauth://enroll?v=1&server=<base url>&code=<code>&jkt=<thumbprint>`, strictly."""
    try:
        parts = urlsplit(uri)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise PhoneError("enrollment URI is malformed") from exc
    if parts.scheme != "pushauth" or parts.netloc != "enroll" or parts.path or parts.fragment:
        raise PhoneError("enrollment URI must start with pushauth://enroll?")
    if any(len(v) != 1 for v in query.values()):
        raise PhoneError("enrollment URI repeats a parameter")
    q = {k: v[0] for k, v in query.items()}
    if q.get("v") != "1":
        raise PhoneError("unsupported enrollment URI version (need v=1)")
    server = q.get("server", "")
    if not _BASE_URL.fullmatch(server):
        raise PhoneError("enrollment URI server must be an http(s) URL without trailing slash")
    if not q.get("code"):
        raise PhoneError("enrollment URI has no code")
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", q.get("jkt", "")):
        raise PhoneError("enrollment URI has no valid jkt (server key thumbprint)")
    return EnrollURI(server=server, code=q["code"], jkt=q["jkt"])


def _import_server_keys(jwks: Any) -> dict[str, ECKey]:
    """A JWKS from the server: every key must be a public EC P-256 signing key with a kid."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise PhoneError("server keys are not a JWKS with at least one key")
    out: dict[str, ECKey] = {}
    for jwk in jwks["keys"]:
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise PhoneError("server key has no kid")
        if jwk.get("alg", jws.ALG) != jws.ALG or jwk.get("use", "sig") != "sig":
            raise PhoneError("server key is not an ES256 signing key")
        try:
            out[jwk["kid"]] = jws.import_public_jwk(jwk)
        except jws.InvalidJWS as exc:
            raise PhoneError(f"server key is not a public EC P-256 key: {exc.message}") from exc
    return out


def _public_jwk(key: ECKey) -> dict[str, str]:
    pub = key.as_dict(private=False)
    return {"kty": "EC", "crv": "P-256", "x": str(pub["x"]), "y": str(pub["y"])}


def _otp_seed(value: Any) -> dict[str, Any] | None:
    """The registration answer's `otp` (or the state file's), checked: None when absent or unusable."""
    if not isinstance(value, dict):
        return None
    try:
        seed = totp.Seed.from_base32(str(value["secret"]))
        params = totp.Params(algorithm=value["algorithm"], digits=int(value["digits"]),
                             period=int(value["period"]))
    except (KeyError, TypeError, ValueError):
        return None
    return {"secret": seed.base32(), "algorithm": params.algorithm, "digits": params.digits,
            "period": params.period}


class Phone:
    def __init__(self, *, device_id: str, user: str, server: str, key: ECKey, server_keys: dict[str, ECKey],
                 server_override: str | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.device_id = device_id
        self.user = user
        self.server = server
        # Set by enroll: "active", or "pending_approval" with the number to type on another phone.
        self.status = "active"
        self.approval_number: str | None = None
        self.user_message: str | None = None
        # Offline codes (PROTOCOL.md 17.5): the TOTP seed the server gave at registration (or, for a phone
        # that waited for approval, with its activation), if it did.
        self._otp: dict[str, Any] | None = None
        # The server could not give the seed asked for at enrollment (no key-encryption key): tell the user.
        self.offline_codes_unavailable = False
        self._key = key
        self._server_keys = dict(server_keys)
        self._override = server_override
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:  # never the private key
        return f"Phone(device_id={self.device_id!r}, user={self.user!r}, server={self.server!r})"

    async def __aenter__(self) -> Phone:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_base(self) -> str:
        """Where HTTP requests go: the override if one was given, else the pinned server URL."""
        return self._override or self.server

    # -- enrollment ---------------------------------------------------------------------------------------

    @classmethod
    async def enroll(cls, uri: str, *, name: str = "Simulated phone", platform: str = "other",
                     push_provider: str = "none", push_token: str | None = None,
                     session: aiohttp.ClientSession | None = None,
                     server_override: str | None = None, offline_codes: bool = False) -> Phone:
        parsed = parse_enroll_uri(uri)
        if server_override is not None:
            server_override = server_override.rstrip("/")
            if not _BASE_URL.fullmatch(server_override):
                raise PhoneError("server_override must be an http(s) URL")
        key = ECKey.generate_key("P-256", private=True)
        phone = cls(device_id="", user="", server=parsed.server, key=key, server_keys={},
                    server_override=server_override, session=session)
        push: dict[str, str] = {"provider": push_provider}
        if push_token is not None:
            push["token"] = push_token
        request: dict[str, Any] = {"code": parsed.code, "name": name, "platform": platform, "push": push}
        if offline_codes:
            request["offline_codes"] = True
        raw = msgspec.json.encode(request)
        path = "/v1/devices"
        token = device_auth.sign_request(key, method="POST", path_qs=path, body=raw, jti=_jti(),
                                         iat=clock.now(), jwk=_public_jwk(key))
        try:
            # The pin first: the one-time code goes only to a server that holds the key the QR code names.
            jstatus, jwks = await phone._send("GET", "/.well-known/jwks.json", None, {})
            served = _import_server_keys(_ok(jstatus, jwks))
            if not any(jws.thumbprint(k) == parsed.jkt for k in served.values()):
                raise PhoneError("server key does not match the QR code: the enrollment code was not sent")
            status, data = await phone.signed_request("POST", path, raw_body=raw, token=token)
            data = _ok(status, data)
            did, user = data.get("device_id"), data.get("user")
            if not isinstance(did, str) or not did or not isinstance(user, str) or not user:
                raise PhoneError("server answered enrollment without device_id and user")
            keys = _import_server_keys(data.get("server_keys"))
            if not any(jws.thumbprint(k) == parsed.jkt for k in keys.values()):
                raise PhoneError("server key does not match the QR code")
        except BaseException:
            await phone.close()
            raise
        phone.device_id, phone.user, phone._server_keys = did, user, keys
        # A further phone of a user may have to wait for one of the user's phones to approve it.
        registered = data.get("status")
        phone.status = registered if isinstance(registered, str) else "active"
        approval = data.get("approval")
        if isinstance(approval, dict) and isinstance(approval.get("number"), str):
            phone.approval_number = approval["number"]
        phone._otp = _otp_seed(data.get("otp"))
        phone.offline_codes_unavailable = data.get("otp_unavailable") is True
        return phone

    # -- offline codes ------------------------------------------------------------------------------------

    @property
    def has_offline_codes(self) -> bool:
        return self._otp is not None

    def offline_code(self, at: int | None = None) -> str:
        """The code to type where there is no signal (PROTOCOL.md 17.5): made on the phone, no network."""
        if self._otp is None:
            raise PhoneError("this phone has no offline codes (the server gave no seed at enrollment)")
        params = totp.Params(algorithm=self._otp["algorithm"], digits=self._otp["digits"],
                             period=self._otp["period"])
        return totp.code_at(totp.Seed.from_base32(self._otp["secret"]), clock.now() if at is None else at,
                            params)

    # -- challenges ---------------------------------------------------------------------------------------

    async def pending(self) -> list[Challenge]:
        data = _ok(*await self.signed_request("GET", "/v1/device/challenges"))
        tokens = data.get("challenges")
        if not isinstance(tokens, list):
            raise PhoneError("server answered without a challenges list")
        return [await self.verify_challenge(t) for t in tokens]

    async def fetch(self, challenge_id: str) -> Challenge:
        data = _ok(*await self.signed_request("GET", f"/v1/device/challenges/{_seg(challenge_id)}"))
        ch = await self.verify_challenge(data.get("challenge"))
        if ch.id != challenge_id:
            raise PhoneError("server sent a different challenge than the one asked for")
        return ch

    async def verify_challenge(self, token: Any, *, refresh: bool = True) -> Challenge:
        """Check a challenge JWS: header policy, pinned server key, signature, then every claim. An unknown
        kid refreshes the server keys once (a rotation) unless `refresh` is False."""
        try:
            header = jws.read_header(token, typ=CHALLENGE_TYP)
        except jws.InvalidJWS as exc:
            raise PhoneError(f"challenge rejected: {exc.message}") from exc
        if header["kid"] not in self._server_keys and refresh:
            try:
                await self.refresh_server_keys()
            except PhoneError as exc:
                raise PhoneError(f"challenge signed by an unknown server key ({exc})") from exc
        key = self._server_keys.get(header["kid"])
        if key is None:
            raise PhoneError("challenge signed by an unknown server key")
        try:
            claims = jws.verify(token, key)
        except jws.InvalidJWS as exc:
            raise PhoneError(f"challenge rejected: {exc.message}") from exc
        return self._challenge_from_claims(claims, token)

    def _challenge_from_claims(self, claims: dict[str, Any], token: str) -> Challenge:
        now = clock.now()
        if claims.get("iss") != self.server:
            raise PhoneError("challenge issuer is not the enrolled server")
        if claims.get("aud") != self.device_id:
            raise PhoneError("challenge is for another device")
        if claims.get("sub") != self.user:
            raise PhoneError("challenge is for another user")
        cid, nonce, app = claims.get("jti"), claims.get("nonce"), claims.get("app")
        if not (isinstance(cid, str) and cid and isinstance(nonce, str) and nonce and isinstance(app, str)):
            raise PhoneError("challenge jti, nonce and app must be strings")
        iat, exp = claims.get("iat"), claims.get("exp")
        if type(iat) is not int or type(exp) is not int:
            raise PhoneError("challenge iat and exp must be integers")
        if exp <= now - CLOCK_SKEW_S:
            raise PhoneError("challenge has expired")
        if iat > now + CLOCK_SKEW_S:
            raise PhoneError("challenge is issued in the future")
        nm = claims.get("number_matching")
        if not isinstance(nm, bool):
            raise PhoneError("challenge number_matching must be a boolean")
        ctx = claims.get("ctx")
        if ctx is not None and not (isinstance(ctx, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in ctx.items())):
            raise PhoneError("challenge ctx must be an object of strings")
        purpose, new_device = claims.get("purpose"), claims.get("new_device")
        if purpose is not None and not isinstance(purpose, str):
            raise PhoneError("challenge purpose must be a string")
        if new_device is not None and not (isinstance(new_device, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in new_device.items())):
            raise PhoneError("challenge new_device must be an object of strings")
        return Challenge(id=cid, user=self.user, app=app, nonce=nonce, iat=iat, exp=exp, number_matching=nm,
                         context=dict(ctx) if ctx is not None else None, token=token, purpose=purpose,
                         new_device=dict(new_device) if new_device is not None else None)

    async def approve(self, challenge: Challenge | str, number: str | None = None) -> str:
        """Approve; `number` is what the user typed from the login page (number matching)."""
        return await self._respond(challenge, "approve", "number", number)

    async def deny(self, challenge: Challenge | str, reason: str | None = "not_me") -> str:
        return await self._respond(challenge, "deny", "reason", reason)

    async def _respond(self, challenge: Challenge | str, decision: str, extra: str, value: str | None) -> str:
        ch = challenge if isinstance(challenge, Challenge) else await self.fetch(challenge)
        body = {"nonce": ch.nonce, "decision": decision}
        if value is not None:
            body[extra] = value
        self.user_message = None
        data = _ok(*await self.signed_request("POST", f"/v1/device/challenges/{_seg(ch.id)}/response", body))
        status = data.get("status")
        if not isinstance(status, str):
            raise PhoneError("server answered without a status")
        # After "not me": what the organisation tells the user to do now (shown on the phone).
        message = data.get("user_message")
        self.user_message = message if isinstance(message, str) else None
        return status

    # -- adding a phone to an account that has one ----------------------------------------------------------

    async def activation(self) -> dict[str, Any]:
        """This phone's activation: {"status": "active"} (with "otp", kept, the first time after an approval
        when the phone asked for offline codes) or, while one of the user's other phones must approve it,
        {"status": "pending_approval", "number", "expires_at"} (show the number), or {"status": "expired"}
        (enroll again)."""
        data = _ok(*await self.signed_request("GET", "/v1/device/activation"))
        if not isinstance(data.get("status"), str):
            raise PhoneError("server answered without an activation status")
        # Offline codes asked for at enrollment come with the first answer after the approval, once.
        seed = _otp_seed(data.get("otp"))
        if seed is not None:
            self._otp = seed
        return data

    async def add_device_prompts(self) -> list[Challenge]:
        """Pending prompts asking this phone to approve a new phone for the user."""
        return [c for c in await self.pending() if c.purpose == "add_device"]

    async def approve_new_phone(self, number: str) -> str:
        """Approve the pending "add a new phone?" prompt with the number the new phone shows."""
        prompts = await self.add_device_prompts()
        if not prompts:
            raise PhoneError("no prompt to add a new phone is pending")
        return await self.approve(prompts[-1], number=number)

    # -- device management --------------------------------------------------------------------------------

    async def update_push_token(self, provider: str, token: str | None) -> None:
        body = {"provider": provider} if token is None else {"provider": provider, "token": token}
        _ok(*await self.signed_request("PUT", "/v1/device/push-token", body))

    async def unenroll(self) -> None:
        _ok(*await self.signed_request("DELETE", "/v1/device"))

    async def pause(self, duration_s: int) -> str:
        """Pause the user's prompts (holiday). Returns when they resume (RFC 3339)."""
        return str(_ok(*await self.signed_request("POST", "/v1/device/pause",
                                                  {"duration_s": duration_s}))["paused_until"])

    async def resume(self) -> None:
        _ok(*await self.signed_request("DELETE", "/v1/device/pause"))

    async def devices(self) -> list[dict[str, Any]]:
        """The user's phones, this one included (`this_device`)."""
        return list(_ok(*await self.signed_request("GET", "/v1/device/devices"))["devices"])

    async def revoke_device(self, device_id: str) -> None:
        """Revoke another phone of the same user (lost or replaced)."""
        _ok(*await self.signed_request("DELETE", f"/v1/device/devices/{device_id}"))

    async def notices(self) -> list[dict[str, Any]]:
        """What the server asks this phone to tell its user (a new phone was added), once."""
        return list(_ok(*await self.signed_request("GET", "/v1/device/notices"))["notices"])

    async def refresh_server_keys(self) -> None:
        """Replace the known server keys with the JWKS served by the pinned server (after a rotation)."""
        status, data = await self._send("GET", "/.well-known/jwks.json", None, {})
        self._server_keys = _import_server_keys(_ok(status, data))

    # -- HTTP ---------------------------------------------------------------------------------------------

    async def signed_request(self, method: str, path_qs: str, body: Any | None = None, *,
                             jti: str | None = None, iat: int | None = None, raw_body: bytes | None = None,
                             token: str | None = None) -> tuple[int, Any]:
        """Sign (unless `token` is given) and send one device request; `(status, parsed JSON)` back.

        The body is encoded once and exactly those bytes are hashed and sent. `path_qs` is sent as is."""
        if body is not None and raw_body is not None:
            raise ValueError("give body or raw_body, not both")
        raw = raw_body if raw_body is not None else (b"" if body is None else msgspec.json.encode(body))
        if token is None:
            token = device_auth.sign_request(
                self._key, method=method, path_qs=path_qs, body=raw, jti=jti or _jti(),
                iat=clock.now() if iat is None else iat, kid=self.device_id)
        headers = {"Authorization": f"{device_auth.SCHEME} {token}"}
        has_body = body is not None or raw_body is not None
        if has_body:
            headers["Content-Type"] = "application/json"
        return await self._send(method, path_qs, raw if has_body else None, headers)

    async def _send(self, method: str, path_qs: str, raw: bytes | None,
                    headers: dict[str, str]) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40))
        url = URL(self.api_base + path_qs, encoded=True)
        try:
            async with self._session.request(method, url, data=raw, headers=headers,
                                             allow_redirects=False) as resp:
                content = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PhoneError(f"cannot reach the server at {self.api_base}: {exc!r}") from exc
        try:
            parsed: Any = msgspec.json.decode(content) if content else None
        except (msgspec.DecodeError, UnicodeDecodeError):
            parsed = content.decode("utf-8", "replace")
        return status, parsed

    async def close(self) -> None:
        """Close the HTTP session, but only if this Phone created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- state --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        priv = self._key.as_dict(private=True)
        return {"version": STATE_VERSION, "device_id": self.device_id, "user": self.user,
                "server": self.server, "server_override": self._override,
                "key": {k: str(priv[k]) for k in ("kty", "crv", "x", "y", "d")},
                "server_keys": {kid: _public_jwk(k) for kid, k in self._server_keys.items()},
                **({"otp": self._otp} if self._otp else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, session: aiohttp.ClientSession | None = None) -> Phone:
        try:
            if d["version"] != STATE_VERSION:
                raise PhoneError(f"unsupported phone state version {d['version']!r}")
            did, user, server, override = d["device_id"], d["user"], d["server"], d.get("server_override")
            if not all(isinstance(v, str) and v for v in (did, user, server)):
                raise PhoneError("phone state: device_id, user and server must be strings")
            if not _BASE_URL.fullmatch(server) or not (override is None or _BASE_URL.fullmatch(override)):
                raise PhoneError("phone state: server must be an http(s) URL")
            kd = d["key"]
            if not isinstance(kd, Mapping) or kd.get("kty") != "EC" or kd.get("crv") != "P-256":
                raise PhoneError("phone state: key must be an EC P-256 private JWK")
            key = ECKey.import_key({k: kd[k] for k in ("kty", "crv", "x", "y", "d")})
            keys = dict(d["server_keys"])
            server_keys = _import_server_keys({"keys": [{**v, "kid": k} for k, v in keys.items()]})
        except (KeyError, TypeError, ValueError, AttributeError, JoseError) as exc:
            raise PhoneError(f"phone state is invalid: {exc!r}") from exc
        phone = cls(device_id=did, user=user, server=server, key=key, server_keys=server_keys,
                    server_override=override, session=session)
        phone._otp = _otp_seed(d.get("otp"))
        return phone

    def save(self, path: Path) -> None:
        """Write the state as JSON, mode 0600 from creation, atomically (temp file + fsync + rename)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.format(msgspec.json.encode(self.to_dict())) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, *, session: aiohttp.ClientSession | None = None) -> Phone:
        try:
            data = msgspec.json.decode(Path(path).read_bytes())
        except OSError as exc:
            raise PhoneError(f"cannot read phone state {path}: {exc.strerror}") from exc
        except msgspec.DecodeError as exc:
            raise PhoneError(f"phone state {path} is not JSON") from exc
        if not isinstance(data, dict):
            raise PhoneError(f"phone state {path} is not a JSON object")
        return cls.from_dict(data, session=session)


def _jti() -> str:
    return secrets.token_urlsafe(18)


def _seg(value: str) -> str:
    """One path segment, percent-encoded so an id can never change the path it is put into."""
    return quote(value, safe="")


def _ok(status: int, data: Any) -> dict[str, Any]:
    """A 2xx JSON object, or the server's refusal as ServerRejected."""
    if status >= 400:
        if isinstance(data, dict):
            err, msg = data.get("error"), data.get("message")
            raise ServerRejected(status, err if isinstance(err, str) else "unknown",
                                 msg if isinstance(msg, str) else "")
        raise ServerRejected(status, "unknown", str(data or "")[:200])
    if not 200 <= status < 300:
        raise PhoneError(f"unexpected HTTP status {status}")
    if not isinstance(data, dict):
        raise PhoneError("server answer is not a JSON object")
    return data
