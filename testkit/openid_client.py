"""A real, third-party OpenID Connect relying party for the provider's tests (issue 18): openid-client v6
(panva's OpenID Certified Node library), through tests/rp/openid-client/rp.mjs, one `node` process a step.
It validates the ID token itself (signature against the issuer's JWKS, alg, iss, aud, exp, iat, nonce,
auth_time against max_age; not at_hash, which it leaves unchecked in the code flow), so a test learns what
an RP nobody here wrote makes of the provider, not what our own code thinks.

    rp = RpClient(issuer, "webapp", redirect_uri, client_secret="s3cret", auth="basic")
    start = await rp_start(rp, tmp_path, login_hint="alice")    # discovery, PKCE S256, state, nonce
    start.url                      # the authorization request; the test plays the browser with it
    result = await rp_finish(rp, start.state_file, callback_url)  # the redirect back, code and state
    result.ok, result.claims["sub"], result.userinfo, result.error, result.message, result.oauth_error

The state between the steps (the PKCE verifier, state and nonce, as a web app keeps them in its session)
is in `start.state_file`. A refusal by openid-client is a result (`error` is its class, e.g. ClientError,
`message` says why, `oauth_error` what the provider's error response said, e.g. invalid_grant), not an
exception: the negative cases are half the point. `missing_node_rp()` says why a test must skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "RP_DIR",
    "AuthorizationStart",
    "BackchannelRun",
    "ClientAuthMethod",
    "RpClient",
    "RpError",
    "RpResult",
    "missing_node_rp",
    "rp_ciba",
    "rp_finish",
    "rp_start",
]

RP_DIR = Path(__file__).resolve().parent.parent / "tests" / "rp" / "openid-client"
RP_SCRIPT = RP_DIR / "rp.mjs"
# npm ci writes it last: without it the install is missing or unfinished (scripts/ensure-node-rp).
INSTALLED_MARKER = RP_DIR / "node_modules" / ".package-lock.json"

ClientAuthMethod = Literal["basic", "post", "none"]


def missing_node_rp() -> str | None:
    """Why a test that drives rp.mjs cannot run here, as a skip reason; None when it can."""
    if shutil.which("node") is None:
        return ("node is not installed (`make test` installs it: scripts/ensure-node-rp; "
                "or apt-get install nodejs npm)")
    if not INSTALLED_MARKER.exists():
        return (f"{RP_DIR / 'node_modules'} is not installed (`make test` installs it: "
                f"scripts/ensure-node-rp; or cd {RP_DIR} && npm ci)")
    return None


class RpError(RuntimeError):
    """rp.mjs did not answer as it should (no JSON, a usage error, killed on timeout): the harness is
    broken, as opposed to openid-client refusing what the provider sent (an RpResult with `error`)."""


@dataclass(frozen=True)
class RpClient:
    """How the relying party is registered at the provider, and how it reaches it. `auth` is the token
    endpoint's client authentication (client_secret_basic / client_secret_post / none: a public client);
    None picks basic with a secret and none without. `id_token_alg` pins the ID token's `alg` (else
    openid-client accepts what discovery lists). `ca_file`: a PEM CA for an https issuer
    (NODE_EXTRA_CA_CERTS); plain http is allowed on loopback issuers only."""

    issuer: str
    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    auth: ClientAuthMethod | None = None
    id_token_alg: str | None = None
    ca_file: Path | None = None
    http_timeout_s: float | None = None

    def argv(self) -> list[str]:
        args = ["--issuer", self.issuer, "--client-id", self.client_id]
        if self.client_secret is not None:
            args += ["--client-secret", self.client_secret]
        if self.auth is not None:
            args += ["--auth", self.auth]
        if self.id_token_alg is not None:
            args += ["--id-token-alg", self.id_token_alg]
        if self.http_timeout_s is not None:
            args += ["--http-timeout", str(self.http_timeout_s)]
        return args

    def __repr__(self) -> str:  # never the secret, in an assertion's message or a log
        return f"<RpClient {self.client_id} at {self.issuer} auth={self.auth or 'default'}>"


@dataclass(frozen=True)
class AuthorizationStart:
    """The authorization request openid-client built, and where it keeps what it needs to finish."""

    url: str
    state_file: Path
    elapsed_s: float = 0.0

    @property
    def params(self) -> dict[str, str]:
        """The request's query parameters (state, nonce, code_challenge, redirect_uri, ...)."""
        return {name: values[0] for name, values in parse_qs(urlsplit(self.url).query).items()}

    @property
    def state(self) -> str:
        return self.params["state"]

    @property
    def nonce(self) -> str:
        return self.params["nonce"]


@dataclass(frozen=True)
class RpResult:
    """What openid-client made of the redirect back: the ID token's claims and userinfo once it accepted
    everything, or why it refused. `token` holds the token response's token_type, expires_in, scope,
    whether a refresh token came, and the ID token's JOSE header (never a token itself)."""

    claims: dict[str, Any] | None
    userinfo: dict[str, Any] | None
    error: str | None = None  # the JavaScript class: ClientError, ResponseBodyError, TypeError, ...
    message: str | None = None  # the reason, openid-client's causes included
    code: str | None = None  # e.g. OAUTH_JWT_CLAIM_COMPARISON_FAILED, OAUTH_RESPONSE_BODY_ERROR
    oauth_error: str | None = None  # what the provider's error response said: invalid_grant, ...
    status: int | None = None  # the HTTP status of that error response
    token: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.claims is not None


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def _run(args: Sequence[str], *, ca_file: Path | None, timeout_s: float,
               env: Mapping[str, str] | None) -> tuple[dict[str, Any], int, str, float]:
    """Run rp.mjs once: (its one line of JSON, exit status, stderr, seconds)."""
    reason = missing_node_rp()
    if reason is not None:
        raise FileNotFoundError(reason)
    node = shutil.which("node")
    assert node is not None
    child_env = dict(os.environ if env is None else env)
    if ca_file is not None:
        child_env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        node, str(RP_SCRIPT), *args, cwd=RP_DIR, env=child_env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:  # timed out, or the test was cancelled: leave nothing running
        await _kill_group(proc)
        raise
    elapsed = time.monotonic() - started
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    assert proc.returncode is not None
    lines = stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if len(lines) == 1 else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise RpError(f"rp.mjs {args[0]} exited {proc.returncode} without one line of JSON; "
                      f"stdout: {stdout!r}; stderr: {stderr!r}")
    if proc.returncode == 2:  # a usage error: the harness's fault, not the provider's
        raise RpError(f"rp.mjs {args[0]}: {answer.get('message')}")
    return answer, proc.returncode, stderr, elapsed


async def rp_start(client: RpClient, workdir: Path, *, login_hint: str | None = None,
                   scope: str | None = None, max_age: int | None = None,
                   extra: Mapping[str, str] | None = None, state_file: Path | None = None,
                   timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> AuthorizationStart:
    """openid-client's discovery and authorization request: PKCE S256, a random state and nonce, and
    `login_hint`, `scope` (default "openid"), `max_age` (then checked against auth_time on finish) and any
    `extra` parameters (prompt, acr_values, claims, ...). The state goes to `state_file` (default: a new
    file in `workdir`, which must exist). A failed discovery raises RpError with openid-client's reason."""
    if state_file is None:
        state_file = workdir / f"rp-state-{os.urandom(4).hex()}.json"
    args = ["start", *client.argv(), "--redirect-uri", client.redirect_uri, "--state-file", str(state_file)]
    if login_hint is not None:
        args += ["--login-hint", login_hint]
    if scope is not None:
        args += ["--scope", scope]
    if max_age is not None:
        args += ["--max-age", str(max_age)]
    for name, value in (extra or {}).items():
        args += ["--extra", f"{name}={value}"]
    answer, returncode, stderr, elapsed = await _run(args, ca_file=client.ca_file, timeout_s=timeout_s,
                                                     env=env)
    if returncode != 0 or "authorization_url" not in answer:
        raise RpError(f"rp.mjs start failed: {answer.get('error')}: {answer.get('message')} "
                      f"(code {answer.get('code')}); stderr: {stderr!r}")
    return AuthorizationStart(str(answer["authorization_url"]), state_file, elapsed)


async def rp_finish(client: RpClient, state_file: Path, callback_url: str, *, skip_userinfo: bool = False,
                    timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> RpResult:
    """openid-client's handling of the redirect back to `callback_url` (the Location the provider sent,
    code and state in its query): the code grant with the PKCE verifier, expected state and nonce, an ID
    token required and validated, then userinfo with the access token (its `sub` must be the ID token's)
    unless `skip_userinfo`. A refusal is an RpResult with `error`; only a broken harness raises."""
    args = ["finish", *client.argv(), "--state-file", str(state_file), "--callback-url", callback_url]
    if skip_userinfo:
        args.append("--skip-userinfo")
    answer, returncode, stderr, elapsed = await _run(args, ca_file=client.ca_file, timeout_s=timeout_s,
                                                     env=env)
    if returncode != 0 or "error" in answer:
        return RpResult(
            claims=None, userinfo=None, error=str(answer.get("error", "Error")),
            message=answer.get("message"), code=answer.get("code"), oauth_error=answer.get("oauth_error"),
            status=answer.get("status"), elapsed_s=elapsed, stderr=stderr)
    return RpResult(claims=answer["claims"], userinfo=answer.get("userinfo"), token=answer.get("token", {}),
                    elapsed_s=elapsed, stderr=stderr)


class BackchannelRun:
    """`node rp.mjs ciba` under way: openid-client's backchannel authentication request answered
    (`initiation`: auth_req_id, expires_in, interval, pushauth_number), and its polling for the tokens (or,
    in ping mode, its wait for `notify`) still running until `result()`."""

    def __init__(self, proc: asyncio.subprocess.Process, initiation: dict[str, Any], started: float) -> None:
        self._proc = proc
        self.initiation = initiation
        self._started = started

    async def notify(self, ping: Mapping[str, Any]) -> None:
        """Ping mode: hand openid-client the body of the ping the test's notification receiver got; it
        checks the ping names its request, then asks the token endpoint with the CIBA grant."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(dict(ping)).encode() + b"\n")
        await self._proc.stdin.drain()

    async def result(self, timeout_s: float = 60.0) -> RpResult:
        try:
            out, err = await asyncio.wait_for(self._proc.communicate(), timeout_s)
        except BaseException:
            await _kill_group(self._proc)
            raise
        lines = out.decode(errors="replace").strip().splitlines()
        answer: dict[str, Any] = (json.loads(lines[-1]) if lines
                                  else {"error": "RpError", "message": "no output"})
        elapsed, stderr = time.monotonic() - self._started, err.decode(errors="replace")
        if self._proc.returncode != 0 or "error" in answer:
            return RpResult(claims=None, userinfo=None, error=str(answer.get("error", "Error")),
                            message=answer.get("message"), code=answer.get("code"),
                            oauth_error=answer.get("oauth_error"), status=answer.get("status"),
                            elapsed_s=elapsed, stderr=stderr)
        return RpResult(claims=answer["claims"], userinfo=None, token=answer.get("token", {}),
                        elapsed_s=elapsed, stderr=stderr)


async def rp_ciba(client: RpClient, login_hint: str, *, client_notification_token: str | None = None,
                  requested_expiry: int | None = None, poll_timeout_s: float | None = None,
                  timeout_s: float = 30.0) -> BackchannelRun:
    """openid-client's CIBA (`initiateBackchannelAuthentication`), returning once the provider answered the
    request. Poll mode by default: `pollBackchannelAuthenticationGrant` (interval, slow_down, the ID token
    validated) is then running; it gives up by itself at the request's expires_in unless `poll_timeout_s`
    gives it longer (to hear the provider's expired_token). Ping mode with `client_notification_token`: it
    waits for `BackchannelRun.notify`, then makes the CIBA grant request once."""
    args = ["ciba", *client.argv(), "--login-hint", login_hint]
    if client_notification_token is not None:
        args += ["--client-notification-token", client_notification_token]
    if requested_expiry is not None:
        args += ["--requested-expiry", str(requested_expiry)]
    if poll_timeout_s is not None:
        args += ["--poll-timeout", str(poll_timeout_s)]
    reason = missing_node_rp()
    if reason is not None:
        raise FileNotFoundError(reason)
    node = shutil.which("node")
    assert node is not None
    env = dict(os.environ)
    if client.ca_file is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(client.ca_file)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        node, str(RP_SCRIPT), *args, cwd=RP_DIR, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    except BaseException:
        await _kill_group(proc)
        raise
    line = json.loads(first or b"{}")
    if "initiation" not in line:
        await _kill_group(proc)
        raise RpError(f"rp.mjs ciba: {line}")
    return BackchannelRun(proc, dict(line["initiation"]), started)
