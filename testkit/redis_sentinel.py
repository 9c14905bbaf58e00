"""A real Redis Sentinel set-up for tests: a primary and one or more replicas (testkit/redis_server.py)
watched by three `redis-server --sentinel` processes (quorum 2), all on 127.0.0.1, started and stopped by
the test.

Failover is tuned to be quick, down after 2 s. (With 1 s the sentinels took the new primary, briefly slow
on this busy 2-core machine, for dead and failed back to the old one while it was still resyncing: 400
acknowledged approvals were lost without replica_acks, none with it.) Sentinel promotes the replica and,
when the old primary comes back, makes it a replica of the new one."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

import redis

from testkit.processes import pdeathsig_preexec
from testkit.redis_server import HOST, RedisServer, _free_port

SERVICE = "pushauth"


class RedisSentinelSet:
    def __init__(self, tmpdir: Path, *, sentinels: int = 3, replicas: int = 1) -> None:
        self.tmpdir = Path(tmpdir)
        self.first = RedisServer(self.tmpdir / "a", appendonly=True)
        self.replica_count = replicas
        self.others: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self.sentinel_count = sentinels
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.first, *self.others]

    @property
    def sentinels(self) -> list[str]:
        return [f"{HOST}:{p}" for p in self.sentinel_ports]

    def url(self) -> str:
        # The data connections' database; its host is not used (the sentinels say where the primary is).
        return f"redis://{SERVICE}/0"

    def start(self) -> Self:
        self.first.start()
        self.others = [RedisServer(self.tmpdir / f"r{i}", appendonly=True, replica_of=self.first).start()
                       for i in range(self.replica_count)]
        self.wait_synced()
        binary = shutil.which("redis-server") or "redis-server"
        for i in range(self.sentinel_count):
            port = _free_port()
            conf = self.tmpdir / f"sentinel-{i}.conf"  # Sentinel rewrites its own config file
            conf.write_text(f"port {port}\nbind {HOST}\nprotected-mode no\ndir {self.tmpdir}\n"
                            f"logfile {self.tmpdir / f'sentinel-{i}.log'}\n"
                            f"sentinel monitor {SERVICE} {HOST} {self.first.port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n")
            self._procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, preexec_fn=pdeathsig_preexec()))
            self.sentinel_ports.append(port)
        deadline = time.monotonic() + 15
        while not all(self._sentinel_sees_replica(p) for p in self.sentinel_ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not discover the primary and its replicas")
            time.sleep(0.1)
        return self

    def _sentinel_sees_replica(self, port: int) -> bool:
        try:
            with redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=1) as s:
                return int(s.sentinel_master(SERVICE).get("num-slaves", 0)) >= self.replica_count
        except (redis.RedisError, OSError):
            return False

    def primary(self) -> RedisServer:
        """The server the sentinels currently name as primary."""
        with redis.Redis(host=HOST, port=self.sentinel_ports[0], decode_responses=True,
                         socket_timeout=1) as s:
            _, port = s.sentinel_get_master_addr_by_name(SERVICE)
        return next(srv for srv in self.servers if srv.port == int(port))


    def wait_synced(self, timeout: float = 20) -> None:
        """Every running server but one is a replica that has finished syncing from the primary (a
        restarted old primary counts once Sentinel has made it a replica)."""
        deadline = time.monotonic() + timeout
        while True:
            roles = []
            for srv in self.servers:
                if srv.running:
                    with redis.Redis(port=srv.port, decode_responses=True, socket_timeout=1) as r:
                        roles.append(r.info("replication"))
            replicas = [i for i in roles if i.get("role") == "slave"]
            if len(replicas) == len(roles) - 1 and all(
                    i.get("master_link_status") == "up" and not i.get("master_sync_in_progress")
                    for i in replicas):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for srv in self.servers:
            srv.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
