"""`pushauth admin accounts list|set USER ROLE|remove USER`: the console accounts, straight in the store
(an owner's act: whoever can run this holds the config with the Redis URL). Audited as `cli`."""

from __future__ import annotations

import argparse
import asyncio

from pushauth.accounts.users import canonical
from pushauth.config import load_settings
from pushauth.errors import ConfigError
from pushauth.operators import ROLES, Operators
from pushauth.runtime import open_runtime


def register(admin_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accounts = admin_sub.add_parser("accounts", help="console accounts: a pushauth user and a role")
    asub = accounts.add_subparsers(dest="accounts_command", required=True)
    asub.add_parser("list", help="list console accounts").set_defaults(func=run, action="list")
    put = asub.add_parser("set", help="add a console account or change its role")
    put.add_argument("user", metavar="USER",
                     help="the person's pushauth user name (they sign in with its phone)")
    put.add_argument("role", metavar="ROLE", choices=ROLES, help=" | ".join(ROLES))
    put.set_defaults(func=run, action="set")
    remove = asub.add_parser("remove", help="remove a console account (its sessions end at once)")
    remove.add_argument("user", metavar="USER")
    remove.set_defaults(func=run, action="remove")


async def _run(args: argparse.Namespace) -> list[str]:
    settings = load_settings(args.config)
    if settings.embedded:
        raise ConfigError("no store.redis_url: the embedded store lives inside the server process; use the "
                          "admin API (PUT /v1/console-accounts/USER) with an owner token")
    async with open_runtime(settings) as runtime:
        operators = Operators(runtime.redis, runtime.keyspace, runtime.audit)
        if args.action == "set":
            done = await operators.set(canonical(args.user), args.role, by="cli")
            return [f"{done['user']}: {done['role']}"]
        if args.action == "remove":
            await operators.remove(canonical(args.user), by="cli")
            return [f"{canonical(args.user)}: removed"]
        return [f"{a['user']}  {a['role']}  (set by {a['set_by']} at {a['set_at']})"
                for a in await operators.list()] or ["no console accounts"]


def run(args: argparse.Namespace) -> int:
    for line in asyncio.run(_run(args)):
        print(line)
    return 0
