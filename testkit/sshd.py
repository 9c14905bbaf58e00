"""A real OpenSSH server on a loopback port whose keyboard-interactive login goes through PAM and
pam_radius_auth to a RADIUS server (issue 17), a throw-away Unix user to log in as, and `ssh` driven by
expect.

    with PamRadiusService(radius_port, SECRET, tmp_path) as pam, LocalUser() as user, \\
            Sshd(tmp_path / "sshd", pam.name, allow_users=[user.name]) as sshd:
        attempt = await ssh_login(sshd.port, user.name, ["password", ""])
        attempt.succeeded, attempt.prompts

sshd names its PAM service after the program it runs as (OpenSSH's SSHD_PAM_SERVICE is __progname, which
Debian's build keeps; checked on Debian 12's 9.2p1: pam_radius_auth sends the service as NAS-Identifier).
So Sshd runs /usr/sbin/sshd through a symlink named like the test's PAM service: each test has its own PAM
stack, and /etc/pam.d/sshd is never touched. It is a Child (testkit/processes.py): killed by the kernel if
the test process dies, its log (sshd -e) in the test's directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.processes import Child
from testkit.radius_clients import LoginAttempt, converse, find_program, missing_radius_tools, unique_name

__all__ = ["LOGIN_MARKER", "LocalUser", "Sshd", "SshdError", "ssh_login"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
# What the login runs; seeing it printed is seeing a shell session on the server.
LOGIN_MARKER = "pushauth-login-ok"
# sshd's privilege separation directory (Debian's ssh.service makes it; no service runs here).
PRIVSEP_DIR = Path("/run/sshd")
_privsep_users = 0
_privsep_created = False


class SshdError(RuntimeError):
    """sshd could not be started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")


class LocalUser:
    """A Unix user of a test's own, for sshd to log in as, named so that no one else has it (pa-u-<8 hex
    digits>, checked free): no password (sshd asks PAM, which asks RADIUS), home /, shell /bin/sh. Deleted
    on exit with its group."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique_name("pa-u")
        self.created = False

    def create(self) -> Self:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(self.name)
            raise FileExistsError(f"user {self.name} exists: not a test's to delete afterwards")
        useradd = find_program("useradd")
        if useradd is None:
            raise FileNotFoundError(missing_radius_tools("useradd"))
        _run([useradd, "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", "--user-group",
              "--comment", "pushauth test user (testkit/sshd.py)", self.name])
        self.created = True
        return self

    def delete(self) -> None:
        if not self.created:
            return
        userdel = find_program("userdel") or "userdel"
        # --force: even with a process of that user still running (a login a failed test left behind).
        _run([userdel, "--force", self.name])
        self.created = False

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"<LocalUser {self.name}>"


class Sshd:
    """`sshd -D -e` on 127.0.0.1:`port` (a free one by default) with a config, a host key and a PAM
    service of its own: keyboard-interactive only (no password, no public key), through PAM service
    `pam_service` (a PamRadiusService's name). `allow_users` limits who may log in at all."""

    def __init__(self, workdir: Path, pam_service: str, *, port: int | None = None,
                 allow_users: Sequence[str] = (), log_level: str = "VERBOSE") -> None:
        self.workdir = Path(workdir).resolve()
        self.pam_service = pam_service
        self.port = port or _free_port()
        self.allow_users = list(allow_users)
        self.log_level = log_level
        self.child: Child | None = None
        self.log = self.workdir / "sshd.log"
        self.config = self.workdir / "sshd_config"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        # The program name is the PAM service name; sshd re-executes itself by this (absolute) path.
        self.program = self.workdir / pam_service

    def config_text(self) -> str:
        lines = [
            f"ListenAddress {HOST}:{self.port}",
            f"HostKey {self.host_key}",
            "PidFile none",
            "UsePAM yes",
            "KbdInteractiveAuthentication yes",
            "PasswordAuthentication no",
            "PubkeyAuthentication no",
            "AuthenticationMethods keyboard-interactive",
            "AuthorizedKeysFile none",
            "PermitRootLogin no",
            "PermitEmptyPasswords no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PermitTunnel no",
            "MaxAuthTries 3",
            f"LogLevel {self.log_level}",
        ]
        if self.allow_users:
            lines.append("AllowUsers " + " ".join(self.allow_users))
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        if self.child is not None and self.child.alive():
            raise SshdError(f"sshd is already running on port {self.port}")
        binary = find_program("sshd")
        keygen = find_program("ssh-keygen")
        if binary is None or keygen is None:
            raise FileNotFoundError(missing_radius_tools("sshd", "ssh-keygen"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pushauth test sshd", "-f",
                  str(self.host_key)])
        self.config.write_text(self.config_text())
        if self.program.is_symlink() or self.program.exists():
            self.program.unlink()
        self.program.symlink_to(binary)
        _acquire_privsep_dir()
        try:
            _run([str(self.program), "-t", "-f", str(self.config)])  # a config error, said plainly
            self.child = Child([str(self.program), "-D", "-e", "-f", str(self.config)], self.log,
                               name=f"sshd:{self.port}")
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self.child is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.child.alive():
                raise SshdError(f"sshd exited ({self.child.returncode}) on start:\n{self.child.log_tail()}")
            # sshd says it once its socket listens: connecting to find out would be logged as a login.
            if f"Server listening on {HOST} port {self.port}" in self.child.log_text():
                return
            if time.monotonic() > deadline:
                raise SshdError(f"sshd did not listen on {HOST}:{self.port} within {START_TIMEOUT_S:.0f} s:\n"
                                f"{self.child.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it lingers). A login's own sshd processes end with their connection."""
        child, self.child = self.child, None
        try:
            if child is not None:
                child.stop()
        finally:
            if child is not None or self.program.is_symlink():
                self.program.unlink(missing_ok=True)
                _release_privsep_dir()

    def log_text(self) -> str:
        return self.child.log_text() if self.child is not None else _read(self.log)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Sshd {HOST}:{self.port} pam={self.pam_service} {self.child!r}>"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _acquire_privsep_dir() -> None:
    """sshd refuses to start without /run/sshd; made when missing, removed when the last Sshd that needed
    it stops."""
    global _privsep_users, _privsep_created
    if _privsep_users == 0 and not PRIVSEP_DIR.exists():
        PRIVSEP_DIR.mkdir(mode=0o755)
        _privsep_created = True
    _privsep_users += 1


def _release_privsep_dir() -> None:
    global _privsep_users, _privsep_created
    _privsep_users = max(0, _privsep_users - 1)
    if _privsep_users == 0 and _privsep_created:
        with contextlib.suppress(OSError):  # not empty: something else uses it now
            PRIVSEP_DIR.rmdir()
        _privsep_created = False


async def ssh_login(port: int, user: str, answers: Sequence[str], *, command: str = f"echo {LOGIN_MARKER}",
                    timeout_s: float = 60.0) -> LoginAttempt:
    """`ssh -p port user@127.0.0.1 command` by keyboard-interactive only, each prompt answered in turn from
    `answers`. Succeeded: logged in and the command ran (its output seen, exit 0). No config, no known
    hosts, no agent, no key: nothing of this machine's ssh set-up takes part."""
    binary = find_program("ssh")
    if binary is None:
        raise FileNotFoundError(missing_radius_tools("ssh"))
    argv = [binary, "-F", "/dev/null", "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",  # no "Permanently added ... to the list of known hosts"
            "-o", "PreferredAuthentications=keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no",
            "-o", "GSSAPIAuthentication=no", "-o", "IdentityAgent=none", "-o", "BatchMode=no",
            # Each keyboard-interactive round (the password, then a challenge) counts as a prompt here.
            "-o", f"NumberOfPasswordPrompts={max(1, len(answers))}",
            "-o", f"ConnectTimeout={max(1, round(timeout_s))}",
            "-o", "ServerAliveInterval=0", "-T",
            f"{user}@{HOST}", command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    conversation = await converse(argv, answers, timeout_s=timeout_s, env=env)
    ok = conversation.returncode == 0 and (command != f"echo {LOGIN_MARKER}"
                                           or LOGIN_MARKER in conversation.transcript)
    return LoginAttempt(ok, conversation)
