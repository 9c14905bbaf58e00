"""`pushauth serve`: the API server, with graceful shutdown on SIGTERM (aiohttp's runner)."""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from pushauth.config import load_settings
from pushauth.errors import ConfigError
from pushauth.logs import configure
from pushauth.readiness import expected_workers, missing_workers, missing_workers_hint
from pushauth.store.connection import STORE_DOWN_ERRORS, describe
from pushauth.web import create_app
from pushauth.web.state import KEYRING, REDIS, SETTINGS

log = structlog.get_logger("pushauth.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="run the API server")
    parser.add_argument("--host", default=None, help="override server.host")
    parser.add_argument("--port", type=int, default=None, help="override server.port")
    parser.set_defaults(func=run)


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything alive after start-up (modules, the app, clients) out of the garbage collector's
    reach: full collections then walk only what requests created, which cut their pauses from ~22 ms to
    ~2 ms in bench/cycle.py --gc-freeze."""
    gc.collect()
    gc.freeze()


def new_event_loop(choice: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """The server's event loop and its name, as `server.event_loop` asks. uvloop asked for by name and not
    installed is a configuration error, not a silent fallback."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("server.event_loop = \"uvloop\" but uvloop is not installed "
                                  "(pip install uvloop, or set \"asyncio\")") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def _announce(listen: str, keys: str, config: Path | None,
              loop_name: str) -> Callable[[web.Application], Awaitable[None]]:
    """An on_startup hook (after the cleanup contexts opened the store and the keys): one line saying what
    this server is, and a warning naming the workers this deployment needs that have not beaten yet, with
    the command that starts each (`config`: the -c the server got, for those commands)."""

    async def announce(app: web.Application) -> None:
        settings = app[SETTINGS]
        log.info("serving", listen=listen, base_url=settings.server.base_url, store=describe(settings.store),
                 keys=keys, current_kid=app[KEYRING].ring.current.kid, event_loop=loop_name)
        if not expected_workers(settings):
            return  # none, or (embedded store) this process runs them
        try:
            missing = await asyncio.wait_for(missing_workers(app[REDIS], settings),
                                             settings.store.socket_timeout_s)
        except STORE_DOWN_ERRORS as exc:
            log.warning("workers_unknown", reason=f"the store is unreachable ({type(exc).__name__})")
            return
        if missing:
            log.warning("workers_missing", **missing_workers_hint(missing, config))

    return announce


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure(settings.logging.level, settings.logging.format)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    loop, loop_name = new_event_loop(settings.server.event_loop)
    asyncio.set_event_loop(loop)  # create_app's objects and run_app share the one loop
    app = create_app(settings)
    listen = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    keys = "ephemeral" if settings.keys.ephemeral else str(Path(settings.keys.path).resolve())
    app.on_startup.append(_announce(listen, keys, args.config, loop_name))
    app.on_startup.append(_freeze_startup_objects)
    # shutdown_timeout: in-flight requests (a login flow long-polling) get this long to finish on SIGTERM.
    web.run_app(app, host=host, port=port, access_log=None, shutdown_timeout=35, print=None, loop=loop)
    return 0
