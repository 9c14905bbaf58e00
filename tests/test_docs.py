"""The repository is all a user gets: no tracked file may point outside it, every relative link in its
Markdown resolves to a file or folder that is in it, and every #anchor to a heading of the page. And what a
deployer's commands write into the checkout (secrets among it) stays out of git. The README's walk-through
("Running it for real") is checked against the code it describes: the CLI's parser, the worker modules, the
API's request bodies and the settings its config.toml loads into."""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import pkgutil
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

import workers
from pushauth.cli import build_parser, enroll_cmd
from pushauth.config import Settings, from_mapping
from pushauth.errors import ConfigError
from pushauth.readiness import expected_workers
from pushauth.runtime.worker import Worker
from pushauth.web.openapi import OPERATIONS

REPO = Path(__file__).resolve().parent.parent
# Spelt in two parts so that this file does not match itself.
OUTSIDE = ".." + "/shared"
# [text](target) with a relative target: not a URL, not a bare #anchor, not mailto:.
MD_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")
MD_ANCHOR = re.compile(r"\]\(#([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                             timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [REPO / name for name in out.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # binary (an image), or deleted in the work tree but not yet in the index


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for path in tracked_files() if (text := _text(path)) is not None
                 for n, line in enumerate(text.splitlines(), 1) if OUTSIDE in line]
    assert offenders == [], "these point at files a clone of the repository does not have:\n" + "\n".join(
        offenders)


def test_relative_markdown_links_resolve_inside_the_repository() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md" or (text := _text(path)) is None:
            continue
        for target in MD_LINK.findall(text):
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert broken == [], "links to nothing in the repository:\n" + "\n".join(broken)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but "-" and "_" dropped, spaces to "-"."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchor_links_name_a_heading_of_their_page() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md" or (text := _text(path)) is None:
            continue
        slugs = {_slug(h) for h in HEADING.findall(text)}
        broken += [f"{path.relative_to(REPO)}: #{a}" for a in MD_ANCHOR.findall(text) if a not in slugs]
    assert broken == [], "anchors that name no heading:\n" + "\n".join(broken)


# What the README's commands write into a checkout: settings, the phone simulator's state (a private key),
# enrollment QR codes (a one-time code each), the signing keys, a redis-server's files.
WRITTEN_BY_A_DEPLOYER = ["config.toml", "phone.json", "alice-phone.json", "alice.svg", "alice.png",
                         "keys/Ab3example.pem", "dump.rdb", "appendonlydir/appendonly.aof.1.base.rdb"]


def _not_ignored(paths: list[str]) -> list[str]:
    """Those of `paths` (relative to the checkout) that git would offer to commit."""
    tracked_files()  # skips outside a git checkout
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *paths],
                             cwd=REPO, capture_output=True, text=True, timeout=30, check=False).stdout
    return [line.split("\t")[-1] for line in checked.splitlines() if line.startswith("::")]


def test_what_a_deployment_writes_is_ignored_and_nothing_tracked_is() -> None:
    visible = _not_ignored(WRITTEN_BY_A_DEPLOYER)
    assert visible == [], f"git would offer to commit {visible}"
    hidden = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert hidden == [], f"tracked files that .gitignore would hide: {hidden}"


# -- the README's walk-through ("Running it for real") stays runnable --------------------------------------

README = REPO / "README.md"


def _blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8") if text is None
                      else text, re.MULTILINE | re.DOTALL)


def test_readme_commands_parse() -> None:
    """Every `pushauth ...` command in the README's shell blocks is one the CLI accepts, and every
    `python -m workers.X` names a worker module, so the commands cannot drift from the code."""
    checked = 0
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words.pop(0)  # VAR=value before the command
            words = [w for w in words if w != "&"]
            if words[:1] == ["pushauth"]:
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"README: the CLI refuses {line.strip()!r}")
                checked += 1
            elif words[:2] == ["python", "-m"] and words[2].startswith("workers."):
                assert importlib.util.find_spec(words[2]) is not None, line
                checked += 1
    assert checked >= 15


def _readme_settings() -> Settings:
    """The walk-through's config.toml, with what its commands print filled in."""
    [config] = [b for b in _blocks("toml") if "[[applications]]" in b]
    secret = "whsec_" + base64.b64encode(b"readme-walk-through-secret-0123").decode()
    filled = re.sub(r'"whsec_<[^>]*>"', f'"{secret}"', config)
    filled = filled.replace('"<the hash admin new-token printed>"', f'"{"ad" * 32}"')
    filled = filled.replace('"<the hash apps new-key printed>"', f'"{"ab" * 32}"')
    return from_mapping(tomllib.loads(filled))


def test_readme_config_loads_and_needs_the_workers_it_starts() -> None:
    settings = _readme_settings()
    assert [a.name for a in settings.applications] == ["NHSmail webmail"]
    assert settings.store.redis_url
    assert expected_workers(settings) == ["expiry", "alerts"]
    assert f"{settings.server.host}:{settings.server.port}" in settings.server.base_url


# -- what issue 14 (item 15) found missing from the walk-through ---------------------------------------------

WALK_THROUGH = "Running it for real"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


@dataclass(frozen=True)
class Command:
    env: dict[str, str]  # VAR=value before the command
    words: list[str]
    background: bool  # ended by "&"
    block: str  # the ```sh block it is in


def _commands(text: str, *, commented: bool = False) -> list[Command]:
    """The commands of the sh blocks in `text`, in order, one per step of a `&&` chain. With `commented`,
    instead the alternatives the blocks give in comments ("#   redis-server ...")."""
    found = []
    for block in _blocks("sh", text):
        for line in block.replace("\\\n", " ").splitlines():
            if commented != line.lstrip().startswith("#"):
                continue
            try:
                words = shlex.split(line.lstrip().lstrip("#") if commented else line, comments=True)
            except ValueError:
                continue  # prose in a comment
            while words:
                cut = next((i for i, w in enumerate(words) if w in ("&&", "&", ";")), len(words))
                step, sep, words = words[:cut], words[cut:cut + 1], words[cut + 1:]
                env = {}
                while step and re.fullmatch(r"[A-Z_]+=.*", step[0]):
                    name, value = step.pop(0).split("=", 1)
                    env[name] = value
                if step or env:
                    found.append(Command(env, step, sep == ["&"], block))
    return found


def _option(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]


def _pushauth(commands: list[Command]) -> list[tuple[Command, argparse.Namespace]]:
    return [(c, build_parser().parse_args(c.words[1:])) for c in commands if c.words[:1] == ["pushauth"]]


def test_the_walk_through_keeps_redis_on_aof_where_the_config_points() -> None:
    """Enrolled phones, locks and queued alerts live in Redis: the walk-through turns AOF on and keeps it on
    (Debian's package has it off), or starts redis-server with it, on the address config.toml names."""
    section = _section(WALK_THROUGH)
    commands = _commands(section)
    steps = [c.words for c in commands]
    assert ["redis-cli", "config", "set", "appendonly", "yes"] in steps
    assert ["redis-cli", "config", "rewrite"] in steps  # written to redis.conf: kept across a restart
    serve = next(c for c, args in _pushauth(commands) if args.command == "serve")
    assert steps.index(["redis-cli", "config", "rewrite"]) < commands.index(serve)  # before the server
    store = urlsplit(_readme_settings().store.redis_url)
    # redis-cli with no -h or -p talks to 127.0.0.1:6379: the Redis config.toml uses
    assert (store.hostname, store.port or 6379) == ("127.0.0.1", 6379)
    [server] = [c.words for c in _commands(section, commented=True) if c.words[:1] == ["redis-server"]]
    options = dict(zip(server[1::2], server[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert (options["--bind"], int(options["--port"])) == (store.hostname, store.port or 6379)


def test_the_walk_through_starts_the_server_and_every_worker() -> None:
    """Without the alert worker no alert leaves, and nothing said so: the walk-through starts every worker
    there is (each module of workers/ that declares a Worker), with the server's own settings."""
    commands = _commands(_section(WALK_THROUGH))
    [(serve, serve_args)] = [(c, args) for c, args in _pushauth(commands) if args.command == "serve"]
    assert serve.background
    assert serve_args.config is not None
    started = set()
    for command in commands:
        if command.words[:2] != ["python", "-m"] or not command.words[2].startswith("workers."):
            continue
        worker = importlib.import_module(command.words[2]).WORKER
        parser = argparse.ArgumentParser()
        worker.add_arguments(parser)
        args = parser.parse_args(command.words[3:])
        assert args.config == serve_args.config, command.words  # the same deployment as the server
        assert command.background, command.words
        started.add(worker.kind)
    declared = {module.WORKER.kind for info in pkgutil.iter_modules(workers.__path__)
                if isinstance(getattr(module := importlib.import_module(f"workers.{info.name}"), "WORKER",
                                      None), Worker)}
    assert started == declared == {"push", "alerts", "expiry"}
    assert set(expected_workers(_readme_settings())) <= started


def test_the_walk_through_creates_a_challenge_with_curl_and_answers_its_number() -> None:
    """A first `curl` for POST /v1/challenges, against the server config.toml describes, with a body the API
    accepts; the answer it shows has the number, and the simulated phone approves with that number."""
    settings = _readme_settings()
    commands = _commands(_section(WALK_THROUGH))
    [post] = [c for c in commands if c.words[:1] == ["curl"] and _option(c.words, "-X") == ["POST"]]
    [url] = [w for w in post.words if w.startswith("http")]
    assert url == settings.server.base_url + "/v1/challenges"
    [operation] = [op for op in OPERATIONS if (op.method, op.path) == ("POST", "/v1/challenges")]
    headers = dict(h.split(": ", 1) for h in _option(post.words, "-H"))
    assert headers["Authorization"] == "Bearer $API_KEY"
    assert any("API_KEY" in c.env for c in commands[:commands.index(post)])  # set before it is used
    assert headers["Content-Type"] == "application/json"
    assert operation.body is not None
    [data] = _option(post.words, "-d")
    msgspec.json.decode(data, type=operation.body)  # unknown or missing fields would be a 422

    # The answer, shown in the comment under it, carries the number the login page shows
    answer_line = next(line for line in post.block.splitlines() if line.startswith("# {"))
    answer, end = json.JSONDecoder().raw_decode(answer_line[2:])
    assert answer["status"] == "pending"
    assert f'shows "{answer["number"]}"' in answer_line[2 + end:]
    # and the simulated phone answers that challenge with that number; the waiting curl asks for it
    sign_in = [c for c in commands if c.block == post.block]
    [(_command, approve)] = [(c, args) for c, args in _pushauth(sign_in)
                             if args.command == "phone" and args.phone_command == "approve"]
    assert (approve.id, approve.number) == (answer["id"], answer["number"])
    [wait] = [c for c in sign_in if c.words[:1] == ["curl"] and c is not post]
    [wait_url] = [w for w in wait.words if w.startswith("http")]
    assert wait_url.startswith(f"{settings.server.base_url}/v1/challenges/{answer['id']}?wait=")


def test_the_walk_through_enrolls_through_the_server_with_the_admin_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`enroll --server` needs an admin token in PUSHAUTH_ADMIN_TOKEN: the walk-through sets it, under the
    name the CLI reads (without it the command refuses before any request)."""
    commands = _commands(_section(WALK_THROUGH))
    [(remote, args)] = [(c, args) for c, args in _pushauth(commands)
                        if args.func is enroll_cmd.run and args.server]
    assert args.server == _readme_settings().server.base_url
    assert "admin new-token" in remote.env["PUSHAUTH_ADMIN_TOKEN"]  # says where the token comes from
    monkeypatch.delenv("PUSHAUTH_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PUSHAUTH_ADMIN_TOKEN"):
        args.func(args)


def test_what_the_walk_through_writes_is_ignored() -> None:
    """The files the walk-through's own commands write into the checkout: the config (API key hashes,
    Redis passwords), the phone's state (its private key) and the enrollment QR codes (a one-time code
    each, as --svg or --png)."""
    written: dict[str, set[str]] = {"config": set(), "phone": set(), "image": set()}
    for _command, args in _pushauth(_commands(_section(WALK_THROUGH))):
        if args.config is not None:
            written["config"].add(str(args.config))
        if args.command == "phone":
            written["phone"].add(str(args.state))
        for image in (getattr(args, "svg", None), getattr(args, "png", None)):
            if image is not None:  # the CLI writes either kind: both must be ignored
                written["image"] |= {str(image.with_suffix(".svg")), str(image.with_suffix(".png"))}
    assert all(written.values()), written
    assert {"config.toml", "phone.json"} <= written["config"] | written["phone"]
    visible = _not_ignored(sorted(set().union(*written.values())))
    assert visible == [], f"git would offer to commit {visible}"
