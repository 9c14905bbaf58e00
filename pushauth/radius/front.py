"""Wiring the RADIUS front from a Runtime: the same services as `serve` (pushauth/runtime/root.py), the
clients' secrets, the password checks and the listener. `radius_job` (radius/process.py) enters it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pushauth.errors import ConfigError
from pushauth.radius.primary import open_checks
from pushauth.radius.retransmits import Retransmits
from pushauth.radius.server import ClientTable, RadiusServer
from pushauth.radius.settings import read_secret
from pushauth.radius.signin import SignIns
from pushauth.radius.states import ChallengeStates

if TYPE_CHECKING:  # the front builds itself from the runtime (radius_job), never the other way round
    from pushauth.runtime.root import Runtime


def client_table(runtime: Runtime) -> ClientTable:
    """The clients with their secrets, read once (a missing or short secret file stops the start)."""
    settings = runtime.settings.radius
    try:
        return ClientTable([(c, read_secret(c.secret_file, f"radius client {c.name!r} secret_file"))
                            for c in settings.clients])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@contextlib.asynccontextmanager
async def radius_server(runtime: Runtime) -> AsyncIterator[RadiusServer]:
    settings = runtime.settings
    problems = settings.radius.problems({a.id for a in settings.applications})
    if problems:
        raise ConfigError("; ".join(problems))
    table = client_table(runtime)
    checks = open_checks(settings.radius)
    services = runtime.services
    try:
        signins = SignIns(settings, services.challenges, services.accounts, services.limiter, services.audit,
                          ChallengeStates(runtime.redis, runtime.keyspace), checks, codes=services.codes)
        retransmits = Retransmits(runtime.redis, runtime.keyspace, table.secrets(),
                                  settings.radius.reply_cache_s)
        yield RadiusServer(settings.radius, table, signins, retransmits)
    finally:
        await services.challenges.close()
        for check in checks.values():
            await check.aclose()
