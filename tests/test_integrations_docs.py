"""The LangChain and LlamaIndex examples of docs/integrations.md run as written, offline.

Each ``python`` block under the "## LangChain" and "## LlamaIndex" headings is
run by itself in a subprocess (warnings are errors there too) and must print
what the doc's comments say.  Blocks under other headings are not this test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "integrations.md")

EXPECT = {
    "LangChain": [
        "['wal', 'ckpt']",
        "Appends are durable because of the write-ahead log.",
        "['wal', 'ckpt']",
        "{'team': 'zoo', 'page': 1}",
    ],
    "LlamaIndex": [
        "wal 0.447",
        "['walrus']",
        "walrus",
        "['wal', 'ckpt']",
    ],
}


def _blocks(heading: str) -> list[str]:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    sections = re.split(r"^## ", text, flags=re.M)
    (section,) = [s for s in sections if s.startswith(heading + "\n")]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


@pytest.mark.parametrize("heading", sorted(EXPECT))
def test_doc_example_runs_offline_and_prints_what_the_doc_says(heading, tmp_path):
    (code,) = _blocks(heading)
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == EXPECT[heading]
    for line in EXPECT[heading]:
        # The doc shows each printed line in a comment beside its print().
        assert f"# {line}" in code or line in code, line
