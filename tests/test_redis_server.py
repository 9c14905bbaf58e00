"""The RedisServer test helper and the Redis fixtures built on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from testkit.redis_server import RedisNotInstalledError, RedisServer, RedisServerError


def _client(server: RedisServer) -> redis.Redis:
    # No retries: a dead server must fail the call at once.
    return redis.Redis.from_url(server.url, socket_timeout=2, retry=None)


def test_start_set_get_stop(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.ping()
        with _client(server) as client:
            client.set("k", "v")
            assert client.get("k") == b"v"
    finally:
        server.stop()
    assert not server.running
    assert not server.ping()


def test_restart_with_appendonly_keeps_data_and_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=True) as server:
        port = server.port
        with _client(server) as client:
            client.set("k", "v")
        server.restart()
        assert server.port == port
        with _client(server) as client:
            assert client.get("k") == b"v"


def test_kill_fails_connections_and_restart_recovers(private_redis: RedisServer) -> None:
    port = private_redis.port
    with _client(private_redis) as client:
        client.set("k", "v")
        private_redis.kill()
        assert not private_redis.running
        with pytest.raises(redis.ConnectionError):
            client.get("k")

        private_redis.restart()
        assert private_redis.running
        assert private_redis.port == port
        # appendfsync=always: an acknowledged write survives SIGKILL.
        assert client.get("k") == b"v"


def test_restart_after_kill_flag(private_redis: RedisServer) -> None:
    old_pid = private_redis.pid
    private_redis.restart(kill=True)
    assert private_redis.running
    assert private_redis.pid != old_pid


def test_start_twice_is_an_error(private_redis: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        private_redis.start()


def test_port_clash_is_a_clear_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "a") as first:
        second = RedisServer(tmp_path / "b", port=first.port)
        with pytest.raises(RedisServerError, match="Address already in use"):
            second.start()
        assert not second.running
        assert first.ping()


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(RedisNotInstalledError, match="make test"):
        RedisServer(tmp_path).start()


def test_redis_url_fixture_is_flushed(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next test using redis_url must not see it


def test_redis_url_fixture_is_flushed_again(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
