"""The `pushauth` command.

    pushauth serve                     run the API server
    pushauth keys generate|rotate|list|retire KID|generate-kek|rotate-kek
    pushauth apps new-key APP_ID NAME  make an API key for a login flow (prints its config block)
    pushauth admin new-token [--role R] make an admin token for the security team (or automation)
    pushauth admin accounts ...        console accounts: list, set USER ROLE, remove USER
    pushauth enroll USER               make an enrollment code and show its QR code
    pushauth otp enroll|activate|import|list|revoke   one-time-code (TOTP) methods
    pushauth phone ...                 the phone simulator (reference device)
    pushauth demo                      everything on the embedded store, end to end
    pushauth check                     exit non-zero when Redis, the keys or a worker is down
    pushauth radius                    the RADIUS front: push approval for VPNs, gateways and SSH
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pushauth import __version__
from pushauth.cli import check_cmd, codes_cmd, demo, enroll_cmd, keys_cmd, phone_cmd, radius_cmd, serve_cmd
from pushauth.errors import PushAuthError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushauth", description="Push sign-in approval server")
    parser.add_argument("--version", action="version", version=f"pushauth {__version__}")
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="TOML config file (default: $PUSHAUTH_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.register(sub)
    keys_cmd.register(sub)
    enroll_cmd.register(sub)
    codes_cmd.register(sub)
    phone_cmd.register(sub)
    demo.register(sub)
    check_cmd.register(sub)
    radius_cmd.register(sub)
    return parser


def _kid_is_positional(argv: list[str]) -> list[str]:
    """A kid is base64url, so one in 64 starts with "-", which argparse would take for an option:
    `keys retire -Ab3...` gets a `--` inserted before the kid."""
    if "retire" in argv and "keys" in argv[:argv.index("retire")]:
        i = argv.index("retire") + 1
        if i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help", "--"):
            return [*argv[:i], "--", *argv[i:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_kid_is_positional(list(sys.argv[1:] if argv is None else argv)))
    try:
        code: int = args.func(args)
    except PushAuthError as exc:
        print(f"pushauth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
