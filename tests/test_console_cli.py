"""`pushauth admin new-token --role` and `pushauth admin accounts`: role tokens as config blocks the server
accepts, and console accounts written to the store, audited as `cli` (issue 21)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import cast

import pytest
import redis

from pushauth.cli import main
from pushauth.config import from_mapping
from pushauth.crypto.secrets import sha256_hex


def test_new_token_with_a_role_prints_a_block_the_config_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "new-token", "--role", "service_desk", "--name", "desk-bot"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^  (\S{43,})$", out, re.MULTILINE)
    block = re.search(r"^\[\[admin\.tokens\]\]\n(.*)", out, re.MULTILINE | re.DOTALL)
    assert token is not None
    assert block is not None, out
    [entry] = tomllib.loads(block.group(0))["admin"]["tokens"]
    assert entry == {"sha256": sha256_hex(token.group(1)), "role": "service_desk", "name": "desk-bot"}
    settings = from_mapping({"admin": {"tokens": [entry]}})
    assert settings.admin.role_of(sha256_hex(token.group(1))) == ("service_desk", "desk-bot")
    with pytest.raises(SystemExit):
        main(["admin", "new-token", "--role", "root"])


def test_accounts_set_list_remove(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = "clitest"
    config = tmp_path / "pushauth.toml"
    config.write_text(f'[store]\nredis_url = "{redis_url}"\nprefix = "{prefix}"\n[keys]\nephemeral = true\n',
                      encoding="utf-8")
    base = ["-c", str(config), "admin", "accounts"]
    assert main([*base, "set", " Sam.Analyst@NHS.net ", "responder"]) == 0, capsys.readouterr().err
    # (the audit's log line goes to stdout too: the command's own output is the last line)
    assert capsys.readouterr().out.splitlines()[-1] == "sam.analyst@nhs.net: responder"
    assert main([*base, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"sam\.analyst@nhs\.net  responder  \(set by cli at \S+Z\)", listed)
    assert main([*base, "remove", "sam.analyst@nhs.net"]) == 0
    assert main([*base, "remove", "sam.analyst@nhs.net"]) == 2  # not there any more
    assert "no such console account" in capsys.readouterr().err
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(f"{prefix}:{{audit}}:stream"))
        assert [(f["what"], f["user"], f["who"]) for _, f in entries] == [
            ("console_account_set", "sam.analyst@nhs.net", "cli"),
            ("console_account_removed", "sam.analyst@nhs.net", "cli")]
    finally:
        client.delete(f"{prefix}:{{audit}}:stream", f"{prefix}:console:accounts")
        client.close()
