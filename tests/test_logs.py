"""Log output as an operator's log shipper sees it: one JSON object per line, nothing in between."""

from __future__ import annotations

import json
import subprocess
import sys


def test_n_json_log_calls_write_exactly_n_lines() -> None:
    """Run in a child process: the production configuration writes to the real stderr, and this test run's
    own structlog configuration is left alone."""
    code = ("import structlog; from pushauth.logs import configure; configure('info', 'json'); "
            "log = structlog.get_logger('t'); "
            "[log.info('line', n=n) for n in range(5)]; log.warning('last', n=5)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30)
    text = out.stderr.decode()
    lines = text.split("\n")
    assert lines[-1] == "", "the output ends with a newline"
    assert [n for n, line in enumerate(lines[:-1]) if not line.strip()] == [], f"blank lines in {text!r}"
    assert [json.loads(line)["n"] for line in lines[:-1]] == [0, 1, 2, 3, 4, 5], text
