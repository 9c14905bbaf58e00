"""Real OS processes for tests and benchmarks: `pushauth serve`, the workers, redis-server, py-spy.

Every child gets PR_SET_PDEATHSIG (Linux): if the test process dies, even by SIGKILL, the kernel kills
the child too, so a crashed or interrupted run leaves nothing running. A child's stdout and stderr go to
one log file of its own, which a test reads afterwards (`log_text`).

    child = Child.python(["-m", "pushauth", "-c", str(config), "serve"], tmp_path / "serve.log")
    child = Child.python(["-m", "workers.push", ...], log, hosts=hosts)   # in the push sandbox
    child = Child(argv, log, name="server", cpu=0, death_signal=signal.SIGTERM)   # bench/: pinned
    ...
    assert await child.stop_async() == 0      # SIGTERM; SIGKILL if it does not exit in time
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testkit.fakes.sandbox import PrivateHosts

REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 15.0


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl(), resolved in the parent (nothing may be imported after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: signal.Signals) -> None:  # pragma: no cover - runs in the child process
    """Have the kernel send `sig` to this (forked, not yet exec'd) process when its parent's forking thread
    dies; nothing where prctl() is not there. Call it only from a `preexec_fn`."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def pdeathsig_preexec(death_signal: signal.Signals = signal.SIGKILL,
                      cpu: int | None = None) -> Callable[[], None] | None:
    """A `preexec_fn` that pins the child to `cpu` (when given) and has the kernel send it `death_signal`
    when this process dies, or None when there is nothing to do. PR_SET_PDEATHSIG fires when the *thread*
    that forked dies, so only the main thread uses it. The hook only calls already-resolved functions: no
    imports, no locks after fork."""
    pdeath = _PRCTL is not None and threading.current_thread() is threading.main_thread()
    if cpu is None and not pdeath:
        return None

    def hook() -> None:  # pragma: no cover - runs in the child process
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if pdeath:
            set_parent_death_signal(death_signal)

    return hook


class Child:
    """One child process, started at once, its output in `log`. `cpu` pins it (the benchmarks);
    `death_signal` is what the kernel sends it if this process dies (SIGKILL for tests; the benchmarks use
    SIGTERM, so a server they leave behind still shuts down cleanly)."""

    def __init__(self, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path = REPO, name: str | None = None, cpu: int | None = None,
                 death_signal: signal.Signals = signal.SIGKILL) -> None:
        self.argv = argv
        self.log = log
        self.name = name or Path(argv[0]).name
        with open(log, "ab") as out:  # the child has its own copy of the fd
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, preexec_fn=pdeathsig_preexec(death_signal, cpu))

    @classmethod
    def python(cls, args: list[str], log: Path, *, hosts: PrivateHosts | None = None) -> Child:
        """`python <args>` from the repository; inside the push sandbox when `hosts` is given (its own
        /etc/hosts and the test CA: testkit/fakes/sandbox.py)."""
        env = hosts.env() if hosts is not None else dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, *args]
        # `unshare` and `sh -c 'exec ...'` both exec, so the pid is the Python process itself.
        return cls(hosts.command(argv) if hosts is not None else argv, log, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if it is still running after `timeout_s`."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 15) -> str:
        """The last `lines` of the log, for an error message."""
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill9(self) -> None:
        """A crash: SIGKILL, no shutdown work."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (blocking); SIGKILL if it does not exit within `timeout_s`."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            return self.proc.returncode

    async def stop_async(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """`stop` without blocking the event loop (the fakes and receivers the child talks to while it
        shuts down run on it)."""
        self.signal(signal.SIGTERM)
        return await self.exited(timeout_s)

    async def exited(self, timeout_s: float) -> int:
        """The exit code once the child has exited; SIGKILL after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                self.kill9()
                return self.proc.returncode
            await asyncio.sleep(0.05)
        return code

    def __repr__(self) -> str:
        return f"<Child pid={self.proc.pid} {' '.join(self.argv[-4:])!r} rc={self.proc.poll()}>"
