"""The notification outbox's lifetime in the server (pushauth/oidc/outbox.py): built after the domain
services, its sweeper running while the server runs; on shutdown it stops following and gives its leases
back. Added by the routes that need it (CIBA ping clients, Keycloak's channel), once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from pushauth.config import Settings
from pushauth.oidc.outbox import Outbox
from pushauth.web.state import CHALLENGES, REDIS, RUNTIME

OUTBOX = web.AppKey("oidc_outbox", Outbox)
_ADDED = web.AppKey("oidc_outbox_added", bool)


def setup(app: web.Application, settings: Settings) -> None:
    if _ADDED in app:
        return
    app[_ADDED] = True
    applications = {a.id: a for a in settings.applications}

    async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
        outbox = Outbox(app[REDIS], app[RUNTIME].keyspace, app[CHALLENGES], applications)
        app[OUTBOX] = outbox
        sweeper = asyncio.get_running_loop().create_task(outbox.sweep_forever())
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await outbox.close()

    app.cleanup_ctx.append(outbox_ctx)
