"""A real local Redis Cluster for tests: 3 masters and 3 replicas, each a `redis-server
--cluster-enabled yes` child on 127.0.0.1, joined with `redis-cli --cluster create`. Started and stopped
by the tests themselves, like testkit/redis_server.py."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from testkit.processes import pdeathsig_preexec

HOST = "127.0.0.1"


def _free_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free too; Redis wants the port <= 55535."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 45000)
        if port in ports:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind((HOST, p))
        except OSError:
            continue
        ports.append(port)
    return ports


def _cli(port: int, *args: str, timeout: float = 10) -> str:
    out = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *args], capture_output=True, text=True,
                         timeout=timeout)
    return out.stdout.strip()


class RedisCluster:
    def __init__(self, tmpdir: Path, *, masters: int = 3, replicas_per_master: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.tmpdir = Path(tmpdir)
        self.n = masters * (1 + replicas_per_master)
        self.replicas = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def _start_node(self, port: int) -> None:
        d = self.tmpdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "redis-server"
        self.procs[port] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", HOST, "--dir", str(d), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             "--appendonly", "yes", "--save", "", "--protected-mode", "no",
             "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pdeathsig_preexec())  # killed by the kernel if the test process dies
        deadline = time.monotonic() + 10
        while _cli(port, "PING") != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.05)

    def start(self) -> Self:
        self.ports = _free_ports(self.n)
        for port in self.ports:
            self._start_node(port)
        nodes = [f"{HOST}:{p}" for p in self.ports]
        subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()
        self.wait_replicas_synced()
        return self

    def wait_replicas_synced(self, timeout: float = 30) -> None:
        """Every replica has finished its initial sync: a replica that has not refuses to fail over."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [_cli(p, "INFO", "replication") for p in self.ports if self.running(p)]
            replicas = [i for i in infos if "role:slave" in i]
            if len(replicas) >= self.n // (1 + self.replicas) * self.replicas and all(
                    "master_link_status:up" in i and "master_sync_in_progress:0" in i for i in replicas):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not finish their initial sync")
            time.sleep(0.1)

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in self.ports if self.running(p)]
            if alive and all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in alive):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.1)

    def running(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        slot = int(_cli(self.alive_port(), "CLUSTER", "KEYSLOT", key))
        for line in _cli(self.alive_port(), "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no master for slot {slot}")

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the live replicas of the master on `master_port`."""
        lines = [line.split() for line in _cli(self.alive_port(), "CLUSTER", "NODES").splitlines()]
        ids = [p[0] for p in lines if p[1].split("@")[0].endswith(f":{master_port}")]
        return [int(p[1].split("@")[0].rsplit(":", 1)[1]) for p in lines
                if ids and p[3] == ids[0] and "fail" not in p[2]]

    def pid(self, port: int) -> int:
        return self.procs[port].pid

    def alive_port(self) -> int:
        return next(p for p in self.ports if self.running(p))

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def restart_node(self, port: int) -> None:
        self._start_node(port)
        self.wait_ok()
        self.wait_replicas_synced()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
