"""`pushauth demo`: the whole story on one machine, on the embedded store.

Starts a server, enrolls a simulated phone from a QR-code URI, then plays two sign-ins as a login page
would see them: one the user approves by typing the number shown, one the user denies with "I didn't
request this". Nothing is written to disk; nothing survives the process.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import aiohttp
import segno
from aiohttp import web

from pushauth.config import from_mapping
from pushauth.crypto import jws
from pushauth.crypto.secrets import new_secret, sha256_hex
from pushauth.logs import configure
from pushauth.phone import Phone
from pushauth.web import create_app

USER = "alice.smith@nhs.net"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run an end-to-end demo on the embedded store")
    p.add_argument("--port", type=int, default=0, help="port for the demo server (default: any free one)")
    p.add_argument("--no-qr", action="store_true", help="do not draw the enrollment QR code")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure("warning", "console")
    asyncio.run(_demo(args.port, show_qr=not args.no_qr))
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(title: str, **fields: Any) -> None:
    print(f"\n== {title}")
    for name, value in fields.items():
        print(f"   {name:<14} {value}")


async def _demo(port: int, *, show_qr: bool) -> None:
    port = port or _free_port()
    api_key, admin_token = new_secret(), new_secret()
    settings = from_mapping({
        "server": {"host": "127.0.0.1", "port": port, "base_url": f"http://127.0.0.1:{port}"},
        "keys": {"ephemeral": True},
        "applications": [{"id": "webmail", "name": "NHSmail webmail",
                          "api_key_sha256": [sha256_hex(api_key)]}],
        "admin": {"token_sha256": [sha256_hex(admin_token)]},
    })
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = settings.server.base_url
    print(f"pushauth demo server on {base} (embedded store: nothing survives this process)")
    rp = {"Authorization": f"Bearer {api_key}"}
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, body: Any = None, headers: dict[str, str] = rp) -> Any:
                async with http.request(method, base + path, json=body, headers=headers) as resp:
                    return await resp.json()

            enrollment = await call("POST", "/v1/enrollments", {"user": USER},
                                    {"Authorization": f"Bearer {admin_token}"})
            _say("Security team creates an enrollment code", user=enrollment["user"],
                 expires=enrollment["expires_at"])
            if show_qr:
                segno.make(enrollment["uri"], error="m").terminal(compact=True)
            phone = await Phone.enroll(enrollment["uri"], name="Alice's phone", platform="android",
                                       session=http)
            _say("Phone scans the QR code and registers its P-256 key", device=phone.device_id)

            jwks = await call("GET", "/.well-known/jwks.json")
            await _sign_in(call, phone, jwks, approve=True)
            await _sign_in(call, phone, jwks, approve=False)
    finally:
        await runner.cleanup()


async def _sign_in(call: Any, phone: Phone, jwks: dict[str, Any], *, approve: bool) -> None:
    where = ({"ip": "81.2.69.160", "user_agent": "Firefox on Windows", "location": "Leeds, GB"} if approve
             else {"ip": "185.220.101.4", "user_agent": "curl/8.5", "location": "unknown"})
    created = await call("POST", "/v1/challenges", {"user": USER, "context": where})
    _say("Login page creates a challenge" + (" (the user is signing in)" if approve
                                             else " (an attacker with the password)"),
         challenge=created["id"], status=created["status"], number=created["number"],
         from_ip=where["ip"])
    waiting = asyncio.create_task(call("GET", f"/v1/challenges/{created['id']}?wait=30"))
    challenge = (await phone.pending())[0]
    _say("Phone shows the prompt (verified against the server's key)", app=challenge.app,
         context=challenge.context, asks_number=challenge.number_matching)
    if approve:
        await phone.approve(challenge, number=created["number"])
        print(f"   user types {created['number']} and taps Approve")
    else:
        await phone.deny(challenge, reason="not_me")
        print("   user taps Deny: \"I didn't request this\"")
    seen = await waiting
    _say("Login flow's waiting request returns", status=seen["status"],
         reason=seen.get("reason", "-"))
    if "assertion" in seen:
        header = jws.read_header(seen["assertion"], typ="pushauth-assertion+jwt")
        key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        claims = jws.verify(seen["assertion"], jws.import_public_jwk(key))
        print(f"   assertion verified with the JWKS: sub={claims['sub']} aud={claims['aud']} "
              f"result={claims['result']} device={claims['device']}")
