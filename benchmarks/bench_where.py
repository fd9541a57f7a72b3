#!/usr/bin/env python
"""Metadata filters: building columns and evaluating filters over them, against per-document.

Usage::

    python benchmarks/bench_where.py               # 1M rows (~30 s)
    python benchmarks/bench_where.py --rows 100000

Rows carry the standard workload's metadata (DESIGN.md, "Performance targets"):
``{"source": "file_{i%100}.pdf", "page": i%50, "tags": [...]}`` plus a float ``score``.
``build`` feeds them to ``ColumnBuilder`` in chunks of 100k (as a checkpoint would) and
reports ns per metadata value; each filter is then evaluated by ``compile_columns``
(best of 5) and by ``matches`` on every row, and the two results are checked equal.
Single run, in-process, page cache irrelevant (everything is in RAM).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mmwal._search import where as W

FILTERS = [
    {"source": "file_7.pdf"},
    {"page": {"$gte": 10}},
    {"$and": [{"source": {"$in": ["file_1.pdf", "file_2.pdf"]}}, {"page": {"$lt": 5}}]},
    {"score": {"$gt": 100.5}},
    {"tags": {"$exists": True}},
    {"page": {"$nin": [1, 2, 3]}},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    n = ap.parse_args().rows
    metas = [{"source": f"file_{i % 100}.pdf", "page": i % 50, "tags": ["a", "b"],
              "score": (i % 997) / 7.0} for i in range(n)]
    t = time.perf_counter()
    b = W.ColumnBuilder()
    for s in range(0, n, 100_000):
        b.add(metas[s:s + 100_000])
    cols = b.finish()
    dt = time.perf_counter() - t
    nbytes = sum(a.nbytes for kc in cols.values() for v in kc.values()
                 for a in (v if isinstance(v, tuple) else (v,)) if isinstance(a, np.ndarray))
    print(f"build   {n} rows x 4 keys: {dt:.2f} s ({dt / (4 * n) * 1e9:.0f} ns/value), "
          f"columns {nbytes / 2**20:.1f} MiB")
    print(f"{'filter':88s} {'columns':>10s} {'matches':>9s} {'hits':>8s}")
    for where in FILTERS:
        expr = W.parse(where)
        best = min(_timed(lambda e=expr: W.compile_columns(e, cols, n)) for _ in range(5))
        mask = W.compile_columns(expr, cols, n)
        t = time.perf_counter()
        py = [W.matches(expr, m) for m in metas]
        dp = time.perf_counter() - t
        assert py == mask.tolist(), where
        print(f"{str(where):88s} {best * 1e3:7.1f} ms {dp:7.2f} s {int(mask.sum()):8d}")


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
