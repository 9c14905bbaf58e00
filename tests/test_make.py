"""The README's test command (`make test`) installs everything the suite needs, and CI (`.ci/run`) runs
exactly that command and fails when a test fails."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from browser import CHROMIUM
from conftest import INTEGRATION_TESTS, NO_SKIP_ENV, SLOW_TESTS

REPO = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")

needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")


@needs_make
def test_make_test_installs_redis_and_chromium_before_the_suite() -> None:
    assert MAKE is not None
    planned = subprocess.run([MAKE, "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
    # each step's command, after any VAR=value the line sets for it
    steps = [next(word for word in line.split() if "=" not in word) for line in planned if line.strip()]
    assert "scripts/ensure-redis" in steps, planned
    assert "scripts/ensure-chromium" in steps, planned
    pytest_at = next(i for i, step in enumerate(steps) if step.endswith("/pytest"))
    assert steps.index("scripts/ensure-redis") < pytest_at
    assert steps.index("scripts/ensure-chromium") < pytest_at


def test_ensure_chromium_finds_the_browser_the_tests_drive() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: this test does not install packages (make test does)")
    result = subprocess.run([str(REPO / "scripts" / "ensure-chromium")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"found {CHROMIUM}" in result.stdout


@needs_make
def test_ci_runs_make_test_and_fails_when_a_test_fails(tmp_path: Path) -> None:
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails() -> None:\n    assert 1 == 2\n", encoding="utf-8")
    # Without the outer make's MAKEFLAGS: `make test PYTEST_ARGS=...` passes its variables to sub-makes there,
    # which would override this run's PYTEST_ARGS and start the whole suite again.
    env = {name: value for name, value in os.environ.items()
           if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTEST_ARGS"] = f"{failing} -p no:cacheprovider"
    result = subprocess.run([str(REPO / ".ci" / "run")], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=300, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "==> make test" in out
    assert "1 failed" in out  # the failure is the test's, not a broken CI script
    assert "ensure-chromium: found" in out  # make test, not CI, made sure of the browser
    assert "==> make lint" not in out
    assert "CI passed" not in out


@needs_make
def test_make_test_turns_a_skip_into_a_failure(tmp_path: Path) -> None:
    """Under `make test` (CI) a test that skips because a peer is missing fails the run: a skipped push
    sandbox or directory test would otherwise let its feature rot unseen. Run alone, a skip stays a skip."""
    assert MAKE is not None
    planned = subprocess.run([MAKE, "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True,
                             timeout=60).stdout
    assert f"{NO_SKIP_ENV}=1 " in planned, planned
    skipping = tmp_path / "test_skips.py"
    skipping.write_text("import pytest\n\ndef test_ok() -> None:\n    pass\n\n"
                        "def test_no_peer() -> None:\n    pytest.skip('no peer here')\n", encoding="utf-8")
    pytest_bin = REPO / ".venv" / "bin" / "pytest"
    args = [str(pytest_bin), "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
            "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"),
            "--confcutdir", str(REPO / "tests"), "-p", "conftest", str(skipping)]
    env = {name: value for name, value in os.environ.items() if name != NO_SKIP_ENV}
    env["PYTHONPATH"] = str(REPO / "tests")
    alone = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    strict = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**env, NO_SKIP_ENV: "1"},
                            timeout=120, check=False)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "test_no_peer: Skipped: no peer here" in strict.stdout


def test_every_test_the_markers_name_exists() -> None:
    """SLOW_TESTS and INTEGRATION_TESTS name tests by file and function: a misspelt or renamed one would
    silently put a slow test back in `make test-fast`."""
    for named in sorted(SLOW_TESTS | INTEGRATION_TESTS):
        file, function = named.split("::")
        tree = ast.parse((REPO / "tests" / file).read_text(encoding="utf-8"))
        functions = {node.name for node in tree.body
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert function in functions, f"{named}: no such test"
