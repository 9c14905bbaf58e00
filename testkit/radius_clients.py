"""Real, third-party RADIUS clients, driven against a RADIUS server on 127.0.0.1 (issue 17): what a VPN
concentrator or a Linux server sends, not what our own code thinks it sends.

    reply = await radclient(port, SECRET, {"User-Name": "alice", "User-Password": "pw",
                                           "Message-Authenticator": MESSAGE_AUTHENTICATOR}, retries=3)
    reply.code, reply.get("Reply-Message"), reply.state, reply.sent, reply.elapsed_s

    with PamRadiusService(port, SECRET, tmp_path, timeout_s=10) as pam:    # /etc/pam.d/<pam.name>
        attempt = await pamtester(pam.name, "alice", ["pw", ""])           # password, then Enter
        attempt.succeeded, attempt.prompts                 # ["Password: ", "Enter 42 in the app"]

An SSH login through sshd + PAM + RADIUS: testkit/sshd.py. `missing_radius_tools()` says why a test must skip.

Interactive programs (pamtester, ssh) are driven by Debian's `expect` (CONVERSE_SCRIPT): every prompt is
recorded and answered in turn from a list. A prompt is whatever the program prints without a newline and
then waits on: pam_radius_auth shows a challenge's Reply-Message as the prompt itself ("Enter 42 in the
app", no colon), so no pattern could tell one. Debian's pam_radius_auth 2.0 sends no Message-Authenticator.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "CONVERSE_SCRIPT",
    "MESSAGE_AUTHENTICATOR",
    "PAM_DIR",
    "Conversation",
    "LoginAttempt",
    "PamRadiusService",
    "RadiusReply",
    "converse",
    "find_program",
    "missing_radius_tools",
    "pam_radius_module",
    "pamtester",
    "radclient",
    "unique_name",
]

HOST = "127.0.0.1"
PAM_DIR = Path("/etc/pam.d")
# radclient replaces a Message-Authenticator of 0x00 with the real HMAC-MD5 of the packet (RFC 3579).
MESSAGE_AUTHENTICATOR = b"\x00"
# Which Debian package has each program (scripts/ensure-radius-tools installs them).
PACKAGES = {
    "radclient": "freeradius-utils", "pamtester": "pamtester", "expect": "expect",
    "sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
    "useradd": "passwd", "slapd": "slapd", "ldapadd": "ldap-utils",
}
SBIN = ("/usr/sbin", "/sbin")

AttributeValue = str | bytes | int


def find_program(program: str) -> str | None:
    # sshd and useradd live in sbin, which a non-root PATH may not have.
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def pam_radius_module() -> Path | None:
    """pam_radius_auth.so (libpam-radius-auth), wherever this system's PAM modules are."""
    for pattern in ("/lib/*/security/pam_radius_auth.so", "/usr/lib/*/security/pam_radius_auth.so",
                    "/lib/security/pam_radius_auth.so", "/usr/lib/security/pam_radius_auth.so"):
        if found := sorted(glob.glob(pattern)):
            return Path(found[0])
    return None


def missing_radius_tools(*programs: str, pam: bool = False, root: bool = False) -> str | None:
    """Why a test that drives `programs` (and pam_radius_auth, with `pam`; as root, with `root`) cannot run
    here, as a skip reason; None when it can."""
    reasons = []
    if root and os.geteuid() != 0:
        reasons.append("needs root (it writes /etc/pam.d/ files, adds a Unix user or runs sshd)")
    absent = [p for p in programs if find_program(p) is None]
    if pam and pam_radius_module() is None:
        absent.append("pam_radius_auth.so")
    if absent:
        packages = sorted({PACKAGES.get(p, "libpam-radius-auth") for p in absent})
        reasons.append(f"{', '.join(absent)} not installed (`make test` installs them: "
                       f"scripts/ensure-radius-tools; or apt-get install {' '.join(packages)})")
    return "; ".join(reasons) or None


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child started with start_new_session=True and everything it started (expect's spawned
    program), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


# ---------------------------------------------------------------------------------------------------------
# radclient (freeradius-utils)
# ---------------------------------------------------------------------------------------------------------

_SENT = re.compile(r"^Sent (\S+) Id (\d+) ")
_RECEIVED = re.compile(r"^Received (\S+) Id (\d+) from (\S+) to (\S+) length (\d+)")
_ATTRIBUTE = re.compile(r"^\s+([\w.-]+) (?:=|:=|\+=) (.*)$")


@dataclass(frozen=True)
class RadiusReply:
    """What radclient got back. `code` is None when no reply came (after all its retries). Attribute values
    are as radclient prints them, unquoted: text as text, octets (State) as "0x..." hex, which is also how
    radclient reads them back."""

    code: str | None
    attributes: dict[str, list[str]]
    sent: int  # Access-Requests radclient sent: 1 + its own retransmits
    identifier: int | None  # the RADIUS Identifier radclient used (the same on each retransmit)
    elapsed_s: float
    returncode: int
    output: str  # radclient's stdout and stderr, for an assertion's message

    def get(self, name: str) -> str | None:
        values = self.attributes.get(name)
        return values[0] if values else None

    @property
    def state(self) -> str | None:
        """The State of an Access-Challenge, ready to send back (`{"State": reply.state}`)."""
        return self.get("State")

    @property
    def reply_message(self) -> str | None:
        return self.get("Reply-Message")


def _format_value(value: AttributeValue) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int):
        return str(value)
    if value.startswith("0x") and re.fullmatch(r"0x[0-9a-fA-F]*", value):
        return value  # an octets value as radclient printed it (a State sent back)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def radclient_input(attributes: Mapping[str, AttributeValue | Sequence[AttributeValue]]) -> str:
    """The attribute lines radclient reads from stdin. A list value repeats the attribute."""
    lines = []
    for name, value in attributes.items():
        values = [value] if isinstance(value, str | bytes | int) else list(value)
        lines += [f"{name} = {_format_value(v)}" for v in values]
    return "\n".join(lines) + "\n"


def parse_radclient(output: str) -> tuple[str | None, dict[str, list[str]], int, int | None]:
    """(reply code, reply attributes, packets sent, Identifier) from `radclient -x` output."""
    code: str | None = None
    attributes: dict[str, list[str]] = {}
    sent = 0
    identifier: int | None = None
    in_reply = False
    for line in output.splitlines():
        if match := _SENT.match(line):
            sent += 1
            identifier = int(match.group(2))
            in_reply = False
        elif match := _RECEIVED.match(line):
            code, in_reply, attributes = match.group(1), True, {}
        elif in_reply and (match := _ATTRIBUTE.match(line)):
            attributes.setdefault(match.group(1), []).append(_unquote(match.group(2)))
        else:
            in_reply = False
    return code, attributes, sent, identifier


async def radclient(port: int, secret: str,
                    attributes: Mapping[str, AttributeValue | Sequence[AttributeValue]], *,
                    retries: int = 1, timeout_s: float = 3.0, host: str = HOST,
                    command: str = "auth") -> RadiusReply:
    """Send one Access-Request (`command` "auth") with radclient and return its reply. `retries` is
    radclient's -r: how many times it sends the packet in all, waiting `timeout_s` (-t) for a reply after
    each; a retransmit is the same packet (same Identifier and Request Authenticator). radclient 3.2 waits
    about 1 s at least between sends, whatever a smaller `timeout_s` says (0.5 gives 0.7 s, then 1 s)."""
    binary = find_program("radclient")
    if binary is None:
        raise FileNotFoundError(missing_radius_tools("radclient"))
    # -x prints the reply's attributes (without it radclient prints only the code).
    argv = [binary, "-x", "-r", str(retries), "-t", str(timeout_s), f"{host}:{port}", command, secret]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(radclient_input(attributes).encode()),
                                        retries * timeout_s + 10)
    except BaseException:  # timed out, or the test was cancelled: leave nothing running
        await _kill_group(proc)
        raise
    elapsed = time.monotonic() - started
    output = out.decode(errors="replace")
    code, reply_attributes, sent, identifier = parse_radclient(output)
    assert proc.returncode is not None
    return RadiusReply(code, reply_attributes, sent, identifier, elapsed, proc.returncode, output)


# ---------------------------------------------------------------------------------------------------------
# Interactive programs through expect
# ---------------------------------------------------------------------------------------------------------

# argv: timeout_s settle_ms answer-count answer... command...
# Writes one event a line, its text hex-encoded (UTF-8): "output HEX", "prompt HEX", "unanswered HEX",
# "timeout", and last "exit CODE" or "killed ...". Complete lines are output. A partial line is a prompt
# when nothing more follows within settle_ms: a program waiting on an answer prints nothing more.
CONVERSE_SCRIPT = r"""
log_user 0
set timeout [lindex $argv 0]
set settle [lindex $argv 1]
set count [lindex $argv 2]
set answers [lrange $argv 3 [expr {2 + $count}]]
set command [lrange $argv [expr {3 + $count}] end]
proc report {kind text} {
    puts "$kind [binary encode hex [encoding convertto utf-8 $text]]"
}
spawn -noecho {*}$command
set asked 0
set done 0
while {!$done} {
    set partial ""
    expect {
        -re {^[^\n]*\n} { report output $expect_out(0,string); exp_continue }
        -re {^[^\n]+$} { set partial $expect_out(0,string) }
        eof { report output $expect_out(buffer); set done 1 }
        timeout { report timeout ""; set done 2 }
    }
    # A partial line: a prompt, unless more output follows at once.
    while {!$done && $partial ne ""} {
        after $settle
        expect {
            -timeout 0
            -re {^.+} {
                set text "$partial$expect_out(0,string)"
                set cut [string last "\n" $text]
                if {$cut >= 0} {
                    report output [string range $text 0 $cut]
                    set partial [string range $text [expr {$cut + 1}] end]
                } else {
                    set partial $text
                }
            }
            eof { report output "$partial$expect_out(buffer)"; set partial ""; set done 1 }
            timeout {
                if {$asked < $count} {
                    report prompt $partial
                    send -- "[lindex $answers $asked]\r"
                    incr asked
                } else {
                    report unanswered $partial
                    set done 3
                }
                set partial ""
            }
        }
    }
}
if {$done != 1} {
    catch {exec kill -HUP [exp_pid]}
    catch {close}
}
set status [wait]
if {[llength $status] == 4 && [lindex $status 2] == 0} {
    puts "exit [lindex $status 3]"
} else {
    puts "killed [lrange $status 2 end]"
}
"""


@dataclass(frozen=True)
class Conversation:
    """What an interactive program showed and how it ended."""

    prompts: list[str]  # every prompt answered, in order, as shown (e.g. "Password: ")
    transcript: str  # everything it printed, prompts included ("\r\n" turned into "\n")
    returncode: int | None  # its exit status; None if it did not exit by itself
    timed_out: bool = False  # it printed nothing for timeout_s
    unanswered: str | None = None  # a prompt shown when no answer was left (the driver hung up on it)
    elapsed_s: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) as expect reported them

    @property
    def all_prompts(self) -> list[str]:
        """The prompts answered and the one left unanswered, if any."""
        return self.prompts + ([self.unanswered] if self.unanswered is not None else [])


def _parse_events(report: str) -> tuple[list[tuple[str, str]], int | None]:
    events: list[tuple[str, str]] = []
    returncode: int | None = None
    for line in report.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "exit":
            returncode = int(rest)
        elif kind in ("output", "prompt", "unanswered", "timeout"):
            events.append((kind, bytes.fromhex(rest).decode("utf-8", errors="replace")))
        elif kind == "killed":
            events.append((kind, rest))
    return events, returncode


async def converse(argv: Sequence[str], answers: Sequence[str], *, timeout_s: float = 60.0,
                   settle_s: float = 0.3, env: Mapping[str, str] | None = None) -> Conversation:
    """Run `argv` on a terminal (expect), answering each prompt in turn from `answers`; a prompt beyond
    them ends the conversation (`unanswered`). `timeout_s` is how long it may stay silent (a push being
    decided is silence), and, with some slack, how long the whole conversation may take."""
    binary = find_program("expect")
    if binary is None:
        raise FileNotFoundError(missing_radius_tools("expect"))
    with tempfile.NamedTemporaryFile("w", prefix="converse-", suffix=".exp", delete=False) as script:
        script.write(CONVERSE_SCRIPT)
    silence_s = max(1, round(timeout_s))
    args = [binary, "-f", script.name, str(silence_s), str(round(settle_s * 1000)), str(len(answers)),
            *answers, *argv]
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env=dict(env) if env is not None else None)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 2 * silence_s + 10)
        except BaseException:  # timed out, or the test was cancelled: leave nothing running
            await _kill_group(proc)
            raise
    finally:
        os.unlink(script.name)
    if proc.returncode != 0:
        raise RuntimeError(f"expect failed ({proc.returncode}): {err.decode(errors='replace')}")
    events, returncode = _parse_events(out.decode())
    transcript = "".join(text for kind, text in events if kind in ("output", "prompt", "unanswered"))
    return Conversation(
        prompts=[text.lstrip("\r") for kind, text in events if kind == "prompt"],
        transcript=transcript.replace("\r\n", "\n"),
        returncode=returncode,
        timed_out=any(kind == "timeout" for kind, _ in events),
        unanswered=next((text.lstrip("\r") for kind, text in events if kind == "unanswered"), None),
        elapsed_s=time.monotonic() - started,
        events=events,
    )


@dataclass(frozen=True)
class LoginAttempt:
    """An authentication (pamtester) or a login (ssh) through a real client, and what it showed."""

    succeeded: bool
    conversation: Conversation

    @property
    def prompts(self) -> list[str]:
        """Every prompt shown, the unanswered one included."""
        return self.conversation.all_prompts

    @property
    def transcript(self) -> str:
        return self.conversation.transcript


# ---------------------------------------------------------------------------------------------------------
# PAM: pam_radius_auth (libpam-radius-auth), driven by pamtester
# ---------------------------------------------------------------------------------------------------------


def unique_name(prefix: str = "pushauth-test") -> str:
    """A name no package or admin uses: PAM service, sshd program name."""
    return f"{prefix}-{secrets.token_hex(4)}"


class PamRadiusService:
    """A PAM service of a test's own, /etc/pam.d/<name>, whose `auth` is pam_radius_auth against the
    RADIUS server at 127.0.0.1:`port` with `secret`, through a pam_radius_auth config file of its own in
    `workdir` (`conf=`; /etc/pam_radius_auth.conf is never touched). `timeout_s` is how long
    pam_radius_auth waits for a reply before it retransmits (it clamps it to 3..60 s); `retries` is its
    `retry=` (retransmits to the same server; 0 = none). `account`, `session` and `password` are
    pam_permit / pam_permit / pam_deny: only the RADIUS `auth` decides. Removed on exit, test failed or not.
    """

    def __init__(self, port: int, secret: str, workdir: Path, *, name: str | None = None,
                 timeout_s: int = 10, retries: int = 0, options: Sequence[str] = (),
                 host: str = HOST) -> None:
        self.name = name or unique_name()
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"not a PAM service name: {self.name!r}")
        self.port = port
        self.secret = secret
        self.host = host
        self.timeout_s = timeout_s
        self.retries = retries
        self.options = list(options)
        self.conf = Path(workdir).resolve() / f"{self.name}.pam_radius_auth.conf"
        self.path = PAM_DIR / self.name

    def pam_text(self) -> str:
        module = pam_radius_module()
        if module is None:
            raise FileNotFoundError(missing_radius_tools(pam=True))
        options = " ".join([f"conf={self.conf}", f"retry={self.retries}", *self.options])
        return (f"# A test's PAM service (pushauth testkit/radius_clients.py); removed when the test ends.\n"
                f"auth     required {module} {options}\n"
                f"account  required pam_permit.so\n"
                f"session  required pam_permit.so\n"
                f"password required pam_deny.so\n")

    def conf_text(self) -> str:
        # server[:port] secret timeout (pam_radius_auth.conf(5)); the secret can hold no blank.
        if not self.secret or any(c.isspace() for c in self.secret):
            raise ValueError("pam_radius_auth cannot read a shared secret with a blank in it")
        return f"{self.host}:{self.port} {self.secret} {self.timeout_s}\n"

    def install(self) -> Self:
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists: not a test's to overwrite")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        # Whoever can read the secret can forge replies: 0600, like /etc/pam_radius_auth.conf.
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.conf_text())
        self.path.write_text(self.pam_text())
        return self

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.conf.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        try:
            return self.install()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<PamRadiusService {self.name} -> {self.host}:{self.port}>"


async def pamtester(service: str, user: str, answers: Sequence[str], *,
                    timeout_s: float = 60.0) -> LoginAttempt:
    """`pamtester <service> <user> authenticate`, each prompt answered in turn from `answers` (the
    password, then, in challenge mode, the answer to the Reply-Message shown: "" is Enter)."""
    binary = find_program("pamtester")
    if binary is None:
        raise FileNotFoundError(missing_radius_tools("pamtester"))
    conversation = await converse([binary, "-v", service, user, "authenticate"], answers,
                                  timeout_s=timeout_s)
    ok = conversation.returncode == 0 and "successfully authenticated" in conversation.transcript
    return LoginAttempt(ok, conversation)
