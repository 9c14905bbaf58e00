"""`pushauth radius`: the RADIUS front (pushauth/radius/process.py takes its own options)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("radius", add_help=False,
                            help="run the RADIUS front: push approval for VPNs, gateways and SSH (--help)")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pushauth.radius.process import RADIUS  # pyrad and ldap3 only for this command

    argv = list(args.args)
    if args.config is not None and not {"-c", "--config"} & set(argv):
        argv = ["-c", str(args.config), *argv]
    return RADIUS.main(argv)
