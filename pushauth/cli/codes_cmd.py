"""`pushauth otp ...` (the security team's one-time-code methods, straight on the store) and
`pushauth keys generate-kek | rotate-kek` (the key-encryption key of the seeds)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import segno

from pushauth.accounts.users import canonical
from pushauth.clock import rfc3339
from pushauth.codes.pskc import parse_csv, parse_pskc
from pushauth.codes.seal import KekStore
from pushauth.codes.service import Codes
from pushauth.config import load_settings
from pushauth.errors import ConfigError, PushAuthError
from pushauth.runtime import open_runtime

BY = "cli"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    otp = sub.add_parser("otp", help="one-time-code (TOTP) methods: authenticator apps, hardware tokens")
    osub = otp.add_subparsers(dest="otp_command", required=True)
    enroll = osub.add_parser("enroll", help="enroll an authenticator app: QR code and URI, shown once")
    enroll.add_argument("user")
    enroll.add_argument("--name", default="", help="what to call it in the user view")
    enroll.set_defaults(func=_enroll)
    activate = osub.add_parser("activate", help="activate a pending method with a code it shows")
    activate.add_argument("user")
    activate.add_argument("method_id")
    activate.add_argument("code")
    activate.set_defaults(func=_activate)
    imp = osub.add_parser("import", help="import hardware tokens from a PSKC (RFC 6030) or CSV file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=("pskc", "csv"), default=None, help="default: by the file's suffix")
    imp.add_argument("--assign", action="append", default=[], metavar="SERIAL=USER",
                     help="assign a token to a user (repeat; a CSV may name users in a third column)")
    imp.add_argument("--psk-file", type=Path, default=None,
                     help="PSKC encrypted under a pre-shared key (RFC 6030 6.1): a file holding the "
                          "transport key the vendor sent apart, in hex")
    imp.set_defaults(func=_import)
    listing = osub.add_parser("list", help="a user's methods (never the seeds)")
    listing.add_argument("user")
    listing.set_defaults(func=_list)
    revoke = osub.add_parser("revoke", help="revoke a method")
    revoke.add_argument("user")
    revoke.add_argument("method_id")
    revoke.set_defaults(func=_revoke)


@asynccontextmanager
async def _codes(args: argparse.Namespace) -> AsyncIterator[Codes]:
    settings = load_settings(args.config)
    if settings.embedded:
        raise ConfigError("no store.redis_url: the embedded store lives inside the server process; "
                          "use the admin API (PROTOCOL.md section 17)")
    async with open_runtime(settings) as runtime:
        yield runtime.services.codes


def _enroll(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _codes(args) as codes:
            enrolled = await codes.enroll_app(canonical(args.user), by=BY, name=args.name)
        segno.make(enrolled.uri, error="m").terminal(compact=True)
        print(f"\nmethod {enrolled.method_id}: pending until activated (by {rfc3339(enrolled.expires_at)}) "
              f"with a code the app shows:\n  pushauth otp activate {args.user} {enrolled.method_id} CODE\n"
              f"URI (shown once; it holds the seed):\n{enrolled.uri}")
    asyncio.run(go())
    return 0


def _activate(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _codes(args) as codes:
            await codes.activate(canonical(args.user), args.method_id, args.code, by=BY)
    asyncio.run(go())
    print(f"{args.method_id} is active")
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PushAuthError(f"cannot read {args.file}: {exc}") from None
    kind = args.format or ("csv" if args.file.suffix.lower() == ".csv" else "pskc")
    assignments = {}
    for item in args.assign:
        serial, sep, user = item.partition("=")
        if not sep or not serial or not user:
            raise ConfigError(f"--assign {item!r}: expected SERIAL=USER")
        assignments[serial] = canonical(user)

    psk = None
    if args.psk_file is not None:
        try:
            psk = bytes.fromhex(args.psk_file.read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError, ValueError):
            raise ConfigError(f"--psk-file {args.psk_file}: expected a file holding the key in hex") from None

    async def go() -> list[dict[str, str]]:
        tokens = parse_pskc(text, psk) if kind == "pskc" else parse_csv(text)
        async with _codes(args) as codes:
            return await codes.import_tokens(tokens, assignments, by=BY, source=kind)
    for row in asyncio.run(go()):
        print(f"{row['serial']}  {row['user']}  {row['id']}  pending (activate with one of its codes)")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _codes(args) as codes:
            for m in await codes.methods(canonical(args.user)):
                print(f"{m['id']}  {m['kind']:8}  {m['status']:7}  {m['name']}")
    asyncio.run(go())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _codes(args) as codes:
            await codes.revoke(canonical(args.user), args.method_id, by=BY)
    asyncio.run(go())
    print(f"{args.method_id} revoked")
    return 0


# -- keys generate-kek / rotate-kek --------------------------------------------------------------------------


def _kek_store(args: argparse.Namespace) -> KekStore:
    return KekStore(args.path or Path(load_settings(args.config).keys.path))


def generate_kek(args: argparse.Namespace) -> int:
    ring = _kek_store(args).generate()
    print(f"generated key-encryption key {ring.current} (keys/kek.json)")
    return 0


def rotate_kek(args: argparse.Namespace) -> int:
    """A new current KEK; every seed re-encrypted under it; then the old keys dropped. Interrupted, it can
    be run again: the file keeps every key until all seeds are re-sealed."""
    store = _kek_store(args)
    ring = store.add_current()

    async def reseal() -> int:
        settings = load_settings(args.config)
        if settings.embedded:
            raise ConfigError("no store.redis_url: nothing to re-encrypt outside a server process")
        # A server that read the old file just before the new one landed may be sealing a seed under the
        # old key right now. Servers look at the file on every use of a seed, so after a pause longer than
        # any one request nobody seals under the old key any more; a second sweep catches what the first
        # could have missed, and only then are the old keys dropped.
        await asyncio.sleep(args.grace_s)
        async with open_runtime(settings) as runtime:
            count = await runtime.services.codes.reseal_all(ring)
            return count + await runtime.services.codes.reseal_all(ring)
    count = asyncio.run(reseal())
    store.drop_old()
    print(f"rotated: {ring.current} is now the key-encryption key; {count} seeds re-encrypted, old keys "
          "removed")
    return 0
