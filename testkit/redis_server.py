"""Run a real, throw-away ``redis-server`` process for tests.

Usage::

    with RedisServer(tmp_path, appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        ...
        server.kill()       # simulate a crash
        server.restart()    # same port and dir: AOF data is reloaded

The helper only talks to Redis over a raw socket (``PING``), so it has no
dependency on redis-py itself.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.processes import pdeathsig_preexec

__all__ = ["RedisNotInstalledError", "RedisServer", "RedisServerError"]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# How many times start() retries with a new port when the port it picked was
# taken by someone else in the meantime (only when the port was auto-picked
# and this is the first start; restarts always keep their port).
_PORT_RETRIES = 3


class RedisServerError(RuntimeError):
    """redis-server could not be started (or misbehaved)."""


class RedisNotInstalledError(RedisServerError):
    """The redis-server binary is not on PATH."""


class _PortInUseError(RedisServerError):
    """redis-server exited because its port was taken."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _find_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotInstalledError(
            "redis-server was not found on PATH. The tests run a real Redis. "
            "Run `make test` (which installs it via scripts/ensure-redis), or install it "
            "yourself: `sudo apt-get install redis-server`."
        )
    return binary


# Last-resort cleanup: every server that is still running at interpreter exit
# is stopped, so a crashed or interrupted test run leaves no orphans.
_LIVE: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server.stop()


class RedisServer:
    """A ``redis-server`` child process bound to 127.0.0.1 with its data in ``tmpdir``."""

    def __init__(self, tmpdir: Path, *, appendonly: bool = False, port: int | None = None,
                 replica_of: RedisServer | None = None) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        # A replica of that (running) server: what a primary with a replica, the Sentinel set-up, looks like.
        self.replica_of = replica_of
        self.tmpdir = Path(tmpdir).resolve()
        self.appendonly = appendonly
        self._port = port
        self._port_fixed = port is not None
        self._started_once = False

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The TCP port. Chosen on the first start() and kept across restarts."""
        if self._port is None:
            raise RedisServerError("RedisServer has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.tmpdir / "redis.log"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Launch redis-server and wait until it answers PING. Returns self."""
        if self.running:
            raise RedisServerError(f"redis-server is already running on port {self.port}")
        binary = _find_binary()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        retries = _PORT_RETRIES if not (self._port_fixed or self._started_once) else 1
        for attempt in range(retries):
            if self._port is None or (attempt > 0):
                self._port = _free_port()
            try:
                self._launch(binary)
            except _PortInUseError:
                if attempt + 1 >= retries:
                    raise
                continue  # lost a race for the auto-picked port: pick another one
            self._started_once = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Graceful shutdown: SIGTERM and wait (SIGKILL if it does not exit in time)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no shutdown work (no final AOF rewrite/RDB save)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or, with ``kill=True``, SIGKILL) and start again on the SAME port and dir.

        With ``appendonly=True`` the data set is reloaded from the AOF.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def ping(self, timeout: float = 1.0) -> bool:
        """True if a Redis on our port answers ``+PONG`` (raw socket) right now."""
        return self._probe(b"PING\r\n", timeout).startswith(b"+PONG\r\n")

    def _answered_by_us(self, timeout: float) -> bool:
        """PONG, and the answer comes from our process (not another server that holds the port)."""
        if self._proc is None:
            return False
        reply = self._probe(b"PING\r\nINFO server\r\n", timeout)
        return reply.startswith(b"+PONG\r\n") and f"\r\nprocess_id:{self._proc.pid}\r\n".encode() in reply

    def _probe(self, request: bytes, timeout: float) -> bytes:
        """Send raw RESP commands; return what arrives until the peer goes quiet (b"" on error)."""
        if self._port is None:
            return b""
        reply = b""
        try:
            with socket.create_connection((HOST, self._port), timeout=timeout) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)  # Redis answers, then closes: read to EOF
                while chunk := sock.recv(65536):
                    reply += chunk
        except OSError:
            return b""
        return reply

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in (self.log_path, self.tmpdir / "redis.stderr"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) if parts else "(no log output)"

    # -- internals ----------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        cmd = [
            binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.tmpdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.appendonly:
            # fsync every write so that kill() (SIGKILL) never loses an acknowledged
            # write: crash tests must be deterministic.
            cmd += ["--appendfsync", "always"]
        if self.replica_of is not None:
            cmd += ["--replicaof", HOST, str(self.replica_of.port)]
        return cmd

    def _launch(self, binary: str) -> None:
        # Startup errors (bad flags) go to stderr, not to the logfile: keep them.
        # The child has its own copy of the fd, so the parent's can be closed at once.
        with open(self.tmpdir / "redis.stderr", "ab") as output:
            self._proc = subprocess.Popen(
                self._command(binary),
                cwd=self.tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=pdeathsig_preexec(),  # killed by the kernel if the test process dies
            )
        _LIVE.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap()
                tail = self.log_tail()
                error = _PortInUseError if "Address already in use" in tail else RedisServerError
                raise error(
                    f"redis-server exited with code {code} during startup on port {self._port}.\n" + tail
                )
            if self._answered_by_us(timeout=0.5):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server did not answer PING on {HOST}:{self._port} within "
                    f"{START_TIMEOUT:.0f}s.\n" + self.log_tail()
                )
            time.sleep(0.02)

    def _reap(self) -> None:
        self._proc = None
        _LIVE.discard(self)

    # -- context manager / cleanup -----------------------------------------

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort only; tests should call stop() (the fixtures do).
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.kill()
                proc.wait(timeout=5)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state} dir={self.tmpdir}>"
