"""`pushauth radius`: the RADIUS front, a process of its own run like the workers
(pushauth/radius/process.py).

    pushauth radius -c config.toml [--name N] [--metrics-port P] [--drain-s S] [--check]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pushauth.radius.process import RADIUS

    parser = sub.add_parser("radius", help="run the RADIUS front: push approval for VPNs, gateways and SSH",
                            description=RADIUS.description)
    # -c here as well as before the command: `pushauth radius -c config.toml`, as the README writes it.
    parser.add_argument("-c", "--config", dest="radius_config", type=Path, default=None)
    RADIUS.add_arguments(parser, config=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pushauth.radius.process import RADIUS

    args.config = args.radius_config or args.config
    return RADIUS.run_parsed(args)
