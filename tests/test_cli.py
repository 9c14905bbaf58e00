"""The `pushauth` command: keys, credentials, enrollment QR codes, the phone simulator and the demo.

Most commands run in-process through `pushauth.cli.main`. Commands that talk to a server use
`asyncio.run` themselves, so they run in a worker thread while the server runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import aiohttp
import pyotp
import pytest
from support import (
    ADMIN_TOKEN,
    AdminClient,
    Clock,
    LoginFlow,
    RunningServer,
    free_port,
    make_settings,
    start_server,
)

from pushauth.cli import main
from pushauth.config import from_mapping
from pushauth.crypto.keyring import KeyRingHolder
from pushauth.crypto.keys import KeyStore
from pushauth.crypto.secrets import sha256_hex
from pushauth.phone import Phone, ServerRejected

USER = "ivan@nhs.net"
KID = r"[A-Za-z0-9_-]{43}"
PUSHAUTH_BIN = Path(sys.executable).parent / "pushauth"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PUSHAUTH_* settings from the developer's shell, and no stray files in the repository."""
    for name in list(os.environ):
        if name.startswith("PUSHAUTH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- keys -----------------------------------------------------------------------------------------------


def test_keys_generate_list_rotate_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys")

    assert main(["keys", "--path", path, "generate"]) == 0
    first = re.fullmatch(rf"generated ({KID}) \(current\)\n", capsys.readouterr().out)
    assert first is not None
    kid1 = first.group(1)
    assert (tmp_path / "keys" / f"{kid1}.pem").exists()

    assert main(["keys", "--path", path, "generate"]) == 2  # never replaces a ring
    assert "rotate" in capsys.readouterr().err

    assert main(["keys", "--path", path, "rotate"]) == 0
    rotated = re.match(rf"rotated: ({KID}) is now current", capsys.readouterr().out)
    assert rotated is not None
    kid2 = rotated.group(1)
    assert kid2 != kid1

    assert main(["keys", "--path", path, "list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{re.escape(kid2)}\s+current\s", listing, re.MULTILINE), listing
    assert re.search(rf"^{re.escape(kid1)}\s+active\s", listing, re.MULTILINE), listing

    # The current key cannot be retired: exit 2 and a message that says what to do. ("--": a kid may start
    # with "-", see test_retire_a_kid_that_starts_with_a_dash.)
    assert main(["keys", "--path", path, "retire", "--", kid2]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert kid2 in captured.err
    assert "current" in captured.err
    assert "rotate" in captured.err

    assert main(["keys", "--path", path, "retire", "--", kid1]) == 0
    assert kid1 in capsys.readouterr().out
    assert not (tmp_path / "keys" / f"{kid1}.pem").exists()
    assert main(["keys", "--path", path, "list"]) == 0
    assert re.search(rf"^{re.escape(kid1)}\s+retired\s.*retired \d{{4}}-", capsys.readouterr().out,
                     re.MULTILINE)
    assert [k.kid for k in KeyStore(tmp_path / "keys").load().keys.values()] == [kid2]

    assert main(["keys", "--path", path, "retire", "--", kid1]) == 2  # already retired
    assert "already retired" in capsys.readouterr().err
    assert main(["keys", "--path", path, "retire", "no-such-kid"]) == 2
    assert "no-such-kid" in capsys.readouterr().err


def test_retire_a_kid_that_starts_with_a_dash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = KeyStore(tmp_path / "keys")
    store.generate()
    for _ in range(1500):  # about 64 rotations on average, 6 ms each
        dashed = store.rotate().kid
        if dashed.startswith("-"):
            break
    else:
        pytest.fail("no kid starting with '-' in 1500 rotations")
    store.rotate()  # so that the dashed key is not the current one
    assert dashed in [k.kid for k in store.list()]
    capsys.readouterr()

    assert main(["keys", "--path", str(store.path), "retire", dashed]) == 0
    assert f"retired {dashed}" in capsys.readouterr().out


def test_keys_list_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--path", str(tmp_path / "empty"), "list"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["keys", "--path", str(tmp_path / "empty"), "rotate"]) == 2
    assert "generate" in capsys.readouterr().err


# -- credentials ----------------------------------------------------------------------------------------


def test_apps_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apps", "new-key", "webmail", "NHSmail webmail"]) == 0
    out = capsys.readouterr().out
    key_line = re.search(r"^  (\S{43,})$", out, re.MULTILINE)
    assert key_line is not None, out
    key = key_line.group(1)
    digest = re.search(r'api_key_sha256 = \["([0-9a-f]{64})"\]', out)
    assert digest is not None, out
    assert digest.group(1) == sha256_hex(key)

    # The printed block is valid config, and the key authenticates against it.
    block = out[out.index("[[applications]]"):]
    data = tomllib.loads("\n".join(line.strip() for line in block.splitlines()))
    settings = from_mapping(data)
    assert [(a.id, a.name, a.api_key_sha256) for a in settings.applications] == [
        ("webmail", "NHSmail webmail", [sha256_hex(key)])]

    assert main(["apps", "new-key", "webmail", "NHSmail webmail"]) == 0
    assert key not in capsys.readouterr().out  # a new key every time


def _printed_block(out: str) -> str:
    block = out[out.index("[[applications]]"):]
    return "\n".join(line.removeprefix("  ") for line in block.splitlines())


@pytest.mark.parametrize("name", ['St Mary\'s "Webmail"', "C:\\portal\\login", "Trust VPN\tportal",
                                  "two\nlines", "Ünïcødé 名前 🔐", "bell\x07 and del\x7f"])
def test_apps_new_key_prints_any_name_as_valid_toml(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The name is what the phone shows, so the user types it as they want it seen; the printed block is
    pasted into config.toml as it is and must load to exactly that name."""
    assert main(["apps", "new-key", "vpn", name]) == 0
    settings = from_mapping(tomllib.loads(_printed_block(capsys.readouterr().out)))
    assert [(a.id, a.name) for a in settings.applications] == [("vpn", name)]


def test_apps_new_key_needs_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["apps", "new-key", "webmail"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "NAME" in captured.err
    assert "api_key_sha256" not in captured.out  # no key made for a block that cannot be used

    # A name or id the server would refuse is refused here, before a key is shown.
    assert main(["apps", "new-key", "webmail", "   "]) == 2
    captured = capsys.readouterr()
    assert "name must not be empty" in captured.err
    assert captured.out == ""
    assert main(["apps", "new-key", "Web Mail", "Webmail"]) == 2
    assert "application id" in capsys.readouterr().err
    assert main(["apps", "new-key", "webmail", "Web\udcffmail"]) == 2  # argv that was not UTF-8
    captured = capsys.readouterr()
    assert "UTF-8" in captured.err
    assert captured.out == ""


def test_admin_new_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "new-token"]) == 0
    out = capsys.readouterr().out
    token_line = re.search(r"^  (\S{43,})$", out, re.MULTILINE)
    assert token_line is not None, out
    token = token_line.group(1)
    digest = re.search(r'token_sha256 = \["([0-9a-f]{64})"\]', out)
    assert digest is not None
    assert digest.group(1) == sha256_hex(token)
    assert from_mapping({"admin": {"token_sha256": [digest.group(1)]}}).admin.token_sha256 == [
        sha256_hex(token)]


# -- enroll ---------------------------------------------------------------------------------------------


async def test_enroll_via_server_writes_qr_files(server: RunningServer, http: aiohttp.ClientSession,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PUSHAUTH_ADMIN_TOKEN", ADMIN_TOKEN)
    svg, png = tmp_path / "qr.svg", tmp_path / "qr.png"
    code = await asyncio.to_thread(main, ["enroll", USER, "--server", server.url, "--svg", str(svg),
                                          "--png", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    uris = re.findall(r"^pushauth://enroll\?\S+$", out, re.MULTILINE)
    assert len(uris) == 1, out

    for path in (svg, png):
        assert path.stat().st_size > 0
        assert _mode(path) == 0o600, oct(_mode(path))
        assert str(path) in out
    head = svg.read_bytes()[:200].lstrip()
    assert head.startswith((b"<?xml", b"<svg"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The printed URI is a working one-time code for USER.
    phone = await Phone.enroll(uris[0], session=http)
    assert phone.user == USER
    with pytest.raises(ServerRejected, match="invalid_code"):
        await Phone.enroll(uris[0], session=http)


async def test_enroll_via_server_needs_an_admin_token(server: RunningServer,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert await asyncio.to_thread(main, ["enroll", USER, "--server", server.url]) == 2
    assert "PUSHAUTH_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("PUSHAUTH_ADMIN_TOKEN", "not-a-real-token-0000000000000000000000000")
    assert await asyncio.to_thread(main, ["enroll", USER, "--server", server.url]) == 2
    assert "401" in capsys.readouterr().err


def test_commands_work_with_the_admin_token_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    KeyStore(tmp_path / "keys").generate()
    config = tmp_path / "pushauth.toml"
    config.write_text(f'[keys]\npath = "{tmp_path / "keys"}"\n', encoding="utf-8")
    monkeypatch.setenv("PUSHAUTH_ADMIN_TOKEN", ADMIN_TOKEN)
    code = main(["-c", str(config), "keys", "list"])
    assert code == 0, capsys.readouterr().err
    assert "current" in capsys.readouterr().out


def test_enroll_without_redis_url_says_use_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enroll", USER]) == 2
    captured = capsys.readouterr()
    assert "--server" in captured.err
    assert "redis_url" in captured.err
    assert "pushauth://" not in captured.out


async def test_enroll_via_store_on_a_server_host(redis_url: str, tmp_path: Path,
                                                 http: aiohttp.ClientSession,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Without --server the command writes the code into the configured Redis, pinning the configured
    keys: a phone enrolls with it against the server that shares both."""
    KeyStore(tmp_path / "keys").generate()
    port = free_port()
    settings = make_settings(redis_url, port, keys={"path": str(tmp_path / "keys"), "ephemeral": False})
    config = tmp_path / "pushauth.toml"
    config.write_text(f'[server]\nport = {port}\nbase_url = "{settings.server.base_url}"\n'
                      f'[store]\nredis_url = "{redis_url}"\n[keys]\npath = "{tmp_path / "keys"}"\n',
                      encoding="utf-8")
    running = await start_server(settings, KeyRingHolder.from_settings(settings.keys))
    try:
        assert await asyncio.to_thread(main, ["-c", str(config), "enroll", USER]) == 0
        uri = re.search(r"^pushauth://enroll\?\S+$", capsys.readouterr().out, re.MULTILINE)
        assert uri is not None
        phone = await Phone.enroll(uri.group(0), session=http)
        assert phone.user == USER
        login = LoginFlow(http, running.url)
        created = await login.create(USER)
        assert await phone.approve(created["id"], number=created["number"]) == "approved"
    finally:
        await running.close()


# -- otp ------------------------------------------------------------------------------------------------


async def test_otp_enroll_activate_import_list_revoke(redis_url: str, tmp_path: Path, clock: Clock,
                                                      http: aiohttp.ClientSession,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`pushauth otp` on a server host writes to the store the server reads: an app enrolled and activated
    there signs in through the server; a token imported is pending; a revoked method signs nobody in; each
    step is on the audit trail as the CLI's."""
    clock.freeze()
    keys = tmp_path / "keys"
    KeyStore(keys).generate()
    config = tmp_path / "pushauth.toml"
    config.write_text(f'[store]\nredis_url = "{redis_url}"\n[keys]\npath = "{keys}"\n', encoding="utf-8")
    assert main(["-c", str(config), "keys", "generate-kek"]) == 0
    settings = make_settings(redis_url, free_port(), keys={"path": str(keys), "ephemeral": False})
    running = await start_server(settings, KeyRingHolder.from_settings(settings.keys))
    login, admin = LoginFlow(http, running.url), AdminClient(http, running.url)

    async def otp(*args: str) -> tuple[int, str, str]:
        rc = await asyncio.to_thread(main, ["-c", str(config), "otp", *args])
        out, err = capsys.readouterr()
        # what the command prints, without the log lines (structlog writes to stdout on a terminal too)
        printed = "".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line))
        return rc, printed, err

    async def verify(code: str) -> dict[str, object]:
        status, body = await login.call("POST", "/v1/codes/verify", {"user": USER, "code": code})
        assert status == 200, body
        return dict(body)

    try:
        capsys.readouterr()
        rc, out, _ = await otp("enroll", USER, "--name", "desk app")
        assert rc == 0
        uri = re.search(r"^otpauth://\S+$", out, re.MULTILINE)
        method = re.search(rf"pushauth otp activate {re.escape(USER)} (t\w{{32}}) CODE", out)
        assert uri is not None, out
        assert method is not None, out
        app = pyotp.parse_uri(uri.group(0))
        assert isinstance(app, pyotp.TOTP)
        mid = method.group(1)
        rc, out, _ = await otp("list", USER)
        assert (rc, out.split()[:4]) == (0, [mid, "app", "pending", "desk"])
        assert (await verify(app.at(clock.now())))["reason"] == "not_enrolled"  # pending: no sign-in
        wrong = "000000" if app.at(clock.now()) != "000000" else "111111"
        rc, _, err = await otp("activate", USER, mid, wrong)
        assert (rc, "tries left" in err) == (2, True)
        rc, out, _ = await otp("activate", USER, mid, app.at(clock.now()))
        assert (rc, out) == (0, f"{mid} is active\n")
        clock.advance(30)  # the activation spent its step
        assert (await verify(app.at(clock.now())))["valid"] is True

        tokens = tmp_path / "tokens.csv"
        tokens.write_text("serial,seed\n555001,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n", encoding="utf-8")
        rc, out, _ = await otp("import", str(tokens), "--assign", f"555001={USER}")
        assert rc == 0
        token = re.fullmatch(rf"555001  {re.escape(USER)}  (t\w{{32}})  pending .*\n", out)
        assert token is not None, out

        rc, out, _ = await otp("revoke", USER, mid)
        assert (rc, out) == (0, f"{mid} revoked\n")
        rc, out, _ = await otp("list", USER)
        assert (rc, [line.split()[:3] for line in out.splitlines()]) == (0, [[token.group(1), "hardware",
                                                                               "pending"]])
        clock.advance(30)
        assert (await verify(app.at(clock.now())))["reason"] == "not_enrolled"
        rc, _, err = await otp("revoke", USER, mid)
        assert rc == 2, err  # gone already
        trail = [(e["what"], e["who"], e["details"].get("method_id")) for e in await admin.audit(USER)
                 if e["what"] in ("otp_enrolled", "otp_activated", "otp_imported", "otp_revoked")]
        assert sorted(trail) == sorted([("otp_enrolled", "cli", mid), ("otp_activated", "cli", mid),
                                        ("otp_imported", "cli", token.group(1)), ("otp_revoked", "cli", mid)])
    finally:
        await running.close()


# -- phone ----------------------------------------------------------------------------------------------


async def test_phone_enroll_list_approve(login: LoginFlow, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "alice-phone.json"
    uri = await login.enroll_uri(USER)
    assert await asyncio.to_thread(main, ["phone", "enroll", uri, "--state", str(state),
                                          "--name", "CLI phone"]) == 0
    out = capsys.readouterr().out
    enrolled = re.search(r"enrolled device (\S+) for user (\S+)", out)
    assert enrolled is not None, out
    device_id = enrolled.group(1)
    assert enrolled.group(2) == USER
    assert _mode(state) == 0o600  # it holds the device private key

    # A second enroll into the same state file is refused rather than losing the key.
    assert await asyncio.to_thread(main, ["phone", "enroll", await login.enroll_uri(USER),
                                          "--state", str(state)]) == 1
    assert "already" in capsys.readouterr().err

    assert await asyncio.to_thread(main, ["phone", "list", "--state", str(state)]) == 0
    assert "no pending" in capsys.readouterr().out

    created = await login.create(USER, context={"ip": "81.2.69.160", "location": "Leeds, GB"})
    assert await asyncio.to_thread(main, ["phone", "list", "--state", str(state)]) == 0
    listing = capsys.readouterr().out
    assert created["id"] in listing
    assert "81.2.69.160" in listing
    assert "Leeds, GB" in listing
    assert "--number" in listing

    # Without the number: refused by the simulator itself, nothing sent.
    assert await asyncio.to_thread(main, ["phone", "approve", created["id"], "--state", str(state)]) == 1
    assert "--number" in capsys.readouterr().err
    assert (await login.status(created["id"]))["status"] == "pending"

    assert await asyncio.to_thread(main, ["phone", "approve", created["id"], "--number", created["number"],
                                          "--state", str(state)]) == 0
    assert f"{created['id']}: approved" in capsys.readouterr().out
    seen = await login.status(created["id"])
    assert seen["status"] == "approved"
    assert seen["device"] == device_id

    # Answering again is refused (exit 1, the server's word in the message).
    assert await asyncio.to_thread(main, ["phone", "approve", created["id"], "--number", created["number"],
                                          "--state", str(state)]) == 1
    assert "409" in capsys.readouterr().err


async def test_phone_deny_and_unenroll(login: LoginFlow, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "phone.json"
    assert await asyncio.to_thread(main, ["phone", "enroll", await login.enroll_uri(USER),
                                          "--state", str(state)]) == 0
    created = await login.create(USER)
    assert await asyncio.to_thread(main, ["phone", "deny", created["id"], "--reason", "not_me",
                                          "--state", str(state)]) == 0
    assert f"{created['id']}: denied" in capsys.readouterr().out
    seen = await login.status(created["id"])
    assert (seen["status"], seen["reason"]) == ("denied", "not_me")

    assert await asyncio.to_thread(main, ["phone", "unenroll", "--state", str(state)]) == 0
    assert not state.exists()
    status, body = await login.call("POST", "/v1/challenges", {"user": USER})
    assert (status, body["error"]) == (403, "not_enrolled")


async def test_phone_status_waits_for_approval_then_keeps_its_codes(
        login: LoginFlow, http: aiohttp.ClientSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A second phone enrolled from the command line waits for the first one's approval; `phone status`
    shows the number to type there, and after the approval saves the offline-code seed the server hands
    over once, so `phone code` works offline."""
    first = await Phone.enroll(await login.enroll_uri(USER), session=http)
    state = tmp_path / "second.json"
    assert await asyncio.to_thread(main, ["phone", "enroll", await login.enroll_uri(USER),
                                          "--state", str(state), "--offline-codes"]) == 0
    out = capsys.readouterr().out
    assert "waits for approval" in out, out
    assert await asyncio.to_thread(main, ["phone", "code", "--state", str(state)]) == 1  # no seed yet
    capsys.readouterr()

    assert await asyncio.to_thread(main, ["phone", "status", "--state", str(state)]) == 0
    waiting = re.search(r"waiting for approval until \S+: .* enter (\d+)", capsys.readouterr().out)
    assert waiting is not None
    assert await first.approve_new_phone(waiting.group(1)) == "approved"

    assert await asyncio.to_thread(main, ["phone", "status", "--state", str(state)]) == 0
    assert "offline codes received and saved" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["phone", "status", "--state", str(state)]) == 0
    # the seed came once, and the state file kept it (the server's own log lines share stdout here)
    assert capsys.readouterr().out.splitlines()[-1] == "active"
    assert await asyncio.to_thread(main, ["phone", "code", "--state", str(state)]) == 0
    code = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"\d{6}", code)
    status, body = await login.call("POST", "/v1/codes/verify", {"user": USER, "code": code})
    assert (status, body["valid"]) == (200, True), body


def test_phone_without_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phone", "list", "--state", str(tmp_path / "none.json")]) == 1
    assert "phone enroll" in capsys.readouterr().err


# -- the installed command ------------------------------------------------------------------------------


def test_demo_smoke() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHAUTH_")}
    result = subprocess.run([str(PUSHAUTH_BIN), "demo", "--no-qr"], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for word in ("approved", "denied", "not_me", "assertion verified"):
        assert word in result.stdout, result.stdout


def test_version() -> None:
    result = subprocess.run([str(PUSHAUTH_BIN), "--version"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("pushauth ")
