"""Long power-loss and I/O-error sweeps (not collected by pytest).

    python stress/faults/run_sweeps.py [powerloss|io-errors|all] [--seeds 0 1 2] [--out DIR]

Runs :func:`mmwal._faults.run_powerloss` / :func:`run_io_errors` with
``quick=False`` (every crash point, every variant, random variants three times;
every Nth operation of every category, EIO and ENOSPC, once / persistent /
torn) for each seed, writes one JSON report per run into ``--out`` (default
``stress/faults/results``) and prints a summary line per run.  Exit status 1
if any run found a violation.  RESULTS.md beside this file records the numbers
of the last full run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from mmwal import _faults

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", default="all", choices=("powerloss", "io-errors", "all"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true", help="the quick sample instead")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = {"powerloss": _faults.run_powerloss, "io-errors": _faults.run_io_errors}
    names = list(runs) if args.which == "all" else [args.which]
    failed = False
    for seed in args.seeds:
        for name in names:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as work:
                rep = runs[name](work, quick=args.quick, seed=seed)
            dt = time.perf_counter() - t0
            path = os.path.join(args.out, f"{name}-seed{seed}{'-quick' if args.quick else ''}.json")
            with open(path, "w") as f:
                json.dump(rep, f, indent=2, sort_keys=True)
            count = rep.get("crash_states", rep.get("faults"))
            extra = (f"crash_points {rep['crash_points']} crash_states {count} strict_refusals "
                     f"{rep['strict_refusals']} writer_refusals {rep['writer_refusals']}"
                     if name == "powerloss" else
                     f"cases {rep['cases']} faults {count} poisoned {rep['poisoned']} "
                     f"in_doubt_retries {rep['in_doubt_retries']}")
            print(f"{name} seed {seed}: ok={rep['ok']} acknowledged {rep['acknowledged']} "
                  f"lost {rep['lost']} phantoms {rep['phantoms']} duplicates "
                  f"{rep['duplicates']} checkpoints {rep['checkpoints']} {extra} "
                  f"violations {rep['violation_count']} {rep['violation_counts']} "
                  f"in {dt:.0f} s -> {path}", flush=True)
            for v in rep["violations"][:5]:
                print("   ", v.splitlines()[0][:300], flush=True)
            failed |= not rep["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
