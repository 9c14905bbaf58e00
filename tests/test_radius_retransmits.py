"""A client's retransmits reaching any `pushauth radius` instance behind a UDP load balancer (issue 17: "one
sign-in, one push, one answer, whatever the retransmits"; pushauth/radius/retransmits.py).

Two RADIUS fronts in this process on one real Redis, each with a runtime and a Redis client of its own, as
two processes would have; the client is `RawClient`, pyrad's packets on one socket, so the very same bytes
(source address and port, Identifier, Request Authenticator) can go to one instance and then the other, as
a balancer without source affinity sends them. The phone is the reference simulator over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from pyrad import packet as rp
from radius_support import (
    AUTO,
    CHALLENGE,
    USER,
    VPN_ADDRESS,
    Front,
    RawClient,
    RawReply,
    counter,
    front,
    running_front,
)
from support import eventually

from pushauth.crypto.keyring import KeyRingHolder
from pushauth.radius.retransmits import ReplySeal, ReplyUnreadable

__all__ = ["front"]  # a fixture, used by name

ATTRIBUTES = {"User-Name": USER, "Calling-Station-Id": VPN_ADDRESS}
NOTHING_S = 1.0  # how long "no reply" is waited for


def answers() -> dict[str, float]:
    """Access-Requests answered so far, by answer, over every instance (one registry in this process)."""
    return {answer: sum(counter("pushauth_radius_requests_total", client=name, answer=answer)
                        for name in ("vpn", "gateway"))
            for answer in ("accept", "reject", "challenge")}


def retransmits(state: str) -> float:
    return counter("pushauth_radius_retransmits_total", state=state)


@pytest.fixture
def client() -> Iterator[RawClient]:
    raw = RawClient()
    yield raw
    raw.close()


async def reply_to(client: RawClient, request: rp.AuthPacket, port: int, timeout_s: float = 10) -> RawReply:
    """The reply to `request`, which must come from the instance on `port`."""
    got = await client.answer(request, timeout_s)
    assert got is not None, f"no reply from {port}"
    reply, source = got
    assert source == port, f"the reply came from {source}, not {port}"
    return reply


async def rx_values(front: Front) -> list[bytes]:
    """What the `radius:rx` keys hold (the tests' Redis client does not decode)."""
    values = [cast(bytes | None, await front.redis.get(key))
              async for key in front.redis.scan_iter(match="*:radius:rx:*")]
    return [v for v in values if v is not None]


async def kept(front: Front, replies: int) -> None:
    """Wait until Redis holds `replies` sealed replies: the claimant stores its reply just after sending
    it, and a copy sent to another instance before then is (rightly) dropped as still pending."""
    async def stored() -> bool | None:
        values = await rx_values(front)
        return True if sum(1 for v in values if v.startswith(b"r1.")) == replies else None

    await eventually(stored, 5, f"{replies} sealed replies in Redis")


async def prompted(front: Front) -> None:
    async def one() -> bool | None:
        return True if await front.prompts() == 1 else None

    await eventually(one, 10, "the prompt")


# -- auto mode, two instances --------------------------------------------------------------------------------


@pytest.fixture
async def pair(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [AUTO], instances=2) as running:
        yield running


async def test_a_copy_on_another_instance_is_dropped_then_answered_with_the_same_reply(
        pair: Front, client: RawClient) -> None:
    a, b = pair.ports
    phone = await pair.phone()
    request = client.request(ATTRIBUTES, password="irrelevant")
    raw = request.RequestPacket()
    before, held, answered = answers(), retransmits("held_elsewhere"), retransmits("answered_elsewhere")

    client.send(raw, a)
    await prompted(pair)
    client.send(raw, b)  # the balancer sends the client's retransmit to B while A waits for the phone
    assert await client.receive(NOTHING_S) is None  # B dropped it: A holds the request
    assert await pair.prompts() == 1  # (B did not sign in again: no second push)
    assert retransmits("held_elsewhere") == held + 1

    [pending] = await phone.pending()
    assert await phone.approve(pending) == "approved"
    accept = await reply_to(client, request, a)
    assert accept.code == rp.AccessAccept

    await kept(pair, 1)
    client.send(raw, b)  # the reply was lost on the way: the next copy reaches B
    again = await reply_to(client, request, b)
    assert again.raw == accept.raw  # A's reply, byte for byte: B did no sign-in of its own
    assert retransmits("answered_elsewhere") == answered + 1
    assert await pair.prompts() == 1
    after = answers()
    assert (after["accept"] - before["accept"], after["reject"] - before["reject"]) == (1, 0)


# -- challenge mode, two instances ---------------------------------------------------------------------------


@pytest.fixture
async def gateways(redis_url: str, keyring: KeyRingHolder, tmp_path: Path) -> AsyncIterator[Front]:
    async with running_front(redis_url, keyring, tmp_path, [CHALLENGE], instances=2) as running:
        yield running


def _opened(value: bytes) -> bytes:
    """A stored value as stored, and its base64 payload decoded, to look for the State in either."""
    text = value.decode()
    payload = text.rpartition(".")[2]
    try:
        return value + base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (ValueError, binascii.Error):
        return value


async def test_a_challenge_follow_up_on_either_instance_gets_one_accept_and_no_reject(
        gateways: Front, client: RawClient) -> None:
    a, b = gateways.ports
    phone = await gateways.phone()
    before = answers()
    first = client.request(ATTRIBUTES, password="irrelevant")
    first_raw = first.RequestPacket()
    client.send(first_raw, a)
    challenge = await reply_to(client, first, a)
    assert challenge.code == rp.AccessChallenge
    assert challenge.state is not None
    number = re.search(r"Enter (\d+)", challenge.reply_message or "")
    assert number is not None, challenge.reply_message

    # A copy of the first request reaching B gets A's Access-Challenge, the same State in it...
    await kept(gateways, 1)
    client.send(first_raw, b)
    assert (await reply_to(client, first, b)).raw == challenge.raw
    # ...which Redis holds sealed only: a copy of Redis does not answer the challenge.
    stored = await rx_values(gateways)
    assert stored
    assert all(challenge.state not in _opened(value) and challenge.state.hex().encode() not in value
               for value in stored), stored

    # The user presses Enter: the follow-up reaches B, which takes the State and waits for the phone.
    follow_up = client.request(ATTRIBUTES, password="", state=challenge.state)
    follow_raw = follow_up.RequestPacket()
    client.send(follow_raw, b)

    async def claimed() -> bool | None:
        return True if len([k async for k in gateways.redis.scan_iter(match="*:radius:rx:*")]) == 2 else None

    await eventually(claimed, 5, "B's claim of the follow-up")
    client.send(follow_raw, a)  # its retransmit reaches A: dropped there, not a Reject for a State taken
    assert await client.receive(NOTHING_S) is None

    [pending] = await phone.pending()
    assert await phone.approve(pending, number=number.group(1)) == "approved"
    accept = await reply_to(client, follow_up, b)
    assert accept.code == rp.AccessAccept
    await kept(gateways, 2)
    client.send(follow_raw, a)
    assert (await reply_to(client, follow_up, a)).raw == accept.raw

    after = answers()
    assert {k: after[k] - before[k] for k in after} == {"accept": 1, "reject": 0, "challenge": 1}
    assert await gateways.prompts() == 1


# -- one instance: the reply cached in memory ---------------------------------------------------------------


async def test_a_copy_after_the_answer_gets_the_cached_reply_without_a_second_sign_in(
        front: Front, client: RawClient) -> None:
    phone = await front.phone()
    request = client.request(ATTRIBUTES, password="irrelevant")
    raw = request.RequestPacket()
    before, answered = answers(), retransmits("answered")
    client.send(raw, front.port)
    await prompted(front)
    [pending] = await phone.pending()
    assert await phone.approve(pending) == "approved"
    accept = await reply_to(client, request, front.port)
    assert accept.code == rp.AccessAccept

    client.send(raw, front.port)  # the Accept was lost: the client resends the same packet
    again = await reply_to(client, request, front.port)
    assert again.raw == accept.raw
    assert retransmits("answered") == answered + 1  # from this process's cache, not through Redis
    assert await front.prompts() == 1
    after = answers()
    assert (after["accept"] - before["accept"], after["reject"] - before["reject"]) == (1, 0)


# -- the seal ----------------------------------------------------------------------------------------------


def test_a_sealed_reply_opens_only_under_its_own_key_name_and_its_clients_secret() -> None:
    seal = ReplySeal(b"vpn-shared-secret-for-tests-0123")
    reply = b"\x0b\x07\x00\x14" + bytes(16)
    stored = seal.seal(reply, "pa:radius:rx:" + "a" * 64)
    assert reply not in _opened(stored.encode())
    assert seal.open(stored, "pa:radius:rx:" + "a" * 64) == reply
    for wrong_seal, name in ((seal, "pa:radius:rx:" + "b" * 64),  # copied onto another request's key
                             (ReplySeal(b"another-clients-secret-000000000"), "pa:radius:rx:" + "a" * 64)):
        with pytest.raises(ReplyUnreadable):
            wrong_seal.open(stored, name)
    with pytest.raises(ReplyUnreadable):
        seal.open(stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1], "pa:radius:rx:" + "a" * 64)
    assert "secret" not in repr(seal)
