"""`pushauth demo`: the whole story on one machine, on the embedded store.

Starts a server, enrolls a simulated phone from a QR-code URI, then plays two sign-ins as a login page
would see them: one the user approves by typing the number shown, one the user denies with "I didn't
request this". The denial reaches the security team as a signed Standard Webhooks alert (a small
receiver in this process plays their SIEM), the account's prompts are suspended, and the team lifts the
suspension through the admin API. Nothing is written to disk; nothing survives the process.

`pushauth demo --serve` then keeps the server running for a person to try: the security team's console
(with an admin token made for this run), the sample login page, and the simulated phone, which asks on
this terminal whether to approve (type the number the login page shows) or deny.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import socket
import sys
import threading
import time
from typing import Any

import aiohttp
import segno
from aiohttp import web

from pushauth import clock
from pushauth.config import from_mapping
from pushauth.crypto import jws
from pushauth.crypto.secrets import new_secret, sha256_hex
from pushauth.logs import configure
from pushauth.phone import Challenge, Phone, PhoneError
from pushauth.web import create_app

USER = "alice.smith@nhs.net"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run an end-to-end demo on the embedded store")
    parser.add_argument("--port", type=int, default=0,
                        help="port for the demo server (default: any free one)")
    parser.add_argument("--no-qr", action="store_true", help="do not draw the enrollment QR code")
    parser.add_argument("--serve", action="store_true",
                   help="after the story keep the server running: the console, the sample login page, and "
                        "the phone answering from this terminal (Ctrl-C stops)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure("warning", "console")
    try:
        asyncio.run(_demo(args.port, show_qr=not args.no_qr, serve=args.serve))
    except KeyboardInterrupt:
        if not args.serve:
            raise
        print("\npushauth demo server stopped")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(title: str, **fields: Any) -> None:
    print(f"\n== {title}")
    for name, value in fields.items():
        print(f"   {name:<14} {value}")


async def _demo(port: int, *, show_qr: bool, serve: bool = False) -> None:
    port = port or _free_port()
    api_key, admin_token = new_secret(), new_secret()
    siem = _Siem("whsec_" + base64.b64encode(new_secret().encode()[:32]).decode())
    siem_runner = await siem.start()
    settings = from_mapping({
        "server": {"host": "127.0.0.1", "port": port, "base_url": f"http://127.0.0.1:{port}"},
        "keys": {"ephemeral": True},
        "applications": [{"id": "webmail", "name": "NHSmail webmail",
                          "api_key_sha256": [sha256_hex(api_key)]}],
        "admin": {"token_sha256": [sha256_hex(admin_token)]},
        "alerts": {"sinks": [{"name": "siem", "kind": "webhook", "url": siem.url, "secret": siem.secret,
                              "timeout_s": 5}]},
        "demo": {"enabled": serve, "application": "webmail"},
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
            await _security_team(call, siem, {"Authorization": f"Bearer {admin_token}"})
            if serve:
                await _serve(base, admin_token, phone)
    finally:
        await runner.cleanup()
        await siem_runner.cleanup()


async def _sign_in(call: Any, phone: Phone, jwks: dict[str, Any], *, approve: bool) -> None:
    # What the login page saw of the browser; the phone is shown "Firefox on Windows", never this text.
    firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    where = ({"ip": "81.2.69.160", "user_agent": firefox, "location": "Leeds, GB"} if approve
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
        print(f"   phone says: sign-in blocked, your security team has been told. {phone.user_message}")
    seen = await waiting
    _say("Login flow's waiting request returns", status=seen["status"],
         reason=seen.get("reason", "-"), user_message=seen.get("user_message", "-"))
    if "assertion" in seen:
        header = jws.read_header(seen["assertion"], typ="pushauth-assertion+jwt")
        key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        claims = jws.verify(seen["assertion"], jws.import_public_jwk(key))
        print(f"   assertion verified with the JWKS: sub={claims['sub']} aud={claims['aud']} "
              f"result={claims['result']} device={claims['device']}")


class _Siem:
    """The security team's receiver: checks each webhook's Standard Webhooks signature as any receiver
    must (HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>" with the shared secret)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/pushauth-alerts"
        self.received: asyncio.Queue[tuple[bool, dict[str, str], Any, float]] = asyncio.Queue()

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/pushauth-alerts", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        valid = any(hmac.compare_digest(expected, sig) for sig in h["webhook-signature"].split())
        await self.received.put((valid, dict(h), await request.json(), time.monotonic()))
        return web.Response(status=204 if valid else 401)


def _describe(challenge: dict[str, Any]) -> str:
    text = str(challenge["status"]) + (f" ({challenge['reason']})" if challenge.get("reason") else "")
    if challenge.get("revoked"):  # approved minutes before the "not me": no assertion is issued from it
        text += f", revoked ({challenge['revoked']})"
    return text


async def _security_team(call: Any, siem: _Siem, admin: dict[str, str]) -> None:
    # The attack came from a network Alice never signed in from (new_context, low), then she said "not
    # me": the same incident, escalated to critical and announced again (alert.updated).
    while True:
        valid, headers, body, _ = await asyncio.wait_for(siem.received.get(), 10)
        alert = body["data"]
        if alert["severity"] == "critical":
            break
    _say("Security team's SIEM receives the alert (Standard Webhooks)", signature="valid" if valid
         else "INVALID", webhook_id=headers["webhook-id"], type=body["type"], kind=alert["kind"],
         severity=alert["severity"].upper(), user=alert["user"])
    for event in alert["evidence"]["events"]:
        login = event.get("login", {})
        print(f"   event {event['kind']:<14} at {event['at']}  login from {login.get('ip', '-')} "
              f"({login.get('location', '-')}, {login.get('user_agent', '-')})  phone at "
              f"{event.get('phone_ip', '-')}")
    print("   contained: " + ", ".join(c["action"] for c in alert["evidence"]["containment"]))
    user = await call("GET", f"/v1/users/{alert['user']}", headers=admin)
    _say("Security team looks the user up", suspended=user["suspended"], reason=user["suspended_reason"],
         locked=user["locked"], devices=len(user["devices"]),
         recent="; ".join(_describe(c) for c in user["recent_challenges"]))
    blocked = await call("POST", "/v1/challenges", {"user": alert["user"]})
    print(f"   a new sign-in attempt now gets: {blocked['error']}")
    await call("POST", f"/v1/alerts/{alert['id']}/ack", headers=admin)
    cleared = await call("POST", f"/v1/users/{alert['user']}/unlock", {"what": "suspension"}, headers=admin)
    _say("After a call with the user, the team acknowledges the alert and lifts the suspension",
         was_suspended=cleared["was_suspended"])


# -- pushauth demo --serve: a person tries it --------------------------------------------------------------


async def _serve(base: str, admin_token: str, phone: Phone) -> None:
    _say("The server keeps running (Ctrl-C stops it)", console=f"{base}/console",
         admin_token=f"{admin_token}   (for this run only)", login_page=f"{base}/demo/login", user=USER)
    print(f"   sign in on the login page as {USER}; the phone asks here, on this terminal")
    lines = _stdin_lines()
    seen: set[str] = set()
    while True:
        try:
            fresh = [c for c in await phone.pending() if c.id not in seen]
        except (aiohttp.ClientError, PhoneError) as exc:
            print(f"   phone: {exc}")
            fresh = []
        for challenge in fresh:
            seen.add(challenge.id)
            await _ask(phone, challenge, lines)
        await asyncio.sleep(1)


async def _ask(phone: Phone, challenge: Challenge, lines: asyncio.Queue[str]) -> None:
    ctx = challenge.context or {}
    _say(f"Phone: sign in to {challenge.app}?", login_from=ctx.get("ip", "-"),
         location=ctx.get("location", "-"), browser=ctx.get("user_agent", "-"))
    print("   approve: type the number the login page shows; "
          "deny: d (I didn't request this) or m (by mistake)")
    while not lines.empty():  # nothing typed before the prompt counts as its answer
        lines.get_nowait()
    try:
        answer = (await asyncio.wait_for(lines.get(), max(1, challenge.exp - clock.now()))).strip()
    except TimeoutError:
        print("   (no answer: the prompt expired)")
        return
    try:
        if answer.lower() in ("d", "deny"):
            result = await phone.deny(challenge, reason="not_me")
        elif answer.lower() in ("m", "mistake"):
            result = await phone.deny(challenge, reason="mistake")
        else:
            result = await phone.approve(challenge, number=answer or None)
    except PhoneError as exc:
        print(f"   the server refused the answer: {exc}")
        return
    print(f"   the server says: {result}")


def _stdin_lines() -> asyncio.Queue[str]:
    """Lines typed on the terminal, from a daemon thread (a blocked read never holds up the exit)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        print("   (stdin closed: the phone can no longer be answered from here)")

    threading.Thread(target=read, name="demo-stdin", daemon=True).start()
    return lines
