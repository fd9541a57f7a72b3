"""Tally the damage matrix of tests/test_damage_matrix.py: outcome per file kind.

    python stress/faults/damage_summary.py

Prints, for each file kind, how many of the 12 cases ({truncate, junk, zeros}
x {0, 30, 60, 90 %}) were harmless, detected, a clean shorter log ("prefix"),
or left the file unchanged; every case also runs the test's assertions.  Then,
per kind, what a checkpoint run over the damaged store did: refused (nothing
published), kept exactly what strict reads served, or left damage verify
still reports.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

import test_damage_matrix as M  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        p = M.Pristine(os.path.join(d, "pristine"))
        rows: dict[str, Counter[str]] = {}
        n = 0
        for kind in M.KINDS:
            rows[kind] = Counter()
            for how in M.HOWS:
                for pct in M.WHERE:
                    out = M.run_case(p, os.path.join(d, f"case{n}"), kind, how, pct)
                    rows[kind][out] += 1
                    n += 1
    cols = ("harmless", "detected", "prefix", "unchanged")
    print("| file | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for kind, c in rows.items():
        print(f"| {kind} | " + " | ".join(str(c[x]) for x in cols) + " |")
    print(f"{n} cases, all assertions passed")
    print()
    print("Then a checkpoint over the damaged store (Config(recovery='skip-bad')), and verify:")
    cols = ("refused", "exact", "reported")
    print("| file | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for kind, c in M.CHECKPOINT_OVER.items():
        print(f"| {kind} | " + " | ".join(str(c[x]) for x in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
