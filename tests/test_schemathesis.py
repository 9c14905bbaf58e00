"""Schemathesis against the served OpenAPI document: every operation of `/openapi.json`, fuzzed against a
real server on the shared real Redis.

For each operation, cases are generated in both of schemathesis's modes: positive (requests that fit the
schema) and negative (requests that break it: wrong types, missing fields, extra fields, bad path values).
Every request carries the credentials its operation documents: the login flow's API key, the admin token,
or, for the phone API, a valid `PushAuth` signature made by a phone enrolled for the operation over the
exact method, path, query and body bytes sent (so device cases reach the handlers instead of stopping at
401). Operations with `{id}`, `{user}` or `{device_id}` in their path get a third pass with those fixed to
a real pending challenge, user and phone, so the handlers' state-dependent branches see fuzzed bodies too.
Each operation gets a fresh user, phone and challenge (a case may unenroll, revoke, lock or pause them).

Asserted for every response: no 5xx at all (Redis is up, so not even 503), a `Retry-After` on 429, and,
outside the HTML console, every 4xx in exactly the contract's shape `{"error": str, "message": str}`.
Statuses the document does not list for an operation are printed (not failed: the document is the
OpenAPI module's to keep; tests/test_openapi.py checks its shape). The server runs on an event loop in a
thread of its own, because schemathesis sends requests synchronously.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from support import ADMIN_TOKEN, API_KEY, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth import clock
from pushauth.crypto import device_auth
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone
from pushauth.web.openapi import ADMIN, APP_KEY, DEVICE

T = TypeVar("T")

# Examples per operation and mode (and for the pass with real ids): ~3,000 requests in all.
MAX_EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 25}
REAL_IDS_EXAMPLES = 15


class ServerThread:
    """A pushauth server on an event loop running in a thread of its own."""

    def __init__(self, redis_url: str, keyring: KeyRingHolder) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pushauth-server", daemon=True)
        self.thread.start()
        self.server: RunningServer = self.run(start_server(make_settings(redis_url, free_port()), keyring))
        self.http: aiohttp.ClientSession = self.run(self._session())

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.http.close())
            self.run(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def live(redis_url: str, keyring: KeyRingHolder) -> Iterator[ServerThread]:
    st = ServerThread(redis_url, keyring)
    try:
        yield st
    finally:
        st.close()


class Credentials(requests.auth.AuthBase):
    """Whatever the operation's security scheme asks for, computed on the final prepared request."""

    def __init__(self, scheme: str, phone: Phone) -> None:
        self.scheme = scheme
        self.phone = phone

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.scheme == APP_KEY:
            r.headers["Authorization"] = f"Bearer {API_KEY}"
        elif self.scheme == ADMIN:
            r.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        elif self.scheme == DEVICE:
            body = r.body or b""
            if isinstance(body, str):
                body = body.encode()
            assert isinstance(body, bytes), type(body)
            token = device_auth.sign_request(
                self.phone._key, method=str(r.method), path_qs=r.path_url, body=body,
                jti=secrets.token_urlsafe(18), iat=clock.now(), kid=self.phone.device_id)
            r.headers["Authorization"] = f"PushAuth {token}"
        return r


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.by_operation: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.undocumented: dict[str, set[int]] = defaultdict(set)
        self.no_cases: list[str] = []  # (operation, mode) pairs schemathesis could generate nothing for


def check_response(op: Any, label: str, case: Any, resp: requests.Response, tally: Tally) -> None:
    tally.cases += 1
    tally.by_operation[label] += 1
    tally.statuses[resp.status_code] += 1
    where = f"{label}: {case.method} {resp.request.path_url} -> {resp.status_code}"
    problems = []
    if resp.status_code >= 500:
        problems.append("server error")
    if resp.status_code == 429 and not resp.headers.get("Retry-After"):
        problems.append("429 without Retry-After")
    console = op.path.startswith("/console")
    is_json = resp.headers.get("Content-Type", "").startswith("application/json")
    if resp.status_code >= 400 and (not console or is_json):
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not (isinstance(body, dict) and set(body) == {"error", "message"}
                and isinstance(body["error"], str) and body["error"]
                and isinstance(body["message"], str) and body["message"]
                and "Traceback" not in body["message"]):
            problems.append(f"error body not in the contract's shape: {resp.text[:200]!r}")
    if str(resp.status_code) not in op.definition.raw.get("responses", {}) and resp.status_code != 405:
        tally.undocumented[f"{op.method.upper()} {op.path}"].add(resp.status_code)
    if problems:
        tally.failures.append(f"{where}: {'; '.join(problems)}\n    body sent: {resp.request.body!r:.300}")


def send(http: requests.Session, auth: Credentials, kwargs: dict[str, Any]) -> requests.Response:
    return http.request(**kwargs, auth=auth, allow_redirects=False, timeout=15)


def fuzz(op: Any, strategy: SearchStrategy[Any], n_examples: int,
         send: Callable[[dict[str, Any]], requests.Response], base: str, tally: Tally) -> None:
    """Run `n_examples` cases of `strategy` against the server, checking each response."""
    label = f"{op.method.upper()} {op.path}"

    @settings(max_examples=n_examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=base)
        kwargs.pop("auth", None)
        check_response(op, label, case, send(kwargs), tally)

    run()


async def _prepare(st: ServerThread, n: int) -> tuple[Phone, dict[str, Any], str]:
    login = LoginFlow(st.http, st.server.url)
    user = f"fuzz-{n:03d}@nhs.net"
    phone = await Phone.enroll(await login.enroll_uri(user), session=st.http)
    created = await login.create(user)
    return phone, created, user


def test_every_operation_of_the_openapi_document(live: ServerThread) -> None:
    base = live.server.url
    # The served document, loaded as a dict: `from_url` would leave out the document's own operation.
    doc = requests.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), [r for r in results if not isinstance(r, Ok)]
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    paths = doc["paths"]
    documented = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert {(op.method.upper(), op.path) for op in operations} == documented
    tally = Tally()
    http = requests.Session()
    start = time.perf_counter()
    for n, op in enumerate(operations):
        label = f"{op.method.upper()} {op.path}"
        phone, created, user = live.run(_prepare(live, n))
        security = op.definition.raw.get("security") or [{}]
        auth = Credentials(next(iter(security[0]), ""), phone)
        params = {p["name"] for p in op.definition.raw.get("parameters", []) if p.get("in") == "path"}
        real = {k: v for k, v in {"id": created["id"], "user": user, "device_id": phone.device_id}.items()
                if k in params}
        passes: list[tuple[GenerationMode, dict[str, Any] | None, int]] = [
            (mode, None, n_examples) for mode, n_examples in MAX_EXAMPLES.items()]
        if real:
            passes.append((GenerationMode.POSITIVE, real, REAL_IDS_EXAMPLES))
            passes.append((GenerationMode.NEGATIVE, real, REAL_IDS_EXAMPLES))
        for mode, fixed, n_examples in passes:
            try:
                fuzz(op, op.as_strategy(generation_mode=mode, path_parameters=fixed), n_examples,
                     partial(send, http, auth), base, tally)
            except Exception as exc:  # nothing to break in negative mode (no parameters, no body)
                if type(exc).__name__ not in ("Unsatisfiable", "FailedHealthCheck"):
                    raise
                tally.no_cases.append(f"{label} {mode.value} ({type(exc).__name__})")
    elapsed = time.perf_counter() - start
    print(f"\nschemathesis: {tally.cases} cases over {len(operations)} operations in {elapsed:.1f} s; "
          f"{len(tally.failures)} failures; statuses {dict(sorted(tally.statuses.items()))}")
    for what, statuses in sorted(tally.undocumented.items()):
        print(f"  status not in the document: {what} {sorted(statuses)}")
    print(f"  nothing to generate (no parameters or body to break): {', '.join(tally.no_cases)}")
    assert len(tally.by_operation) == len(operations), set(o.path for o in operations) - {
        k.split(" ", 1)[1] for k in tally.by_operation}
    assert not tally.failures, "\n".join(tally.failures[:20])
