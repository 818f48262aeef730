"""The JavaScript suites (`node --test tests/js/`) run as part of the one test command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_node_suites_pass():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (20 or newer) is needed for tests/js; install Debian's nodejs", pytrace=False)
    files = sorted(str(p) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
    assert files, "no JavaScript tests found"
    # The interop suite's Python steps must use this interpreter (a venv's), not whatever
    # `python3` is first on PATH.
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run([node, "--test", *files], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=env)
    summary = [line for line in result.stdout.splitlines() if line.startswith(("# pass", "# fail", "# tests"))]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert any(line.startswith("# pass") and int(line.split()[-1]) > 0 for line in summary), summary
