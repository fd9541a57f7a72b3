"""The long stress scenarios, built on ``python -m mmwal.stress`` (the ``mmwal stress`` harness).

Usage::

    python stress/run_scenarios.py                     # every scenario, one after the other
    python stress/run_scenarios.py soak tiny-segments  # some of them
    python stress/run_scenarios.py --scale 0.25 all    # shorter (durations x 0.25)
    python stress/run_scenarios.py --dir /mnt/nvme/tmp contention   # on another disk
    python stress/run_scenarios.py --list

Each scenario runs the harness in a subprocess with ``--json`` (and ``--plot``
when matplotlib is installed) into ``--out`` (default ``stress/results/``) and
the script ends with a Markdown table of the results, the format of
``stress/RESULTS.md``.  The exit code is non-zero when any scenario failed; a
failed scenario keeps its store and prints its path.

Not collected by pytest: these runs take minutes each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (what it stresses, harness options).  Durations are seconds at --scale 1.
SCENARIOS: dict[str, tuple[str, list[str]]] = {
    "soak": (
        "many minutes of the default mix: 4 paced writers (mixed durability), 2 readers, "
        "a checkpoint every 4 s, a SIGKILL about every second",
        ["--duration", "480", "--writers", "4", "--readers", "2", "--checkpoint-interval", "4",
         "--kill-interval", "1", "--max-rate", "80", "--batch-size", "16"],
    ),
    "contention": (
        "12 writers flat out on one append lock (small calls, mostly per-op add), 2 readers, "
        "kills every 0.5 s",
        ["--duration", "180", "--writers", "12", "--readers", "2", "--checkpoint-interval", "3",
         "--kill-interval", "0.5", "--max-rate", "0", "--batch-size", "4", "--many-percent",
         "10"],
    ),
    "contention-paced": (
        "the same 12 writers paced at 100 calls/s each: the lock still contended, but "
        "checkpoints and readers can keep up (flat out on 2 cores they cannot)",
        ["--duration", "180", "--writers", "12", "--readers", "2", "--checkpoint-interval", "3",
         "--kill-interval", "0.5", "--max-rate", "100", "--batch-size", "4", "--many-percent",
         "10"],
    ),
    "large-batches": (
        "add_many of up to 2000 documents of dim 64 (frames of ~1 MB), kills mid-batch",
        ["--duration", "180", "--writers", "3", "--readers", "2", "--checkpoint-interval", "4",
         "--kill-interval", "0.8", "--max-rate", "1", "--batch-size", "2000", "--many-percent",
         "90", "--dim", "64"],
    ),
    "tiny-segments": (
        "4 KiB log segments: a roll (fdatasync, new segment, directory fsync) every frame or "
        "two, thousands of segments for readers and checkpoints",
        ["--duration", "180", "--writers", "4", "--readers", "2", "--checkpoint-interval", "2",
         "--kill-interval", "0.7", "--max-rate", "60", "--batch-size", "8", "--segment-bytes",
         "4096"],
    ),
    "retire-race": (
        "readers opened, killed and reopened while a checkpoint every second with "
        "keep_checkpoints=1 retires the segments and checkpoint they are reading (64 KiB "
        "segments, torn tails from writers killed mid-append, verify() during the run)",
        ["--duration", "1800", "--scenario", "retire-race", "--kill-interval", "0.2",
         "--verify-interval", "60"],
    ),
    "compaction": (
        "versions of many fragments with deletion vectors: churners replacing and removing "
        "keys, a checkpoint and a compact() (random arguments, verify() after) every second, "
        "max_fragments=4, keep_checkpoints 1..3; checkpointer and compactor killed mid-work",
        ["--duration", "600", "--scenario", "compaction"],
    ),
}


def _scaled(args: list[str], scale: float) -> list[str]:
    out = list(args)
    i = out.index("--duration")
    out[i + 1] = f"{max(5.0, float(out[i + 1]) * scale):g}"
    return out


def _plot_ok() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_one(name: str, scale: float, out: str, base_dir: str | None,
            extra: list[str]) -> dict:
    _what, args = SCENARIOS[name]
    report = os.path.join(out, f"{name}.json")
    cmd = [sys.executable, "-m", "mmwal.stress", *_scaled(args, scale), "--json", report]
    if _plot_ok():
        cmd += ["--plot", os.path.join(out, f"{name}.png")]
    if base_dir:
        cmd += ["--dir", base_dir]
    cmd += extra
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    code = subprocess.call(cmd)
    wall = time.monotonic() - t0
    try:
        with open(report) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        rep = {"ok": False, "missing_report": True}
    rep["_scenario"] = name
    rep["_exit_code"] = code
    rep["_wall_s"] = round(wall, 1)
    rep["_command"] = "python -m mmwal.stress " + " ".join(_scaled(args, scale))
    return rep


def table(reps: list[dict]) -> str:
    head = ("| scenario | verdict | run / verify (s) | writers / readers | acknowledged docs "
            "(calls) | docs/s (peak) | kills (w/r/c) | checkpoints | reader lag p50 / max | "
            "lost / phantoms / dups | final docs | verify() |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reps:
        if r.get("missing_report"):
            rows.append(f"| {r['_scenario']} | NO REPORT (exit {r['_exit_code']}) |" +
                        " |" * 10)
            continue
        s, k, rd, tp = r["settings"], r["kills_by_role"], r["readers"], r["throughput"]
        rows.append(
            f"| {r['_scenario']} | {'PASSED' if r['ok'] else 'FAILED'} | "
            f"{r['run_s']:.0f} / {r['verify_s']:.0f} | {s['writers']} / {s['readers']} | "
            f"{r['acknowledged']:,} ({r['acknowledged_ops']:,}) | "
            f"{tp['docs_per_s']:,.0f} ({tp['peak_docs_per_s']:,.0f}) | "
            f"{r['kills']} ({k.get('writer', 0)}/{k.get('reader', 0)}/"
            f"{k.get('checkpointer', 0)}) | {r['checkpoints']} | "
            f"{rd['lag_p50']:,.0f} / {rd['lag_max']:,.0f} | "
            f"{r['lost']} / {r['phantoms']} / {r['duplicates']} | {r['documents']:,} | "
            f"{'ok' if r['verify']['ok'] else 'PROBLEMS'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=["all"],
                    help=f"scenarios to run: {', '.join(SCENARIOS)} or all")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    ap.add_argument("--dir", help="where the runs create their stores (the disk under test)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="where JSON reports and plots go (default stress/results)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--seed", type=int, help="pass --seed to every run")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, opts) in SCENARIOS.items():
            print(f"{name:14} {what}\n{'':14} python -m mmwal.stress {' '.join(opts)}")
        return 0
    names = list(SCENARIOS) if "all" in args.names else args.names
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    os.makedirs(args.out, exist_ok=True)
    extra = ["--seed", str(args.seed)] if args.seed else []
    reps = [run_one(n, args.scale, args.out, args.dir, extra) for n in names]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({platform.platform()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()})\n")
    print(table(reps))
    for r in reps:
        print(f"\n- {r['_scenario']}: `{r['_command']}` (wall {r['_wall_s']} s)")
    return 0 if all(r.get("ok") for r in reps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
