"""Server signing-key rotation on a running server with a real keys folder: the server notices the new
keyring, signs with the new key, keeps publishing (and verifying) the old one until it is retired, and a
broken keyring on disk never takes it down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import LoginFlow, RunningServer, free_port, make_settings, start_server

from pushauth.crypto import jws
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import RING_FILE, KeyStore, ServerKey
from pushauth.phone import CHALLENGE_TYP, Phone

USER = "frank@nhs.net"
ASSERTION_TYP = "pushauth-assertion+jwt"


@dataclass
class Deployment:
    store: KeyStore
    first: ServerKey
    server: RunningServer
    login: LoginFlow
    phone: Phone


async def _deploy(tmp_path: Path, redis_url: str, http: aiohttp.ClientSession) -> Deployment:
    store = KeyStore(tmp_path / "keys")
    first = store.generate()
    settings = make_settings(redis_url, free_port(), keys={"path": str(store.path), "ephemeral": False,
                                                           "reload_interval_s": 0.2})
    keyring = KeyRingHolder.from_settings(settings.keys)
    server = await start_server(settings, keyring)
    try:
        login = LoginFlow(http, server.url)
        phone = await Phone.enroll(await login.enroll_uri(USER), session=http)
    except BaseException:
        await server.close()
        raise
    return Deployment(store, first, server, login, phone)


@pytest.fixture
async def deployment(tmp_path: Path, redis_url: str,
                     http: aiohttp.ClientSession) -> AsyncIterator[Deployment]:
    d = await _deploy(tmp_path, redis_url, http)
    yield d
    await d.server.close()


async def _jwks(d: Deployment) -> dict[str, Any]:
    async with d.login.http.get(d.server.url + "/.well-known/jwks.json") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def _kids(d: Deployment) -> list[str]:
    return [k["kid"] for k in (await _jwks(d))["keys"]]


async def _until_kids(d: Deployment, kids: list[str], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while (seen := await _kids(d)) != kids:
        assert time.monotonic() < deadline, f"JWKS still lists {seen}, want {kids}"
        await asyncio.sleep(0.05)


def _verify_with_jwks(token: str, jwks: dict[str, Any], typ: str) -> tuple[str, dict[str, Any]]:
    """Verify like any outside party: pick the key by the header's kid from the published JWKS."""
    kid = jws.read_header(token, typ=typ)["kid"]
    matches = [k for k in jwks["keys"] if k["kid"] == kid]
    assert matches, f"kid {kid} is not in the JWKS"
    return kid, jws.verify(token, jws.import_public_jwk(matches[0]))


async def test_rotate_then_retire(deployment: Deployment) -> None:
    d = deployment
    assert await _kids(d) == [d.first.kid]
    old = await d.login.create(USER)
    old_ch = await d.phone.fetch(old["id"])
    assert jws.read_header(old_ch.token, typ=CHALLENGE_TYP)["kid"] == d.first.kid

    second = d.store.rotate()
    await _until_kids(d, [second.kid, d.first.kid])  # current first, the old one still published

    # New challenges are signed with the new key; the phone (which knows only the first key) refreshes
    # its server keys on the unknown kid and verifies them.
    new = await d.login.create(USER)
    new_ch = await d.phone.fetch(new["id"])
    assert jws.read_header(new_ch.token, typ=CHALLENGE_TYP)["kid"] == second.kid
    assert await d.phone.approve(new_ch, number=new["number"]) == "approved"
    seen = await d.login.status(new["id"])
    assert seen["status"] == "approved"
    jwks = await _jwks(d)
    kid, claims = _verify_with_jwks(seen["assertion"], jwks, ASSERTION_TYP)
    assert kid == second.kid
    assert (claims["jti"], claims["result"], claims["device"]) == (new["id"], "approved", d.phone.device_id)

    # What the first key signed before the rotation still verifies against the JWKS, and the challenge
    # it belongs to can still be answered.
    kid, claims = _verify_with_jwks(old_ch.token, jwks, CHALLENGE_TYP)
    assert (kid, claims["jti"]) == (d.first.kid, old["id"])
    assert await d.phone.approve(old_ch, number=old["number"]) == "approved"

    # New enrollment QR codes pin the new key.
    assert f"jkt={second.kid}" in await d.login.enroll_uri("grace@nhs.net")

    d.store.retire(d.first.kid)
    await _until_kids(d, [second.kid])
    with pytest.raises(AssertionError, match="not in the JWKS"):
        _verify_with_jwks(old_ch.token, await _jwks(d), CHALLENGE_TYP)
    # Still fully working after the retirement.
    last = await d.login.create(USER)
    assert await d.phone.approve(last["id"], number=last["number"]) == "approved"


async def test_broken_keyring_on_reload_keeps_previous_keys(deployment: Deployment) -> None:
    d = deployment
    # The first key's PEM loses its private mode, then a rotation makes the server reload: the load fails
    # (group/other-readable private key), and the server must carry on with the keys it has.
    os.chmod(d.store.path / f"{d.first.kid}.pem", 0o644)
    second = d.store.rotate()
    await asyncio.sleep(1.0)  # five reload intervals
    assert await _kids(d) == [d.first.kid]

    created = await d.login.create(USER)
    ch = await d.phone.fetch(created["id"])
    assert jws.read_header(ch.token, typ=CHALLENGE_TYP)["kid"] == d.first.kid
    assert await d.phone.approve(ch, number=created["number"]) == "approved"
    seen = await d.login.status(created["id"])
    assert _verify_with_jwks(seen["assertion"], await _jwks(d), ASSERTION_TYP)[0] == d.first.kid

    # Fixed on disk: the reload loop is still alive and picks the rotation up.
    os.chmod(d.store.path / f"{d.first.kid}.pem", 0o600)
    await _until_kids(d, [second.kid, d.first.kid])


async def test_garbage_keyring_json_keeps_previous_keys(deployment: Deployment) -> None:
    d = deployment
    ring = d.store.path / RING_FILE
    good = ring.read_bytes()
    tmp = d.store.path / "half-copied.tmp"
    tmp.write_bytes(good[: len(good) // 2])
    os.replace(tmp, ring)  # a half-copied keyring.json (a deploy that copies the folder)
    await asyncio.sleep(0.6)
    assert await _kids(d) == [d.first.kid]
    created = await d.login.create(USER)
    assert await d.phone.approve(created["id"], number=created["number"]) == "approved"

    tmp.write_bytes(good)
    os.replace(tmp, ring)
    second = d.store.rotate()
    await _until_kids(d, [second.kid, d.first.kid])


async def test_keyring_unreadable_for_a_moment_does_not_stop_reloads(
        tmp_path: Path, redis_url: str, http: aiohttp.ClientSession) -> None:
    """keyring.json that cannot even be stat'ed for a moment (here a symlink loop: ELOOP; on a real
    server running as its own user, more likely EACCES on the folder) must be survived like any other
    broken keyring: keep the keys, keep watching, shut down cleanly."""
    d = await _deploy(tmp_path, redis_url, http)
    passed = False
    try:
        ring = d.store.path / RING_FILE
        good = ring.read_bytes()
        loop = d.store.path / "loop.tmp"
        loop.symlink_to(RING_FILE)
        os.replace(loop, ring)  # keyring.json -> keyring.json
        with pytest.raises(OSError, match="symbolic links"):
            os.stat(ring)
        await asyncio.sleep(0.6)  # three reload intervals
        assert await _kids(d) == [d.first.kid]
        created = await d.login.create(USER)
        assert await d.phone.approve(created["id"], number=created["number"]) == "approved"

        tmp = d.store.path / "restore.tmp"
        tmp.write_bytes(good)
        os.chmod(tmp, 0o600)
        os.replace(tmp, ring)
        second = d.store.rotate()
        await _until_kids(d, [second.kid, d.first.kid])
        passed = True
    finally:
        if passed:
            await d.server.close()  # must not raise either
        else:
            with contextlib.suppress(Exception):
                await d.server.close()
