"""Draw the benchmark results as PNGs for docs/benchmarks.md.

    pip install '.[bench,plot]'
    python benchmarks/bench_log.py --json log.json
    python benchmarks/bench_read.py --json read.json
    python benchmarks/plot.py --log log.json --read read.json --out docs/img

Each bar is the median of the interleaved rounds; the whisker spans min to max.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("benchmarks/plot.py needs matplotlib: pip install 'mmwal[plot]'")
    return plt


def plot_log(path: str, out: str) -> list[str]:
    plt = _matplotlib()
    data = json.load(open(path))
    cases = data["cases"]
    written = []
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.6))
    axes = axes if len(cases) > 1 else [axes]
    for ax, (key, case) in zip(axes, cases.items()):
        names = list(case["contenders"])
        med = [case["contenders"][n]["median"] for n in names]
        lo = [m - case["contenders"][n]["min"] for n, m in zip(names, med)]
        hi = [case["contenders"][n]["max"] - m for n, m in zip(names, med)]
        colors = ["#d62728" if n == "mmwal" else "#7f7f7f" for n in names]
        ax.bar(names, med, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_title(f"{key}: {case['title']}", fontsize=8)
        ax.set_ylabel(case["unit"], fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_yscale("log")
    fig.suptitle("Log writes: medians of interleaved rounds (log scale; whiskers min-max)",
                 fontsize=9)
    fig.tight_layout()
    target = os.path.join(out, "bench_log.png")
    fig.savefig(target, dpi=110)
    written.append(target)
    return written


def plot_read(path: str, out: str) -> list[str]:
    plt = _matplotlib()
    data = json.load(open(path))
    written = []
    opens = (data.get("sections") or {}).get("open") or {}
    sizes_d = opens.get("sizes") or {}
    if sizes_d:
        sizes = sorted(int(k) for k in sizes_d)
        med = [sizes_d[str(n)]["open_s"]["median"] * 1e3 for n in sizes]
        lo = [m - sizes_d[str(n)]["open_s"]["min"] * 1e3 for n, m in zip(sizes, med)]
        hi = [sizes_d[str(n)]["open_s"]["max"] * 1e3 - m for n, m in zip(sizes, med)]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.errorbar(sizes, med, yerr=[lo, hi], fmt="o-", color="#d62728", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("checkpointed documents")
        ax.set_ylabel("open + embeddings (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title("Reader open is O(1) in store size", fontsize=9)
        fig.tight_layout()
        target = os.path.join(out, "bench_reader_open.png")
        fig.savefig(target, dpi=110)
        written.append(target)
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", help="JSON written by bench_log.py --json")
    p.add_argument("--read", help="JSON written by bench_read.py --json")
    p.add_argument("--out", default="docs/img")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    done = []
    if args.log:
        done += plot_log(args.log, args.out)
    if args.read:
        done += plot_read(args.read, args.out)
    for f in done:
        print(f)
    return 0 if done else 2


if __name__ == "__main__":
    sys.exit(main())
