"""`pushauth keys ...` and the secret generators `apps new-key` / `admin new-token`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pushauth.cli import accounts_cmd, codes_cmd
from pushauth.config import from_mapping, load_settings
from pushauth.crypto.keys import KeyStore
from pushauth.crypto.secrets import new_secret, sha256_hex
from pushauth.errors import ConfigError
from pushauth.operators import ROLES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="manage the server signing keys in keys/")
    keys.add_argument("--path", type=Path, default=None, help="keys folder (default: keys.path from config)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("generate", help="create the first key").set_defaults(func=_generate)
    ksub.add_parser("rotate", help="add a new current key; old keys keep verifying").set_defaults(
        func=_rotate)
    ksub.add_parser("list", help="list keys").set_defaults(func=_list)
    retire = ksub.add_parser("retire", help="stop publishing and accepting an old key")
    retire.add_argument("kid")
    retire.set_defaults(func=_retire)
    ksub.add_parser("generate-kek", help="create the key-encryption key of TOTP seeds (keys/kek.json)"
                    ).set_defaults(func=codes_cmd.generate_kek)
    rotate_kek = ksub.add_parser("rotate-kek",
                                 help="new key-encryption key; re-encrypt every TOTP seed under it")
    rotate_kek.add_argument("--grace-s", type=float, default=5.0,
                            help="wait this long after the new key lands before re-encrypting, so no "
                                 "server is still sealing under the old one (default 5)")
    rotate_kek.set_defaults(func=codes_cmd.rotate_kek)

    apps = sub.add_parser("apps", help="login-flow application credentials")
    asub = apps.add_subparsers(dest="apps_command", required=True)
    new_key = asub.add_parser("new-key", help="generate an API key for an application")
    new_key.add_argument("app_id", metavar="APP_ID", help="the application's id: a-z 0-9 _ . - (max 64)")
    new_key.add_argument("name", metavar="NAME",
                         help='the name the phone shows for it, e.g. "NHSmail webmail" (quote it)')
    new_key.set_defaults(func=_new_app_key)

    admin = sub.add_parser("admin", help="security-team credentials")
    adsub = admin.add_subparsers(dest="admin_command", required=True)
    new_token = adsub.add_parser("new-token", help="generate an admin token")
    new_token.add_argument("--role", choices=ROLES, default="owner",
                           help="what the token may do (default owner: everything)")
    new_token.add_argument("--name", default="",
                           help="what it is for (a-z 0-9 _ . -), shown in the audit trail")
    new_token.set_defaults(func=_new_admin_token)
    accounts_cmd.register(adsub)


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(args.path or Path(load_settings(args.config).keys.path))


def _generate(args: argparse.Namespace) -> int:
    key = _store(args).generate()
    print(f"generated {key.kid} (current)")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    key = _store(args).rotate()
    print(f"rotated: {key.kid} is now current; older keys still verify until retired")
    return 0


def _list(args: argparse.Namespace) -> int:
    for info in _store(args).list():
        flag = "current" if info.current else info.status
        retired = f" retired {info.retired_at:%Y-%m-%dT%H:%M:%SZ}" if info.retired_at else ""
        print(f"{info.kid}  {flag:8}  created {info.created_at:%Y-%m-%dT%H:%M:%SZ}{retired}")
    return 0


def _retire(args: argparse.Namespace) -> int:
    _store(args).retire(args.kid)
    print(f"retired {args.kid}")
    return 0


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    """`value` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in value:
        if 0xD800 <= ord(char) <= 0xDFFF:  # from a command line that was not UTF-8
            raise ConfigError(f"not valid text (UTF-8): {value!r}")
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _new_app_key(args: argparse.Namespace) -> int:
    key = new_secret(32)
    # Checked as the server will check it, before a key is shown for a block that would not load.
    from_mapping({"applications": [{"id": args.app_id, "name": args.name,
                                    "api_key_sha256": [sha256_hex(key)]}]})
    block = (f"  [[applications]]\n  id = {_toml_string(args.app_id)}\n  name = {_toml_string(args.name)}\n"
             f'  api_key_sha256 = ["{sha256_hex(key)}"]')
    print(f"API key for {args.app_id} (give it to the login flow; it is not stored anywhere):\n  {key}\n")
    print(f"Add to config.toml:\n{block}")
    return 0


def _new_admin_token(args: argparse.Namespace) -> int:
    token = new_secret(32)
    print(f"Admin token (give it to the security team; it is not stored anywhere):\n  {token}\n")
    if args.role == "owner" and not args.name:
        print(f'Add to config.toml under [admin]:\n  token_sha256 = ["{sha256_hex(token)}"]')
        return 0
    name = f"\nname = {_toml_string(args.name)}" if args.name else ""
    print(f'Add to config.toml:\n[[admin.tokens]]\nsha256 = "{sha256_hex(token)}"\n'
          f'role = "{args.role}"{name}')
    return 0
