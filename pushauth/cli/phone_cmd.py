"""`pushauth phone ...`: the phone simulator on the command line, with its state (device key) in a file.

    pushauth phone enroll 'pushauth://enroll?v=1&server=...&code=...&jkt=...'
    pushauth phone list
    pushauth phone approve <challenge id> --number 42
    pushauth phone deny <challenge id> --reason not_me
    pushauth phone unenroll
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pushauth.phone import Challenge, Phone, PhoneError, ServerRejected

DEFAULT_STATE = "phone.json"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    phone = sub.add_parser("phone",
                           help="simulate a phone: enroll, status, code, list, approve, deny, unenroll",
                           description="A simulated phone, the reference device implementation.")
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", type=Path, default=Path(DEFAULT_STATE), metavar="FILE",
                       help=f"phone state file holding the device key (default: ./{DEFAULT_STATE})")
    cmds = phone.add_subparsers(dest="phone_command", metavar="COMMAND", required=True)

    parser = cmds.add_parser("enroll", parents=[state],
                             help="enroll from a pushauth://enroll URI (the QR code)")
    parser.add_argument("uri", metavar="URI")
    parser.add_argument("--name", default="Simulated phone", help="device name shown to the security team")
    parser.add_argument("--platform", choices=["ios", "android", "other"], default="other")
    parser.add_argument("--server-override", metavar="URL",
                   help="send HTTP requests here instead of the URI's server (e.g. through a proxy)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing state file")
    parser.add_argument("--offline-codes", action="store_true",
                        help="ask the server for a TOTP seed: offline one-time codes (`pushauth phone code`)")
    parser.set_defaults(func=run_enroll)

    parser = cmds.add_parser("status", parents=[state],
                             help="this phone's activation: active, or waiting for another phone's approval")
    parser.set_defaults(func=run_status)

    parser = cmds.add_parser("code", parents=[state], help="show the offline one-time code (no network)")
    parser.set_defaults(func=run_code)

    parser = cmds.add_parser("list", parents=[state], help="list pending sign-in requests")
    parser.set_defaults(func=run_list)

    parser = cmds.add_parser("approve", parents=[state], help="approve a sign-in request")
    parser.add_argument("id", metavar="ID", help="challenge id (from `pushauth phone list`)")
    parser.add_argument("--number", help="the number shown on the login page (number matching)")
    parser.set_defaults(func=run_approve)

    parser = cmds.add_parser("deny", parents=[state], help="deny a sign-in request")
    parser.add_argument("id", metavar="ID", help="challenge id (from `pushauth phone list`)")
    parser.add_argument("--reason", choices=["not_me", "mistake"], default="not_me",
                   help="not_me (someone else is signing in: alerts the security team) or mistake")
    parser.set_defaults(func=run_deny)

    parser = cmds.add_parser("unenroll", parents=[state],
                        help="remove this phone from the server and delete its state file")
    parser.set_defaults(func=run_unenroll)


def _run(coro: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        return await coro()

    try:
        return asyncio.run(main())
    except ServerRejected as exc:
        print(f"error: server answered {exc.status} {exc.error}: {exc.message}", file=sys.stderr)
    except PhoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def _load(args: argparse.Namespace) -> Phone:
    path: Path = args.state
    if not path.exists():
        raise PhoneError(f"no phone state at {path}: run `pushauth phone enroll URI` first")
    return Phone.load(path)


def _describe(ch: Challenge) -> list[str]:
    left = max(0, ch.exp - int(time.time()))
    lines = [f"{ch.id}  app: {ch.app}  user: {ch.user}  expires in {left} s"]
    ctx = ch.context or {}
    for label, key in (("from", "ip"), ("location", "location"), ("browser", "user_agent")):
        if ctx.get(key):
            lines.append(f"    {label}: {ctx[key]}")
    if ch.purpose == "add_device":
        platform = (ch.new_device or {}).get("platform", "other")
        lines.insert(1, f"    ADD A NEW PHONE ({platform}) to your account? If you are not setting one up "
                        "right now, someone has your password: deny with --reason not_me")
        lines.append("    needs the number shown on the new phone (--number N)")
    elif ch.number_matching:
        lines.append("    needs the number shown on the login page (--number N)")
    return lines


def run_enroll(args: argparse.Namespace) -> int:
    path: Path = args.state
    if path.exists() and not args.force:
        print(f"error: {path} already holds an enrolled phone: unenroll it, or use --state FILE or --force",
              file=sys.stderr)
        return 1

    async def go() -> int:
        phone = await Phone.enroll(args.uri, name=args.name, platform=args.platform,
                                   server_override=args.server_override, offline_codes=args.offline_codes)
        await phone.close()
        phone.save(path)
        print(f"enrolled device {phone.device_id} for user {phone.user} at {phone.server}")
        print(f"state saved to {path} (it holds the device private key)")
        if args.offline_codes and not phone.has_offline_codes:
            print("the server gave no offline codes (turned off, or the phone waits for approval)")
        if phone.status == "pending_approval":
            print(f"this phone waits for approval: on one of {phone.user}'s phones, approve adding it and "
                  f"enter {phone.approval_number}")
        return 0

    return _run(go)


def run_status(args: argparse.Namespace) -> int:
    """A phone added to an account that has one waits for that phone's approval; asked after the approval,
    the server hands over the offline-code seed the phone asked for at enrollment, once: keep it."""
    async def go() -> int:
        async with _load(args) as phone:
            had_codes = phone.has_offline_codes
            data = await phone.activation()
        status = data["status"]
        if status == "pending_approval":
            print(f"waiting for approval until {data.get('expires_at', '?')}: on one of {phone.user}'s "
                  f"phones, approve adding this one and enter {data.get('number', '?')}")
            return 0
        if status != "active":
            print(f"this phone was not approved ({status}): enroll it again")
            return 1
        if phone.has_offline_codes and not had_codes:
            phone.save(args.state)
            print(f"active; offline codes received and saved to {args.state} (`pushauth phone code`)")
        else:
            print("active")
        return 0

    return _run(go)


def run_code(args: argparse.Namespace) -> int:
    try:
        print(_load(args).offline_code())
    except PhoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _load(args) as phone:
            challenges = await phone.pending()
        if not challenges:
            print("no pending sign-in requests")
        for ch in challenges:
            print("\n".join(_describe(ch)))
        return 0

    return _run(go)


def run_approve(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _load(args) as phone:
            ch = await phone.fetch(args.id)
            if ch.number_matching and args.number is None:
                raise PhoneError("this sign-in uses number matching: pass --number with the number shown "
                                 "on the login page")
            status = await phone.approve(ch, number=args.number)
        print(f"{ch.id}: {status}")
        return 0 if status == "approved" else 1

    return _run(go)


def run_deny(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _load(args) as phone:
            status = await phone.deny(args.id, reason=args.reason)
        print(f"{args.id}: {status}")
        if phone.user_message:
            # what the phone shows after "not me": blocked, the team told, and what to do now
            print("This sign-in was blocked and your security team has been told. Sign-in requests for "
                  f"your account are paused until they have spoken to you. {phone.user_message}")
        return 0

    return _run(go)


def run_unenroll(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _load(args) as phone:
            await phone.unenroll()
        print(f"unenrolled device {phone.device_id}")
        return 0

    code = _run(go)
    if code == 0:
        args.state.unlink(missing_ok=True)
        print(f"removed {args.state}")
    return code
