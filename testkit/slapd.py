"""Run a real, throw-away OpenLDAP ``slapd`` for tests: the directory behind `primary = "ldap"`.

Usage::

    ca = TestCA.create(tmp_path / "ca")
    with Slapd(tmp_path / "slapd", ca, {"alice": "alice-password"}) as directory:
        directory.ldaps_url           # ldaps://127.0.0.1:<port>   (certificate from `ca`)
        directory.ldap_url            # ldap://127.0.0.1:<port>    (StartTLS offered)
        directory.user_dn             # uid={user},ou=people,dc=example,dc=org
        directory.accepted()          # connections slapd has accepted so far (from its log)

One slapd.conf in its own folder (mdb backend, suffix dc=example,dc=org, the users under ou=people with
{SSHA} passwords, loaded with slapadd before the start), listening on 127.0.0.1 only, on two free ports:
plain LDAP (StartTLS on request) and LDAPS. `slapd -d stats` stays in the foreground and logs every
connection, bind and result to its log file, which the tests read. Started as a `Child`: killed by the
kernel if the test process dies. Runs as root without -u/-g (Debian's package; modules from /usr/lib/ldap).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.fakes.sandbox import TestCA
from testkit.processes import Child

__all__ = ["SLAPADD", "SLAPD", "SUFFIX", "Slapd", "SlapdError", "available"]

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
HOST = "127.0.0.1"
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
START_TIMEOUT_S = 15.0
_PORT_RETRIES = 3


class SlapdError(RuntimeError):
    """slapd could not be set up or started."""


def available() -> str | None:
    """None if a slapd can run here, else why not (for pytest.skip)."""
    for path in (SLAPD, SLAPADD, SCHEMA / "inetorgperson.schema", MODULES):
        if not path.exists():
            return f"{path} is missing: install Debian's slapd package (OpenLDAP server)"
    return None


def ssha(password: str) -> str:
    """An OpenLDAP {SSHA} userPassword: base64(SHA1(password + salt) + salt), as `slappasswd -h {SSHA}`."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the format slapd reads
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ldif_value(value: str) -> str:
    """An LDIF attribute value: base64 (`attr:: ...`) when it is not safe as plain text (RFC 2849)."""
    if value and value.isascii() and value.isprintable() and value[0] not in " :<" and value[-1] != " ":
        return f": {value}"
    return ":: " + base64.b64encode(value.encode()).decode()


def _escape(value: str) -> str:
    # The RFC 4514 specials, for the test users' own DNs (one of them has a comma in its uid).
    return re.sub(r'([",+;<>\\=])', r"\\\1", value)


class Slapd:
    """A slapd child process on 127.0.0.1 with its config and data in `folder`. `users` maps uid to
    password, under ou=people; `extra_ldif` is appended to the data (other branches, for injection
    tests). The certificate is for `hostnames` and 127.0.0.1, signed by `ca`."""

    def __init__(self, folder: Path, ca: TestCA, users: dict[str, str], *, extra_ldif: str = "",
                 hostnames: tuple[str, ...] = ("ldap.example.org",)) -> None:
        self.folder = folder.resolve()
        self.ca = ca
        self.users = dict(users)
        self.extra_ldif = extra_ldif
        self.hostnames = hostnames
        self.child: Child | None = None
        self.port = 0
        self.ldaps_port = 0

    # -- addresses ----------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{HOST}:{self.ldaps_port}"

    @property
    def user_dn(self) -> str:
        return f"uid={{user}},{PEOPLE}"

    @property
    def log(self) -> Path:
        return self.folder / "slapd.log"

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        reason = available()
        if reason:
            raise SlapdError(reason)
        if self.running:
            raise SlapdError("slapd is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._configure()
        for attempt in range(_PORT_RETRIES):
            self.port, self.ldaps_port = _free_port(), _free_port()
            if self._launch():
                return self
            if attempt + 1 == _PORT_RETRIES:
                break
        raise SlapdError(f"slapd did not start on {HOST}:{self.port}/{self.ldaps_port}.\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (slapd closes its database cleanly) and wait; SIGKILL if it hangs."""
        if self.child is not None:
            self.child.stop(10)
            self.child = None

    def _configure(self) -> None:
        cert, key = self.ca.server_files(*self.hostnames)
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        conf = self.folder / "slapd.conf"
        conf.write_text("\n".join([
            f"include {SCHEMA}/core.schema",
            f"include {SCHEMA}/cosine.schema",
            f"include {SCHEMA}/inetorgperson.schema",
            f"modulepath {MODULES}",
            "moduleload back_mdb",
            f"pidfile {self.folder}/slapd.pid",
            f"argsfile {self.folder}/slapd.args",
            f"TLSCACertificateFile {self.ca.ca_file}",
            f"TLSCertificateFile {cert}",
            f"TLSCertificateKeyFile {key}",
            # No anonymous reads: the directory only answers binds (and a bound user reads).
            "disallow bind_anon",
            "database mdb",
            f'suffix "{SUFFIX}"',
            f'rootdn "cn=admin,{SUFFIX}"',
            f"directory {data}",
            "maxsize 16777216",
            "access to attrs=userPassword by anonymous auth by self read by * none",
            "access to * by users read by * none",
            "",
        ]))
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        ]
        for uid, password in self.users.items():
            entries.append(f"dn{_ldif_value(f'uid={_escape(uid)},{PEOPLE}')}\nobjectClass: inetOrgPerson\n"
                           f"uid{_ldif_value(uid)}\ncn{_ldif_value(uid)}\nsn{_ldif_value(uid)}\n"
                           f"userPassword{_ldif_value(ssha(password))}\n")
        if self.extra_ldif.strip():
            entries.append(self.extra_ldif.strip() + "\n")
        ldif = self.folder / "data.ldif"
        ldif.write_text("\n".join(entries))
        for stale in data.iterdir():  # a restart of this object loads the same data again
            stale.unlink()
        done = subprocess.run([str(SLAPADD), "-f", str(conf), "-l", str(ldif)], capture_output=True,
                              text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise SlapdError(f"slapadd failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _launch(self) -> bool:
        urls = f"ldap://{HOST}:{self.port}/ ldaps://{HOST}:{self.ldaps_port}/"
        self.child = Child([str(SLAPD), "-d", "stats", "-h", urls, "-f", str(self.folder / "slapd.conf")],
                           self.log, cwd=self.folder, name="slapd")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.child.alive():
                self.child = None
                return False  # most likely a port taken in the meantime: the caller tries others
            if all(self._listening(port) for port in (self.port, self.ldaps_port)):
                return True
            time.sleep(0.05)
        self.child.kill9()
        self.child = None
        raise SlapdError(f"slapd did not listen within {START_TIMEOUT_S:.0f} s.\n{self.log_tail()}")

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- what the directory saw ----------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def accepted(self) -> int:
        """Connections slapd has accepted since it started (the readiness probes included)."""
        return len(re.findall(r" ACCEPT from ", self.log_text()))

    def binds(self) -> list[str]:
        """The DNs of the BIND operations slapd has received, in order."""
        return re.findall(r' BIND dn="([^"]*)" method=', self.log_text())

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Slapd {self.ldap_url} {self.ldaps_url} {'running' if self.running else 'stopped'}>"
