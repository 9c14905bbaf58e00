"""`pushauth enroll USER`: an enrollment code for a user, as a URI and a QR code.

Talks to the store named in the config directly (run it on a server host), or to a running server's API
with `--server URL` and an admin token in $PUSHAUTH_ADMIN_TOKEN (the only way with the embedded store,
which lives inside the server process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import aiohttp
import segno

from pushauth.accounts.users import canonical
from pushauth.clock import rfc3339
from pushauth.config import load_settings
from pushauth.errors import ConfigError, PushAuthError
from pushauth.runtime import open_runtime


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("enroll", help="make an enrollment code and QR code for a user")
    parser.add_argument("user")
    parser.add_argument("--server", help="call this running server's API instead of the store")
    parser.add_argument("--svg", type=Path, help="also write the QR code as SVG")
    parser.add_argument("--png", type=Path, help="also write the QR code as PNG")
    parser.set_defaults(func=run)


async def _via_api(server: str, user: str) -> tuple[str, str]:
    token = os.environ.get("PUSHAUTH_ADMIN_TOKEN")
    if not token:
        raise ConfigError("set PUSHAUTH_ADMIN_TOKEN to an admin token to use --server")
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.rstrip('/')}/v1/enrollments", json={"user": user},
            headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise PushAuthError(f"server refused: {resp.status} {body.get('error')}: {body.get('message')}")
        return str(body["uri"]), str(body["expires_at"])


async def _via_store(args: argparse.Namespace) -> tuple[str, str]:
    settings = load_settings(args.config)
    if settings.embedded:
        raise ConfigError("no store.redis_url: the embedded store lives inside the server process; "
                          "use --server URL with PUSHAUTH_ADMIN_TOKEN")
    async with open_runtime(settings) as runtime:
        enrollment = await runtime.enrollments().create_enrollment(canonical(args.user), requested_by="cli")
        return enrollment.uri, rfc3339(enrollment.expires_at)


def run(args: argparse.Namespace) -> int:
    uri, expires = asyncio.run(_via_api(args.server, args.user) if args.server else _via_store(args))
    qr = segno.make(uri, error="m")
    qr.terminal(compact=True)
    print(f"\nEnrollment URI (single use, expires {expires}):\n{uri}")
    for path, kind in ((args.svg, "svg"), (args.png, "png")):
        if path:
            # Created 0600 from the first byte: the code in it is a secret until used.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as exc:
                raise PushAuthError(f"cannot write {path}: {exc.strerror}") from None
            with os.fdopen(fd, "wb") as out:
                qr.save(out, kind=kind, scale=6)
            print(f"QR code written to {path}")
    return 0
