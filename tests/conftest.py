"""Shared pytest fixtures, and the `integration` marker that `make test-fast` leaves out.

Sections: the marker; Redis (a real redis-server per test session); pushauth servers.
"""

from __future__ import annotations

import os
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

# tests/ is not a package; pytest's default --import-mode=prepend puts it on sys.path.
from support import Clock, LoginFlow, RunningServer, free_port, make_settings, start_server

import pushauth.clock
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyRing
from pushauth.phone import Phone
from testkit.redis_cluster import RedisCluster
from testkit.redis_server import RedisServer

# ---------------------------------------------------------------------------
# The `integration` marker (pyproject.toml): a test that needs a real redis-server, a pushauth server, a
# browser or child processes. `make test-fast` runs `pytest -m "not integration"`; `make test` runs all.
#
# Set here, never by hand: a test is integration when it uses one of INTEGRATION_FIXTURES (directly or
# through another fixture), or when its module holds one of the process helpers (INTEGRATION_HELPERS:
# the module starts them itself), or when it is listed in INTEGRATION_TESTS (child processes started
# with nothing above to show for it) or in SLOW_TESTS (no process at all, but seconds of examples).
# ---------------------------------------------------------------------------

INTEGRATION_FIXTURES = frozenset({"redis_server", "redis_url", "private_redis", "cluster", "server"})
# (module, name): compared by name, so that this file need not import playwright.
INTEGRATION_HELPERS = frozenset({
    ("testkit.redis_server", "RedisServer"), ("testkit.redis_cluster", "RedisCluster"),
    ("testkit.redis_sentinel", "RedisSentinelSet"), ("testkit.processes", "Child"),
    ("testkit.fakes.sandbox", "PrivateHosts"), ("browser", "chromium"),
    # real RADIUS clients and daemons: radclient, pamtester (through expect), sshd
    ("testkit.radius_clients", "radclient"), ("testkit.radius_clients", "pamtester"),
    ("testkit.sshd", "Sshd"), ("testkit.slapd", "Slapd"),
    # openid-client, a real OpenID Connect relying party: one node process a step
    ("testkit.openid_client", "rp_start"), ("testkit.openid_client", "rp_finish"),
    ("testkit.openid_client", "rp_ciba"),
    # a real OpenID Connect relying party: Apache 2 with mod_auth_openidc
    ("testkit.apache", "ApacheRP"),
    # the fake Microsoft Entra ID of the EAM harness: an aiohttp server on loopback
    ("testkit.fakes.entra", "FakeEntra"),
    # the fake Keycloak realm of the CIBA authentication channel: an aiohttp server on loopback
    ("testkit.fakes.keycloak", "FakeKeycloak"),
})
INTEGRATION_TESTS = frozenset({
    "test_make.py::test_ci_runs_make_test_and_fails_when_a_test_fails",  # .ci/run: make test in a child
    "test_cli.py::test_demo_smoke",  # `pushauth demo` in a child process
})
# Property tests whose thousands of examples take over 2 s each (pytest --durations, 2 cores): 24 s of the
# developers' loop, which must stay under 30 s. `make test` runs them with their example counts unchanged.
SLOW_TESTS = frozenset({
    "test_jws_fuzz.py::test_structured_hostile_tokens",  # ~10 s
    "test_jws_fuzz.py::test_arbitrary_input_is_rejected_cleanly",
    "test_jws_fuzz.py::test_claim_binding_matches_the_reference",
    "test_jws_fuzz.py::test_mutations_of_a_valid_token",
    "test_user_names.py::test_canonical_is_idempotent_where_normalising_makes_white_space",
    "test_duplicate_keys.py::test_refused_exactly_when_an_object_has_a_key_twice",
})


def _starts_processes(module: object) -> bool:
    names = {(getattr(value, "__module__", None), getattr(value, "__qualname__", None))
             for value in vars(module).values()}
    # A helper's module imported whole (`from testkit import slapd`, then `slapd.Slapd(...)`) counts too.
    helper_modules = {helper_module for helper_module, _ in INTEGRATION_HELPERS}
    imported = {value.__name__ for value in vars(module).values() if isinstance(value, types.ModuleType)}
    return not names.isdisjoint(INTEGRATION_HELPERS) or not imported.isdisjoint(helper_modules)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark = pytest.mark.integration
    for item in items:
        module = getattr(item, "module", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        named = f"{item.path.name}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        if (fixtures & INTEGRATION_FIXTURES or named in INTEGRATION_TESTS or named in SLOW_TESTS
                or (module is not None and _starts_processes(module))):
            item.add_marker(mark)


# `make test` sets PUSHAUTH_TESTS_NO_SKIP: there, a skipped test is a failure. The suite's peers (the push
# sandbox needs root, slapd, Apache, node, chromium) skip where they cannot run, which is right for a
# developer's subset and wrong for CI, where a silently skipped file would let its feature rot unseen.
NO_SKIP_ENV = "PUSHAUTH_TESTS_NO_SKIP"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get(NO_SKIP_ENV):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = list(getattr(reporter, "stats", {}).get("skipped", ()))
    if skipped and session.exitstatus == pytest.ExitCode.OK:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            print(f"\nSKIPPED, which {NO_SKIP_ENV} makes a failure: {report.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------------------
# Redis
#
# redis_server   (session)  one real redis-server shared by the whole run (no persistence).
# redis_url      (function) URL of that server, emptied with FLUSHALL before each test.
# private_redis  (function) a redis-server of the test's own, appendonly=True, for tests that
#                           stop / kill / restart Redis; stopped afterwards.
# cluster        (module)   a real Redis Cluster, 3 masters and 3 replicas (testkit/redis_cluster.py);
#                           a module of its own each, as the failover tests kill and restart nodes.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:  # a test stopped the shared server by mistake: bring it back
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "private-redis", appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


# ---------------------------------------------------------------------------
# pushauth servers
#
# keyring   (session)  one ephemeral server signing key shared by every server in the run
# server    (function) a real pushauth server on 127.0.0.1 backed by the shared real Redis
# http      (function) an aiohttp client session
# login     (function) the login flow (application "webmail") talking to `server`
# phone     (function) a simulated phone enrolled for user "alice@nhs.net" on `server`
# ---------------------------------------------------------------------------

USER = "alice@nhs.net"


@pytest.fixture(scope="session")
def keyring() -> KeyRingHolder:
    return KeyRingHolder(KeyRing.ephemeral())


@pytest.fixture
async def server(redis_url: str, keyring: KeyRingHolder) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(redis_url, free_port()), keyring)
    yield running
    await running.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def login(http: aiohttp.ClientSession, server: RunningServer) -> LoginFlow:
    return LoginFlow(http, server.url)


@pytest.fixture
async def phone(login: LoginFlow, http: aiohttp.ClientSession) -> Phone:
    return await Phone.enroll(await login.enroll_uri(USER), session=http)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Time under the test's control: `clock.advance(seconds)`."""
    c = Clock()
    monkeypatch.setattr(pushauth.clock, "now", c.now)
    return c
