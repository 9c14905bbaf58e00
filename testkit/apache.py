"""A real, third-party OpenID Connect relying party for tests (issue 18): Apache 2 with mod_auth_openidc
(Debian's apache2 and libapache2-mod-auth-openidc, installed by scripts/ensure-apache-oidc), protecting
/private/ on a loopback port.

    with ApacheRP(tmp_path / "apache", issuer, "web-app", "its-secret") as rp:
        rp.url                # http://127.0.0.1:<port>/private/ : a browser opened here is sent to `issuer`
        rp.redirect_uri       # http://127.0.0.1:<port>/private/redirect_uri, to register with the provider
        rp.log_text()         # Apache's and mod_auth_openidc's own words (LogLevel auth_openidc:debug)

/private/ is an SSI page that shows the claims mod_auth_openidc passes on (OIDC_CLAIM_*: sub, amr, acr,
...), each in an element whose id is `claim-<name>`, and REMOTE_USER in `remote-user`: the test reads what
the relying party itself accepted, not what the provider meant to send.

Apache runs in the foreground as one process (`apache2 -X`: no worker children) with a config of its own
written to `workdir`: ServerRoot, PidFile, the runtime directory, the error and access logs all there,
`Listen 127.0.0.1:<port>`, and only the modules it needs. Nothing under /etc/apache2 is read, so the
package's sites, ports (:80) and modules play no part. As root Apache must switch to an unprivileged user
(it refuses to serve as root), so the document root is a world-readable temporary folder of its own, removed
on stop; everything Apache opens before switching (config, logs) stays in `workdir`.

That switch also clears the kernel's parent-death signal (prctl(2): it is reset when the effective user
changes), so an Apache started straight from a `Child` outlived a SIGKILLed test. It is therefore started
through a guard, a few lines of Python that stay root: the guard is the `Child` (the kernel sends it SIGTERM
if the test process dies) and passes SIGTERM on to Apache, SIGKILL after a grace period, then exits with
Apache's code. `stop()` also kills an Apache that outlived its guard, by the pid in its PidFile.

Chromium on http://127.0.0.1 needed nothing special (checked with mod_auth_openidc 2.4.12): over http the
module marks no cookie `Secure` and, with OIDCCookieSameSite Off, sets no SameSite at all, so Chromium keeps
both the state and the session cookie (it would drop a `SameSite=None` cookie that is not `Secure`).
`OIDCCookieSameSite On` is set anyway, for an explicit `SameSite=Lax` on both instead of the browser's
default: two ports of 127.0.0.1 are one site, so the provider's redirect back carries the cookies (a
provider on another site would still do, by a top-level GET; only a cross-site `form_post` answer would not
carry a Lax state cookie, and this relying party asks for the query response mode). OIDCStateInputHeaders
keeps its default (User-Agent and X-Forwarded-For): Chromium's User-Agent does not change between the two
legs and no proxy adds X-Forwarded-For. OIDCSSLValidateServer is not needed for an http provider; an https
one (pushauth with the test CA) is trusted through `ca_file` (OIDCCABundlePath), not by turning the check
off.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.processes import Child

__all__ = ["APACHE", "CLAIMS", "MODULE_DIR", "ApacheError", "ApacheRP", "available", "claims_page", "quote"]

APACHE = Path("/usr/sbin/apache2")
MODULE_DIR = Path("/usr/lib/apache2/modules")
HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
_PORT_RETRIES = 3
# The modules the config needs, each for one reason (apache2 -l: core, http_core, so, unixd, log_config,
# logio, watchdog and version are built in).
MODULES = {
    "mpm_event_module": "mod_mpm_event.so",  # an MPM is required; -X makes it one process
    "authn_core_module": "mod_authn_core.so",  # AuthType, AuthName
    "authz_core_module": "mod_authz_core.so",  # Require
    "authz_user_module": "mod_authz_user.so",  # Require valid-user
    "auth_openidc_module": "mod_auth_openidc.so",  # the relying party under test
    "include_module": "mod_include.so",  # the SSI page that shows the claims
    "dir_module": "mod_dir.so",  # /private/ -> /private/index.shtml
}
# The claims the page shows (each as <span id="claim-NAME">), in this order.
CLAIMS = ("sub", "iss", "aud", "amr", "acr", "auth_time", "name", "email", "preferred_username")
_DEBIAN_PACKAGES = "apache2 libapache2-mod-auth-openidc"
# The guard between the test and Apache (module docstring): `python -c GUARD apache2 ARGS...`. SIGTERM (the
# kernel's, when the test dies, or stop()'s) and SIGINT go on to Apache; if it has not exited GRACE seconds
# later it is killed. Exits with Apache's exit code.
GUARD_GRACE_S = 5.0
_GUARD = f"""
import signal, subprocess, sys, time
apache = subprocess.Popen(sys.argv[1:])
stopping = []
def forward(sig, frame):
    stopping.append(time.monotonic())
    apache.send_signal(sig)
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
while True:
    try:
        sys.exit(apache.wait(0.2))
    except subprocess.TimeoutExpired:
        if stopping and time.monotonic() - stopping[0] > {GUARD_GRACE_S}:
            apache.kill()
"""


class ApacheError(RuntimeError):
    """Apache could not be configured or started."""


def available() -> str | None:
    """None if an Apache with mod_auth_openidc can run here, else why not (for an error message)."""
    for path in (APACHE, *(MODULE_DIR / name for name in MODULES.values())):
        if not path.exists():
            return (f"{path} is missing: `make test` installs {_DEBIAN_PACKAGES} (scripts/ensure-apache-oidc;"
                    " to run pytest directly, run that script first)")
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def quote(value: str) -> str:
    """`value` as one double-quoted Apache config argument. Apache reads `\\"` and `\\\\` inside quotes;
    a line break cannot be written at all (it would end the directive), so it is refused."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"an Apache config value cannot hold a line break or NUL: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unprivileged_user() -> tuple[str, str] | None:
    """The (user, group) Apache switches to when started as root: Debian's www-data, else nobody."""
    if os.geteuid() != 0:
        return None
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user, group
    raise ApacheError("running as root, and neither www-data nor nobody exists for Apache to switch to")


def claims_page() -> str:
    """The SSI page under /private/: every claim in CLAIMS (mod_include escapes each as an HTML entity)."""
    rows = "\n".join(f'<dt>{name}</dt><dd><span id="claim-{name}">'
                     f'<!--#echo var="OIDC_CLAIM_{name}" --></span></dd>' for name in CLAIMS)
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>private</title></head><body>\n"
            "<h1 id=\"private\">private</h1>\n"
            '<p>signed in as <span id="remote-user"><!--#echo var="REMOTE_USER" --></span></p>\n'
            f"<dl>\n{rows}\n</dl>\n</body></html>\n")


class ApacheRP:
    """`apache2 -X` on 127.0.0.1:`port` (a free one by default), /private/ protected by mod_auth_openidc as
    a confidential client (`client_id`, `client_secret` sent by client_secret_basic) of the provider at
    `issuer` (discovery from `<issuer>/.well-known/openid-configuration`), authorization code flow with PKCE
    S256, scope `scope`. `ca_file` is the CA bundle to trust for an https provider (OIDCCABundlePath).
    More directives: `extra` inside the /private/ location (`OIDCPathAuthRequestParams login_hint=alice`),
    `server_extra` at server level, for those mod_auth_openidc allows only there (`OIDCAuthRequestParams
    acr_values=...`, `OIDCIDTokenIatSlack 60`); `apache2 -t` refuses one in the wrong place on start."""

    def __init__(self, workdir: Path, issuer: str, client_id: str, client_secret: str, *,
                 port: int | None = None, scope: str = "openid", ca_file: Path | None = None,
                 extra: Sequence[str] = (), server_extra: Sequence[str] = (),
                 log_level: str = "warn auth_openidc:debug") -> None:
        self.workdir = Path(workdir).resolve()
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.fixed_port = port
        self.port = port or _free_port()
        self.scope = scope
        self.ca_file = ca_file
        self.extra = list(extra)
        self.server_extra = list(server_extra)
        self.log_level = log_level
        # A fresh one per instance: sessions and state cookies of another run cannot be decrypted.
        self.passphrase = secrets.token_urlsafe(32)
        self.child: Child | None = None
        self.docroot: Path | None = None
        self.config = self.workdir / "apache2.conf"
        self.log = self.workdir / "apache2.out"  # what apache2 prints before its ErrorLog is open
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"

    # -- where it is ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The protected page."""
        return f"{self.base_url}/private/"

    @property
    def redirect_uri(self) -> str:
        """The relying party's redirect URI (mod_auth_openidc's own handler, inside the protected path)."""
        return f"{self.base_url}/private/redirect_uri"

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    # -- config ------------------------------------------------------------------

    def config_text(self) -> str:
        assert self.docroot is not None
        run = self.workdir / "run"
        loads = [f"LoadModule {name} {MODULE_DIR / so}" for name, so in MODULES.items()]
        as_user = _unprivileged_user()
        lines = [
            f"ServerRoot {quote(str(self.workdir))}",
            f"DefaultRuntimeDir {quote(str(run))}",  # mutexes and mod_auth_openidc's shm cache lock
            f"PidFile {quote(str(run / 'apache2.pid'))}",
            f"Listen {HOST}:{self.port}",
            f"ServerName {HOST}:{self.port}",
            *loads,
            *([f"User {as_user[0]}", f"Group {as_user[1]}"] if as_user else []),
            f"ErrorLog {quote(str(self.error_log))}",
            f"LogLevel {self.log_level}",
            'LogFormat "%h %t \\"%r\\" %>s %b" brief',
            f"CustomLog {quote(str(self.access_log))} brief",
            f"DocumentRoot {quote(str(self.docroot))}",
            "DirectoryIndex index.shtml",
            "<Directory />",
            "    AllowOverride None",
            "    Require all denied",
            "</Directory>",
            f"<Directory {quote(str(self.docroot))}>",
            "    Options None",
            "    Require all granted",
            "</Directory>",
            "",
            "# -- the relying party ----------------------------------------------------------",
            f"OIDCProviderMetadataURL {quote(self.issuer + '/.well-known/openid-configuration')}",
            f"OIDCClientID {quote(self.client_id)}",
            f"OIDCClientSecret {quote(self.client_secret)}",
            f"OIDCRedirectURI {quote(self.redirect_uri)}",
            f"OIDCCryptoPassphrase {quote(self.passphrase)}",
            f"OIDCScope {quote(self.scope)}",
            "OIDCResponseType code",
            "OIDCPKCEMethod S256",
            "OIDCProviderTokenEndpointAuth client_secret_basic",
            # SameSite=Lax on the state and session cookies, not the browser's default (module docstring).
            "OIDCCookieSameSite On",
            # The claims for the page: environment variables only (no OIDC_CLAIM_* request headers).
            "OIDCPassClaimsAs environment",
            *([f"OIDCCABundlePath {quote(str(self.ca_file))}"] if self.ca_file is not None else []),
            *self.server_extra,
            "<Location /private/>",
            "    AuthType openid-connect",
            "    Require valid-user",
            "    Options +IncludesNoExec",
            "    ForceType text/html",
            "    SetOutputFilter INCLUDES",
            *(f"    {line}" for line in self.extra),
            "</Location>",
            "",
        ]
        return "\n".join(lines)

    def _write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        if self.docroot is None:
            # Readable by the user Apache switches to; pytest's tmp_path (0700 under root) is not.
            self.docroot = Path(tempfile.mkdtemp(prefix="pushauth-apache-"))
            self.docroot.chmod(0o755)
        private = self.docroot / "private"
        private.mkdir(mode=0o755, exist_ok=True)
        private.chmod(0o755)
        page = private / "index.shtml"
        page.write_text(claims_page())
        page.chmod(0o644)
        self.config.write_text(self.config_text())

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        reason = available()
        if reason:
            raise ApacheError(reason)
        if self.running:
            raise ApacheError(f"Apache is already running on port {self.port}")
        try:
            for attempt in range(_PORT_RETRIES):
                self._write()
                self._check_config()
                if self._launch():
                    return self
                if self.fixed_port is not None or attempt + 1 == _PORT_RETRIES:
                    break
                self.port = _free_port()  # most likely taken in the meantime
            raise ApacheError(f"Apache did not start on {HOST}:{self.port}:\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _check_config(self) -> None:
        """`apache2 -t`: a config error said plainly, not as a child that exits at once."""
        done = subprocess.run([str(APACHE), "-t", "-f", str(self.config)], capture_output=True, text=True,
                              check=False, timeout=30, env=self._env())
        if done.returncode != 0:
            raise ApacheError(f"apache2 -t refused {self.config}:\n{done.stdout}{done.stderr}")

    @staticmethod
    def _env() -> dict[str, str]:
        # Debian's apache2 reads APACHE_* variables only through apache2ctl/envvars, which is not used;
        # a clean environment keeps the caller's from leaking into the config.
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}

    def _launch(self) -> bool:
        argv = [sys.executable, "-I", "-c", _GUARD, str(APACHE), "-X", "-f", str(self.config)]
        self.child = Child(argv, self.log, env=self._env(), cwd=self.workdir, name=f"apache2:{self.port}",
                           death_signal=signal.SIGTERM)  # the guard passes it on (module docstring)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.child.alive():
                self.child = None
                return False
            if self._listening():
                return True
            time.sleep(0.05)
        self.child.kill9()
        self.child = None
        raise ApacheError(f"Apache did not listen on {HOST}:{self.port} within {START_TIMEOUT_S:.0f} s:\n"
                          f"{self.log_tail()}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (Apache shuts down gracefully) and wait; SIGKILL if it lingers. The docroot goes too."""
        child, self.child = self.child, None
        try:
            if child is not None:
                child.stop(GUARD_GRACE_S + 5)
        finally:
            self._kill_leftover()
            if self.docroot is not None:
                shutil.rmtree(self.docroot, ignore_errors=True)
                self.docroot = None

    @property
    def pid_file(self) -> Path:
        return self.workdir / "run" / "apache2.pid"

    def apache_pid(self) -> int | None:
        """The pid of this instance's Apache, while it runs (its PidFile, checked against /proc: a pid
        reused by another program is not it)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if str(self.config).encode() in cmdline else None

    def _kill_leftover(self) -> None:
        """SIGKILL an Apache that outlived its guard (the guard itself killed, not stopped)."""
        pid = self.apache_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- what it said --------------------------------------------------------------

    def log_text(self) -> str:
        """apache2's own output, then its error log (mod_auth_openidc's messages are there)."""
        return _read(self.log) + _read(self.error_log)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def access_text(self) -> str:
        """The access log: one line per request (`%h %t "%r" %>s %b`)."""
        return _read(self.access_log)

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        # Never the secret or the passphrase.
        return f"<ApacheRP {self.base_url} client={self.client_id} issuer={self.issuer} {self.child!r}>"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
