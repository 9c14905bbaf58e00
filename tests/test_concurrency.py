"""Concurrent answers to one challenge: of any number of racing decisions exactly one wins.

Real server, real Redis, real HTTP: 100 signed phone requests are in flight at once and the Lua script
that decides must let exactly one of them through; every other one gets 409 `already_decided`, none 5xx.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
from support import ADMIN_TOKEN, LoginFlow

from pushauth.phone import Phone

USER = "alice@nhs.net"  # the user the `phone` fixture enrolls


def _response_path(cid: str) -> str:
    return f"/v1/device/challenges/{cid}/response"


async def _answer(phone: Phone, cid: str, body: dict[str, Any]) -> tuple[int, Any]:
    # A fresh random jti per request (signed_request's default): these are distinct requests, not replays.
    return await phone.signed_request("POST", _response_path(cid), body)


def _assert_one_winner(results: list[tuple[int, Any]]) -> int:
    """Exactly one 200, the rest 409 already_decided, nothing else; returns the winner's index."""
    statuses = [status for status, _ in results]
    assert not [s for s in statuses if s >= 500], statuses
    winners = [i for i, (status, _) in enumerate(results) if status == 200]
    assert len(winners) == 1, statuses
    losers = [body for status, body in results if status != 200]
    assert all(status in (200, 409) for status in statuses), statuses
    assert all(body["error"] == "already_decided" for body in losers), losers
    return winners[0]


async def test_100_concurrent_approvals_exactly_one_wins(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    ch = await phone.fetch(created["id"])
    body = {"nonce": ch.nonce, "decision": "approve", "number": created["number"]}

    results = await asyncio.gather(*[_answer(phone, ch.id, body) for _ in range(100)])

    winner = _assert_one_winner(results)
    assert results[winner][1] == {"status": "approved"}
    assert sum(1 for status, _ in results if status == 409) == 99
    final = await login.status(ch.id)
    assert final["status"] == "approved"
    assert final["device"] == phone.device_id
    assert "assertion" in final


async def test_mixed_approve_deny_across_three_phones(login: LoginFlow, http: aiohttp.ClientSession) -> None:
    # the security team enrolls them: further phones are then active at once (no approval on the first)
    team = LoginFlow(http, login.url, api_key=ADMIN_TOKEN)
    phones = [await Phone.enroll(await team.enroll_uri(USER), session=http, name=f"phone {i}")
              for i in range(3)]
    created = await login.create(USER)
    challenges = [await p.fetch(created["id"]) for p in phones]
    nonce = challenges[0].nonce
    assert all(c.nonce == nonce for c in challenges)

    approve = {"nonce": nonce, "decision": "approve", "number": created["number"]}
    deny = {"nonce": nonce, "decision": "deny", "reason": "not_me"}
    plan = [(phones[i % 3], approve if i % 2 == 0 else deny) for i in range(100)]
    random.shuffle(plan)

    results = await asyncio.gather(*[_answer(p, created["id"], b) for p, b in plan])

    winner = _assert_one_winner(results)
    won_phone, won_body = plan[winner]
    expected = "approved" if won_body["decision"] == "approve" else "denied"
    # a "not me" also tells the user what to do now
    told = {"user_message": "Contact your IT service desk."} if expected == "denied" else {}
    assert results[winner][1] == {"status": expected, **told}
    final = await login.status(created["id"])
    assert final["status"] == expected
    assert final["device"] == won_phone.device_id
    if expected == "denied":
        assert final["reason"] == "not_me"
        assert "assertion" not in final
    else:
        assert "assertion" in final


async def test_cancel_racing_approve_exactly_one_succeeds(login: LoginFlow, phone: Phone) -> None:
    created = await login.create(USER)
    cid = created["id"]
    ch = await phone.fetch(cid)
    body = {"nonce": ch.nonce, "decision": "approve", "number": created["number"]}

    async def cancel() -> tuple[str, int, Any]:
        status, data = await login.call("DELETE", f"/v1/challenges/{cid}")
        return "cancel", status, data

    async def approve() -> tuple[str, int, Any]:
        status, data = await _answer(phone, cid, body)
        return "approve", status, data

    calls = [cancel() for _ in range(20)] + [approve() for _ in range(20)]
    random.shuffle(calls)
    results = await asyncio.gather(*calls)

    statuses = [status for _, status, _ in results]
    assert not [s for s in statuses if s >= 500], statuses
    winners = [(kind, data) for kind, status, data in results if status == 200]
    assert len(winners) == 1, results
    assert all(status == 409 for _, status, _ in results if status != 200), results
    assert all(data["error"] == "already_decided" for _, status, data in results if status == 409)
    kind, data = winners[0]
    final = await login.status(cid)
    if kind == "cancel":
        assert data == {"status": "cancelled"}
        assert final["status"] == "cancelled"
    else:
        assert data == {"status": "approved"}
        assert final["status"] == "approved"
        assert final["device"] == phone.device_id
