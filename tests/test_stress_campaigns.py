"""`mmwal stress --scenario powerloss|io-errors --quick` through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("scenario,key", [("powerloss", "crash_states"), ("io-errors", "faults")])
def test_campaign_scenarios_report_clean(tmp_path, scenario, key):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mmwal", "stress", "--scenario", scenario, "--quick",
         "--seed", "7", "--dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads(out.read_text())
    for k in ("ok", "acknowledged", "lost", "phantoms", "duplicates", "kills", "checkpoints",
              "violations", "throughput", "settings"):
        assert k in rep, k
    assert rep["ok"] is True and rep["violations"] == []
    assert rep["lost"] == 0 and rep["phantoms"] == 0
    assert rep["acknowledged"] > 0 and rep[key] > 0
    assert "PASSED" in proc.stdout
