"""Keycloak's CIBA HTTP authentication channel, against the fake Keycloak realm (testkit/fakes/keycloak.py,
written from Keycloak's source): the realm sends its channel request with its bearer; pushauth prompts the
phone and posts the result to the realm's callback, which checks the bearer as Keycloak does and records
SUCCEED, UNAUTHORIZED or CANCELLED. A bearer the realm did not sign, an expired one, one of another issuer
or audience, and bad bodies are refused before any prompt; the callback is retried while the realm fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from support import AdminClient, LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.oidc import outbox
from pushauth.phone import Challenge, Phone
from testkit.fakes.keycloak import FakeKeycloak
from testkit.redis_server import RedisServer

USER = "erin@nhs.net"
KEYCLOAK_USER_ID = "0b4ad5d2-52d5-4a2c-9d4b-0f3c8e1b6a21"  # Keycloak's id for the user: the bearer's sub


@dataclass
class Env:
    server: RunningServer
    realm: FakeKeycloak
    http: aiohttp.ClientSession
    phone: Phone

    @property
    def channel(self) -> str:
        return self.server.url + "/keycloak/authentication-channel"

    async def ask(self, body: dict[str, Any] | None = None, **bearer: Any) -> tuple[int, Any, str]:
        """The realm's channel request for USER: (status, answer, auth_result_id)."""
        token, auth_result_id = self.realm.bearer(KEYCLOAK_USER_ID, **bearer)
        status, answer = await self.realm.request_authentication(
            self.channel, token, body if body is not None else self.realm.channel_request(USER))
        return status, answer, auth_result_id


async def _start(redis_url: str, keyring: KeyRingHolder, realm_settings: dict[str, Any],
                 **sections: Any) -> RunningServer:
    return await start_server(make_settings(
        redis_url, free_port(), quiet_detection=False,
        oidc={"keycloak": {"enabled": True, "realms": [realm_settings]}}, **sections), keyring)


@pytest.fixture
async def env(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[Env]:
    async with FakeKeycloak() as realm:
        server = await _start(redis_url, keyring, {"issuer": realm.issuer, "application": "webmail"})
        try:
            async with aiohttp.ClientSession() as http:
                phone = await Phone.enroll(await LoginFlow(http, server.url).enroll_uri(USER), session=http)
                yield Env(server, realm, http, phone)
        finally:
            await server.close()


async def prompt(phone: Phone) -> Challenge:
    for _ in range(100):
        if pending := await phone.pending():
            [challenge] = pending
            return challenge
        await asyncio.sleep(0.05)
    raise AssertionError("no prompt on the phone")


async def test_an_approval_reaches_the_realm_as_succeed(env: Env) -> None:
    status, answer, auth_result_id = await env.ask(env.realm.channel_request(
        USER, binding_message="Desk-7F2K", acr_values="gold", extra={"custom": "ignored"}))
    assert status == 201, answer
    challenge = await prompt(env.phone)
    # Keycloak cannot pass a number to its client: no number matching, the binding message as text instead.
    assert challenge.number_matching is False
    assert challenge.context == {"binding_message": "Desk-7F2K"}
    assert challenge.app == "NHSmail webmail"
    assert env.realm.pending[auth_result_id].status is None  # nothing before the phone answers
    assert await env.phone.approve(challenge) == "approved"
    assert await env.realm.result(auth_result_id) == "SUCCEED"
    [taken] = env.realm.callbacks
    assert (taken.status_code, taken.body) == (200, {"status": "SUCCEED"})


async def test_a_denial_is_unauthorized(env: Env) -> None:
    status, answer, auth_result_id = await env.ask()
    assert status == 201, answer
    assert await env.phone.deny(await prompt(env.phone), "mistake") == "denied"
    assert await env.realm.result(auth_result_id) == "UNAUTHORIZED"


async def test_not_me_is_unauthorized_and_raises_the_alert(env: Env) -> None:
    _, _, auth_result_id = await env.ask()
    assert await env.phone.deny(await prompt(env.phone), "not_me") == "denied"
    assert await env.realm.result(auth_result_id) == "UNAUTHORIZED"
    alerts = await AdminClient(env.http, env.server.url).alerts()
    assert [(a["kind"], a["severity"], a["user"]) for a in alerts] == [("denied_not_me", "critical", USER)]
    # ... and containment too: the user's prompts are suspended, so the realm's next request is refused.
    status, answer, _ = await env.ask()
    assert (status, answer["error"]) == (403, "suspended"), answer
    assert await env.phone.pending() == []


async def test_a_cancelled_prompt_is_cancelled(env: Env) -> None:
    _, _, auth_result_id = await env.ask()
    challenge = await prompt(env.phone)
    # The application's own credential may cancel its prompts (the REST API's DELETE).
    status, body = await LoginFlow(env.http, env.server.url).call("DELETE", f"/v1/challenges/{challenge.id}")
    assert status in (200, 204), body
    assert await env.realm.result(auth_result_id) == "CANCELLED"


async def test_a_prompt_nobody_answers_is_cancelled_while_the_bearer_still_holds(env: Env) -> None:
    # The realm's request lives 16 s; the prompt ends 5 s before it, so the callback still gets in.
    _, _, auth_result_id = await env.ask(expires_in=16)
    await prompt(env.phone)
    assert await env.realm.result(auth_result_id, within_s=15) == "CANCELLED"
    assert env.realm.callbacks[-1].status_code == 200


async def test_the_callback_is_retried_when_the_realm_fails_then_taken(env: Env) -> None:
    env.realm.fail_callbacks("503", "drop")
    _, _, auth_result_id = await env.ask()
    assert await env.phone.approve(await prompt(env.phone)) == "approved"
    assert await env.realm.result(auth_result_id, within_s=15) == "SUCCEED"
    assert [c.status_code for c in env.realm.callbacks] == [503, 0, 200]  # 0: dropped unanswered


@pytest.mark.parametrize(("bearer", "why"), [
    ({"foreign_key": True}, "signature"),  # the realm's kid, another key
    ({"expires_in": -5}, "expired"),
    ({"issuer": "http://127.0.0.1:9/realms/other"}, "not from a configured realm"),
    ({"audience": "account"}, "audience"),
    ({"typ": "ID"}, "token type"),
])
async def test_a_bearer_the_realm_would_refuse_is_refused_before_any_prompt(
        env: Env, bearer: dict[str, Any], why: str) -> None:
    status, answer, _ = await env.ask(**bearer)
    assert (status, answer["error"]) == (401, "invalid_token"), answer
    assert why in answer["message"]
    assert await env.phone.pending() == []
    assert env.realm.callbacks == []


async def test_no_bearer_or_another_scheme_is_refused(env: Env) -> None:
    body = env.realm.channel_request(USER)
    for headers in ({}, {"Authorization": "Basic ZGVzazpzZWNyZXQ="}, {"Authorization": "Bearer not.a.jwt"}):
        async with env.http.post(env.channel, json=body, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert (await resp.json())["error"] == "invalid_token"
    assert await env.phone.pending() == []


async def test_a_replayed_bearer_starts_no_second_prompt(env: Env) -> None:
    token, _ = env.realm.bearer(KEYCLOAK_USER_ID)
    body = env.realm.channel_request(USER)
    status, _ = await env.realm.request_authentication(env.channel, token, body)
    assert status == 201
    status, answer = await env.realm.request_authentication(env.channel, token, body)
    assert (status, answer["error"]) == (409, "replayed"), answer
    assert len(await env.phone.pending()) == 1


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"", 400, "bad_json"),
    (b"{not json", 400, "bad_json"),
    (b'{"login_hint": "erin@nhs.net", "login_hint": "mallory@nhs.net"}', 400, "bad_json"),
    (b"[]", 422, "invalid"),
    (b'{"scope": "openid"}', 422, "invalid"),  # no login_hint
    (b'{"login_hint": 42}', 422, "invalid"),
    (b'{"login_hint": "erin@nhs.net", "is_consent_required": "yes"}', 422, "invalid"),
    (b'{"login_hint": "erin\\u0000@nhs.net"}', 422, "invalid_user"),
    (b'{"login_hint": ""}', 422, "invalid_user"),
    (json.dumps({"login_hint": USER, "binding_message": "x" * 65}).encode(), 422, "invalid_binding_message"),
    (json.dumps({"login_hint": USER, "binding_message": "Call\n0113"}).encode(), 422,
     "invalid_binding_message"),
    (json.dumps({"login_hint": USER, "binding_message": "abc\u202edcba"}).encode(), 422,
     "invalid_binding_message"),  # a bidi override: what the phone shows would not be what was sent
    (json.dumps({"login_hint": "nobody@nhs.net"}).encode(), 403, "not_enrolled"),
])
async def test_bad_bodies_are_refused(env: Env, body: bytes, status: int, error: str) -> None:
    token, _ = env.realm.bearer(KEYCLOAK_USER_ID)
    got, answer = await env.realm.request_authentication(env.channel, token, body)
    assert (got, answer["error"]) == (status, error), answer
    assert await env.phone.pending() == []


async def test_a_request_too_short_to_prompt_is_refused(env: Env) -> None:
    status, answer, _ = await env.ask(expires_in=12)
    assert (status, answer["error"]) == (422, "expires_too_soon"), answer
    assert await env.phone.pending() == []


async def test_the_realm_keys_from_a_file(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> None:
    """jwks_file instead of the realm's certs URL: nothing is fetched (the fake realm is not even asked)."""
    async with FakeKeycloak() as realm:
        keys = tmp_path / "realm-jwks.json"
        keys.write_text(json.dumps(realm.jwks()), encoding="utf-8")
        server = await _start(redis_url, keyring, {"issuer": realm.issuer, "application": "webmail",
                                                   "jwks_file": str(keys)})
        try:
            async with aiohttp.ClientSession() as http:
                phone = await Phone.enroll(await LoginFlow(http, server.url).enroll_uri(USER), session=http)
                env = Env(server, realm, http, phone)
                status, answer, auth_result_id = await env.ask()
                assert status == 201, answer
                assert await phone.approve(await prompt(phone)) == "approved"
                assert await realm.result(auth_result_id) == "SUCCEED"
                status, answer, _ = await env.ask(foreign_key=True)
                assert (status, answer["error"]) == (401, "invalid_token")
        finally:
            await server.close()


async def test_off_by_default(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url + "/keycloak/authentication-channel", json={"login_hint": USER}) as resp:
        assert resp.status == 404


async def test_the_callback_survives_a_restart_of_the_server(env: Env, keyring: KeyRingHolder) -> None:
    """The server that took the request stops before the phone answers; the next one (same Redis, same
    address) adopts the waiting callback at once (the stopping server gave its lease back)."""
    _, _, auth_result_id = await env.ask()
    challenge = await prompt(env.phone)
    await env.server.close()
    second = await start_server(env.server.settings, keyring)
    try:
        assert await env.phone.approve(challenge) == "approved"
        assert await env.realm.result(auth_result_id, within_s=10) == "SUCCEED"
        assert [c.status_code for c in env.realm.callbacks] == [200]  # once
    finally:
        await second.close()


async def test_the_callback_survives_a_server_that_dies(env: Env, keyring: KeyRingHolder,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that dies gives nothing back: its lease runs out (3 s here), and another server adopts."""
    monkeypatch.setattr(outbox, "LEASE_S", 3)
    monkeypatch.setattr(outbox, "WAIT_S", 1.0)
    _, _, auth_result_id = await env.ask()
    challenge = await prompt(env.phone)

    async def die(self: outbox.Outbox) -> None:  # stop following, as a killed process does, and no more
        for task in list(self._tasks.values()):
            task.cancel()

    monkeypatch.setattr(outbox.Outbox, "close", die)
    await env.server.close()
    monkeypatch.undo()
    monkeypatch.setattr(outbox, "LEASE_S", 3)
    second = await start_server(env.server.settings, keyring)
    try:
        assert await env.phone.approve(challenge) == "approved"
        assert await env.realm.result(auth_result_id, within_s=15) == "SUCCEED"
        assert [c.status_code for c in env.realm.callbacks] == [200]
    finally:
        await second.close()


async def test_the_realm_bearer_is_never_logged(env: Env) -> None:
    """The realm's token is a credential for Keycloak's callback: no log event of a whole run (request,
    prompt, answer, callback, a refused forgery) carries it or a piece of its signature."""
    body = env.realm.channel_request(USER)
    with capture_logs() as events:
        token, auth_result_id = env.realm.bearer(KEYCLOAK_USER_ID)
        status, _ = await env.realm.request_authentication(env.channel, token, body)
        assert status == 201
        assert await env.phone.approve(await prompt(env.phone)) == "approved"
        assert await env.realm.result(auth_result_id) == "SUCCEED"
        forged, _ = env.realm.bearer(KEYCLOAK_USER_ID, foreign_key=True)
        status, _ = await env.realm.request_authentication(env.channel, forged, body)
        assert status == 401
    logged = repr(events)
    assert any(e.get("event") == "notification_taken" for e in events)  # the run was captured
    for secret in (token, token.rsplit(".", 1)[1], forged.rsplit(".", 1)[1]):
        assert secret not in logged


async def test_redis_down_fails_closed(private_redis: RedisServer, keyring: KeyRingHolder) -> None:
    """No Redis, no prompt and no promise: 503, and Keycloak tells its client to come back later."""
    async with FakeKeycloak() as realm:
        server = await _start(private_redis.url, keyring, {"issuer": realm.issuer, "application": "webmail"})
        try:
            async with aiohttp.ClientSession() as http:
                phone = await Phone.enroll(await LoginFlow(http, server.url).enroll_uri(USER), session=http)
                env = Env(server, realm, http, phone)
                private_redis.stop()
                status, answer, _ = await env.ask()
                assert (status, answer["error"]) == (503, "unavailable"), answer
                private_redis.start()
                assert await phone.pending() == []
                status, answer, auth_result_id = await env.ask()  # and back to normal
                assert status == 201, answer
                assert await phone.approve(await prompt(phone)) == "approved"
                assert await realm.result(auth_result_id) == "SUCCEED"
        finally:
            await server.close()


async def test_a_refusal_by_the_realm_is_final(env: Env) -> None:
    """Keycloak answers 403 to a callback for a request that is no longer pending (decided by another
    path, or run out): no retry follows a 4xx."""
    _, _, auth_result_id = await env.ask()
    challenge = await prompt(env.phone)
    env.realm.pending[auth_result_id].status = "CANCELLED"  # the realm has closed the request itself
    assert await env.phone.approve(challenge) == "approved"
    for _ in range(100):
        if env.realm.callbacks:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # past the first retry's delay: nothing more comes
    assert [(c.status_code, c.answer["error"]) for c in env.realm.callbacks] == [(403, "invalid_token")]


async def test_a_refused_bearer_counts_once_and_an_unreachable_jwks_is_no_failure(
        redis_url: str, keyring: KeyRingHolder) -> None:
    """A refused bearer is one failed authentication of Keycloak's address (it once counted twice, so a
    few bearers expired by clock drift blocked Keycloak at half the limit); a realm whose keys cannot be
    fetched (Keycloak restarting) answers 503 and counts nothing."""
    async with FakeKeycloak() as realm:
        dead = f"http://127.0.0.1:{free_port()}/certs"  # nothing listens: the keys cannot be fetched
        server = await _start(redis_url, keyring, {"issuer": realm.issuer, "application": "webmail"},
                              rate_limits={"auth_failures": 4})
        broken = await _start(redis_url, keyring, {"issuer": realm.issuer, "application": "webmail",
                                                   "jwks_url": dead}, rate_limits={"auth_failures": 4})
        try:
            # both servers share Redis and so this address's failure count: the 503s first, then the 401s
            # still get to the limit of 4 (had the 503s counted, the block would come sooner)
            body = realm.channel_request(USER)
            good, _ = realm.bearer(KEYCLOAK_USER_ID)
            url = broken.url + "/keycloak/authentication-channel"
            statuses = [(await realm.request_authentication(url, good, body))[0] for _ in range(3)]
            assert statuses == [503, 503, 503], statuses
            forged, _ = realm.bearer(KEYCLOAK_USER_ID, foreign_key=True)
            url = server.url + "/keycloak/authentication-channel"
            statuses = [(await realm.request_authentication(url, forged, body))[0] for _ in range(5)]
            assert statuses == [401, 401, 401, 401, 429], statuses
        finally:
            await server.close()
            await broken.close()
