"""A hypothesis state machine of the challenge lifecycle, checked against a model through the HTTP API.

Rules: create a challenge, fetch it from the phone, approve it with the right or a wrong number, deny it
("not_me" or "mistake"), cancel it from the login flow, move time (by steps, to exactly a challenge's
expiry, or to just before it), replay a request the server accepted before, and answer one challenge
several times concurrently (`asyncio.gather`: exactly one answer may win). The model is, per challenge,
what its status must be: pending until decided, cancelled or past `expires_at` (expired, computed on
read), and a decision is final.

After every step the invariants are checked through the HTTP API for every challenge the run created:
the login flow's `GET /v1/challenges/{id}` has the model's status, a `reason` exactly when denied, an
`assertion` (verified against the server's JWKS, with the right subject, challenge, audience and device)
exactly when approved; and the phone's `GET /v1/device/challenges` lists exactly the challenges the
model says are pending. The rules themselves check the answers: 409 (`already_decided` / `expired` /
`not_pending`) on answers, fetches and cancellations of challenges that are decided or expired, 401 on
replays, and no state change from any refusal.

Detection's containment is out of the way (tests/support.make_settings' default `quiet_detection=True`:
no suspension after "not_me", no lockout, no push-bombing limit at these numbers), so a "not_me" denial
does not deny the user's other pending challenges and the model stays per challenge. Containment has its
own tests (tests/test_detection.py).

Time is `pushauth.clock.now`, frozen and moved only by the rules (monkeypatched: every decision reads it,
and the simulated phone signs with it, so phone and server agree). The server runs on an event loop in a
thread of its own; each rule runs its requests there with `asyncio.run_coroutine_threadsafe`. Hypothesis
runs derandomized: 50 examples of up to 30 steps, the same ones every run.
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import secrets
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from joserfc.jwk import ECKey
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth import clock
from pushauth.crypto import device_auth, jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.phone import Phone

T = TypeVar("T")
ASSERTION_TYP = "pushauth-assertion+jwt"
DECIDED = ("approved", "denied", "cancelled")


class ServerThread:
    """A pushauth server on an event loop running in a thread of its own."""

    def __init__(self, redis_url: str, keyring: KeyRingHolder) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pushauth-server", daemon=True)
        self.thread.start()
        self.server: RunningServer = self.run(start_server(make_settings(redis_url, free_port()), keyring))
        self.http: aiohttp.ClientSession = self.run(self._session())
        self.login = LoginFlow(self.http, self.server.url)

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


@dataclass
class Model:
    """What one challenge's state must be."""

    status: str  # pending | approved | denied | cancelled (expired is computed from `exp`)
    exp: int
    number: str
    nonce: str
    reason: str | None = None

    def effective(self, now: int) -> str:
        return "expired" if self.status == "pending" and now >= self.exp else self.status


@dataclass(frozen=True)
class Sent:
    """A signed device request exactly as sent, to replay."""

    method: str
    path: str
    body: bytes | None
    token: str


def _unix(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def _wrong(number: str) -> str:
    return str((int(number) + 1) % 10 ** len(number)).zfill(len(number))


STATS: Counter[str] = Counter()
EXAMPLES, STEPS = 50, 30


class LifecycleMachine(RuleBasedStateMachine):
    live: ClassVar[ServerThread]
    clock: ClassVar[list[int]]  # [now]: what pushauth.clock.now() returns
    server_keys: ClassVar[dict[str, ECKey]]
    users: ClassVar[Iterator[int]]

    challenges = Bundle("challenges")

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.user = f"model-{next(self.users):03d}@nhs.net"
        self.phone = self.run(self._enroll())
        self.model: dict[str, Model] = {}
        self.accepted: list[Sent] = []

    # -- plumbing ---------------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.live.run(coro)

    @property
    def now(self) -> int:
        return self.clock[0]

    async def _enroll(self) -> Phone:
        return await Phone.enroll(await self.live.login.enroll_uri(self.user), session=self.live.http)

    async def _device(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One signed device request (fresh jti); an accepted one is kept for the replay rule."""
        raw = msgspec.json.encode(body) if body is not None else None
        token = device_auth.sign_request(self.phone._key, method=method, path_qs=path, body=raw or b"",
                                         jti=secrets.token_urlsafe(18), iat=clock.now(),
                                         kid=self.phone.device_id)
        status, data = await self.phone.signed_request(method, path, raw_body=raw, token=token)
        if status < 300:
            self.accepted.append(Sent(method, path, raw, token))
        return status, data

    async def _resend(self, sent: Sent) -> tuple[int, Any]:
        return await self.phone.signed_request(sent.method, sent.path, raw_body=sent.body, token=sent.token)

    def _answer_body(self, cid: str, kind: str) -> dict[str, Any]:
        m = self.model[cid]
        if kind in ("right", "wrong"):
            return {"nonce": m.nonce, "decision": "approve",
                    "number": m.number if kind == "right" else _wrong(m.number)}
        return {"nonce": m.nonce, "decision": "deny", "reason": kind}

    def _apply(self, cid: str, kind: str) -> None:
        m = self.model[cid]
        if kind == "right":
            m.status, m.reason = "approved", None
        else:
            m.status, m.reason = "denied", "wrong_number" if kind == "wrong" else kind

    def _expect_refusal(self, status: int, body: Any, expected: int, codes: tuple[str, ...]) -> None:
        assert status == expected, (status, body)
        assert isinstance(body, dict), body
        assert set(body) == {"error", "message"}, body
        assert body["error"] in codes, body

    def _conflict_code(self, cid: str, *, fetch: bool = False) -> tuple[str, ...]:
        eff = self.model[cid].effective(self.now)
        if eff == "expired":
            return ("expired",)
        return ("not_pending",) if fetch else ("already_decided",)

    # -- rules ------------------------------------------------------------------------------------------

    @rule(target=challenges, ttl=st.sampled_from([10, 30, 60, 120]))
    def create(self, ttl: int) -> str:
        STATS["create"] += 1
        created = self.run(self.live.login.create(self.user, ttl_s=ttl))
        assert created["status"] == "pending"
        exp = _unix(created["expires_at"])
        assert exp == self.now + ttl
        status, data = self.run(self._device("GET", f"/v1/device/challenges/{created['id']}"))
        assert status == 200, data
        ch = self.run(self.phone.verify_challenge(data["challenge"], refresh=False))
        assert ch.id == created["id"]
        assert ch.exp == exp
        self.model[ch.id] = Model("pending", exp, created["number"], ch.nonce)
        return ch.id

    @rule(cid=challenges)
    def fetch(self, cid: str) -> None:
        STATS["fetch"] += 1
        status, data = self.run(self._device("GET", f"/v1/device/challenges/{cid}"))
        if self.model[cid].effective(self.now) == "pending":
            assert status == 200, data
            ch = self.run(self.phone.verify_challenge(data["challenge"], refresh=False))
            assert (ch.id, ch.nonce, ch.exp) == (cid, self.model[cid].nonce, self.model[cid].exp)
        else:
            self._expect_refusal(status, data, 409, self._conflict_code(cid, fetch=True))

    def _answer(self, cid: str, kind: str) -> None:
        path = f"/v1/device/challenges/{cid}/response"
        status, data = self.run(self._device("POST", path, self._answer_body(cid, kind)))
        if self.model[cid].effective(self.now) == "pending":
            assert status == 200, data
            self._apply(cid, kind)
            assert data == self._answered(cid, kind)
        else:
            self._expect_refusal(status, data, 409, self._conflict_code(cid))

    def _answered(self, cid: str, kind: str) -> dict[str, str]:
        """The phone's 200: the status, and after "not me" what the user is told to do now."""
        if kind == "not_me":
            return {"status": self.model[cid].status, "user_message": "Contact your IT service desk."}
        return {"status": self.model[cid].status}

    @rule(cid=challenges, right=st.booleans())
    def approve(self, cid: str, right: bool) -> None:
        STATS["approve"] += 1
        self._answer(cid, "right" if right else "wrong")

    @rule(cid=challenges, reason=st.sampled_from(["not_me", "mistake"]))
    def deny(self, cid: str, reason: str) -> None:
        STATS["deny"] += 1
        self._answer(cid, reason)

    @rule(cid=challenges)
    def cancel(self, cid: str) -> None:
        STATS["cancel"] += 1
        status, data = self.run(self.live.login.call("DELETE", f"/v1/challenges/{cid}"))
        if self.model[cid].effective(self.now) == "pending":
            assert (status, data) == (200, {"status": "cancelled"})
            self.model[cid].status = "cancelled"
        else:
            self._expect_refusal(status, data, 409, self._conflict_code(cid))

    @precondition(lambda self: bool(self.model))
    @rule(seconds=st.sampled_from([1, 5, 9, 30, 61, 200]))
    def advance_time(self, seconds: int) -> None:
        STATS["advance_time"] += 1
        self.clock[0] += seconds

    @rule(cid=challenges, before=st.booleans())
    def to_the_expiry(self, cid: str, before: bool) -> None:
        """The boundary: at `exp - 1` a challenge is still pending, at `exp` it has expired."""
        STATS["to_the_expiry"] += 1
        target = self.model[cid].exp - (1 if before else 0)
        self.clock[0] = max(self.clock[0], target)

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        STATS["replay"] += 1
        sent = data.draw(st.sampled_from(self.accepted), label="replayed request")
        status, body = self.run(self._resend(sent))
        # The jti is in the replay cache; once time has moved past the skew the iat check says so first.
        self._expect_refusal(status, body, 401, ("replayed", "stale_request"))

    @rule(cid=challenges, kinds=st.lists(st.sampled_from(["right", "wrong", "not_me", "mistake"]), min_size=2,
                                         max_size=6))
    def concurrent_answers(self, cid: str, kinds: list[str]) -> None:
        STATS["concurrent_answers"] += 1
        path = f"/v1/device/challenges/{cid}/response"

        async def all_at_once() -> list[tuple[int, Any]]:
            return list(await asyncio.gather(*(self._device("POST", path, self._answer_body(cid, k))
                                               for k in kinds)))

        results = self.run(all_at_once())
        assert all(status < 500 for status, _ in results), results
        if self.model[cid].effective(self.now) == "pending":
            winners = [i for i, (status, _) in enumerate(results) if status == 200]
            assert len(winners) == 1, results
            for i, (status, body) in enumerate(results):
                if i != winners[0]:
                    self._expect_refusal(status, body, 409, ("already_decided",))
            self._apply(cid, kinds[winners[0]])
            assert results[winners[0]][1] == self._answered(cid, kinds[winners[0]])
        else:
            codes = self._conflict_code(cid)
            for status, body in results:
                self._expect_refusal(status, body, 409, codes)

    # -- invariants -------------------------------------------------------------------------------------

    @invariant()
    def the_server_agrees_with_the_model(self) -> None:
        STATS["steps checked"] += 1
        if not self.model:
            return

        async def read_all() -> tuple[list[dict[str, Any]], list[str]]:
            views = await asyncio.gather(*(self.live.login.status(cid) for cid in self.model))
            return list(views), [ch.id for ch in await self.phone.pending()]

        views, listed = self.run(read_all())
        now = self.now
        for cid, view in zip(self.model, views, strict=True):
            m = self.model[cid]
            expected = m.effective(now)
            assert view["id"] == cid
            assert view["user"] == self.user
            assert view["status"] == expected, (cid, view, m, now)
            assert ("reason" in view) == (expected == "denied"), view
            if expected == "denied":
                assert view["reason"] == m.reason, (view, m)
            assert ("decided_at" in view) == (expected in DECIDED), view
            assert ("assertion" in view) == (expected == "approved"), view
            if expected == "approved":
                self._check_assertion(view["assertion"], cid)
                assert view["device"] == self.phone.device_id
        pending = {cid for cid, m in self.model.items() if m.effective(now) == "pending"}
        assert sorted(listed) == sorted(pending), (listed, pending)

    def _check_assertion(self, token: str, cid: str) -> None:
        header = jws.read_header(token, typ=ASSERTION_TYP)
        claims = jws.verify(token, self.server_keys[header["kid"]])
        assert claims["sub"] == self.user
        assert claims["jti"] == cid
        assert claims["aud"] == "webmail"
        assert claims["result"] == "approved"
        assert claims["device"] == self.phone.device_id
        assert claims["iat"] == self.now


@pytest.fixture
def live(redis_url: str, keyring: KeyRingHolder) -> Iterator[ServerThread]:
    st_ = ServerThread(redis_url, keyring)
    try:
        yield st_
    finally:
        st_.close()


def test_challenge_lifecycle_matches_the_model(live: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = [int(time.time())]
    monkeypatch.setattr(clock, "now", lambda: frozen[0])
    jwks = live.run(live.login.call("GET", "/.well-known/jwks.json"))[1]
    LifecycleMachine.live = live
    LifecycleMachine.clock = frozen
    LifecycleMachine.server_keys = {k["kid"]: jws.import_public_jwk(k) for k in jwks["keys"]}
    LifecycleMachine.users = itertools.count()
    STATS.clear()
    start = time.perf_counter()
    run_state_machine_as_test(LifecycleMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck)))
    rules = ", ".join(f"{k} {v}" for k, v in sorted(STATS.items()) if k not in ("examples", "steps checked"))
    print(f"\nlifecycle state machine: {STATS['examples']} machine runs (max_examples={EXAMPLES}, "
          f"up to {STEPS} steps), {STATS['steps checked']} invariant checks, "
          f"{time.perf_counter() - start:.1f} s; rules run: {rules}")
    assert STATS["concurrent_answers"] > 0
    assert STATS["replay"] > 0
