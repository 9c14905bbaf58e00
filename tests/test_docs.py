"""The repository is all a user gets: no tracked file may point outside it, every relative link in its
Markdown resolves to a file or folder that is in it, and every #anchor to a heading of the page. And what a
deployer's commands write into the checkout (secrets among it) stays out of git."""

from __future__ import annotations

import base64
import importlib.util
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from pushauth.cli import build_parser
from pushauth.config import from_mapping
from pushauth.readiness import expected_workers

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


def test_what_a_deployment_writes_is_ignored_and_nothing_tracked_is() -> None:
    tracked_files()  # skips outside a git checkout
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching",
                              *WRITTEN_BY_A_DEPLOYER], cwd=REPO, capture_output=True, text=True,
                             timeout=30, check=False).stdout
    visible = [line.split("\t")[-1] for line in checked.splitlines() if line.startswith("::")]
    assert visible == [], f"git would offer to commit {visible}"
    hidden = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert hidden == [], f"tracked files that .gitignore would hide: {hidden}"


# -- the README's walk-through ("Running it for real") stays runnable --------------------------------------

README = REPO / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"),
                      re.MULTILINE | re.DOTALL)


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


def test_readme_config_loads_and_needs_the_workers_it_starts() -> None:
    [config] = [b for b in _blocks("toml") if "[[applications]]" in b]
    secret = "whsec_" + base64.b64encode(b"readme-walk-through-secret-0123").decode()
    filled = re.sub(r'"whsec_<[^>]*>"', f'"{secret}"', config)
    filled = filled.replace('"<the hash admin new-token printed>"', f'"{"ad" * 32}"')
    filled = filled.replace('"<the hash apps new-key printed>"', f'"{"ab" * 32}"')
    settings = from_mapping(tomllib.loads(filled))
    assert [a.name for a in settings.applications] == ["NHSmail webmail"]
    assert settings.store.redis_url
    assert expected_workers(settings) == ["expiry", "alerts"]
    assert f"{settings.server.host}:{settings.server.port}" in settings.server.base_url
