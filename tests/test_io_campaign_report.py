"""The I/O-error campaign tells in-doubt retries apart from duplicates.

A write whose fsync failed may or may not be in the log; the workload retries
it as a caller would, and replay may then show the document twice.  That is an
in-doubt retry, reported under its own key; ``duplicates`` counts only copies
the store made by itself and must be 0.
"""

from __future__ import annotations

import errno
from typing import Any

from mmwal import _faults


def test_in_doubt_retries_are_not_duplicates(tmp_path: Any) -> None:
    in_doubt = 0
    dry = tmp_path / "dry"
    dry.mkdir()
    total = _faults.run_io_case(str(dry), None, 0, 0, persistent=False)[1].counts["fsync"]
    # The last fsyncs of the workload: log fsyncs of adds after the last
    # checkpoint, so that replay still shows both copies of a retried record.
    for n in range(total - 7, total + 1):
        case = tmp_path / f"c{n}"
        case.mkdir()
        r, layer = _faults.run_io_case(str(case), "fsync", n, errno.EIO, persistent=False)
        assert layer.faults and not r.violations, r.violations
        assert r.duplicates == 0, f"fsync#{n}: an in-doubt retry counted as a duplicate"
        assert r.in_doubt_retries >= 0
        in_doubt += r.in_doubt_retries
    assert in_doubt > 0  # the sample does contain retried in-doubt records


def test_report_has_an_in_doubt_section(tmp_path: Any) -> None:
    rep = _faults.run_io_errors(str(tmp_path), quick=True, seed=0, categories=("fsync",),
                                errnos=(errno.EIO,), per_category=6)
    assert rep["ok"], rep["violations"][:3]
    assert rep["duplicates"] == 0
    sec = rep["in_doubt"]
    assert rep["in_doubt_retries"] == sec["records"] > 0
    assert 0 < sec["cases"] <= rep["cases"]
    assert sum(sec["by_fault"].values()) == sec["records"]
    assert sec["examples"] and all("fsync#" in e for e in sec["examples"])
    full = _faults.stress_report(rep)
    assert full["in_doubt"] == sec and full["duplicates"] == 0
