"""Every example in examples/ runs by itself, in a subprocess, and finishes cleanly.

Each one builds what it needs in a temporary directory and removes it; the
HTTP server example binds 127.0.0.1 on a free port and talks only to itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".py") and not n.startswith("_"))

# What each example must print when it worked (beyond exit code 0).
EXPECT = {
    "ingest_pipeline.py": "verify: ok",
    "search_server.py": "the top hit is 'doc-new'",
    "recovery_after_kill.py": "verify says ok=True",
}


def test_every_example_is_listed():
    assert sorted(EXPECT) == SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONWARNINGS="error")
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True,
                       text=True, timeout=110, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert EXPECT[script] in p.stdout, p.stdout[-3000:]
    assert "Traceback" not in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []  # temporary stores removed
