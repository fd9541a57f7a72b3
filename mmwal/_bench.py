"""``mmwal bench``: a small built-in micro-benchmark that works from a pip install.

The full, side-by-side benchmarks (mmwal against a raw ceiling, SQLite and
LMDB; Reader open at 1M documents; PSS of 8 query workers) are the scripts in
the source repository's ``benchmarks/`` directory.  This one measures, in a
temporary directory, the handful of numbers a user wants first: per-op
``add`` ("os" and "fsync"), ``add_many(1000)``, Reader open, one search.
Every case runs one unmeasured warm-up round, then several rounds, and reports
the median with min and max (medians and ratios, never a single timing).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["benchmark_scripts", "run_bench"]

DIM = 384


def benchmark_scripts() -> list[str]:
    """The repository's benchmark scripts next to this package (a source checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    bdir = os.path.join(os.path.dirname(here), "benchmarks")
    return [os.path.join(bdir, n) for n in ("bench_log.py", "bench_read.py")
            if os.path.isfile(os.path.join(bdir, n))]


def _inputs(n: int) -> tuple[list[str], np.ndarray, list[str], list[dict[str, Any]]]:
    """The standard workload of DESIGN.md: ~150 B content, small metadata, 384 dims."""
    rng = np.random.default_rng(0)
    ids = [f"doc-{i}" for i in range(n)]
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    contents = [f"document {i}: " + "lorem ipsum dolor sit amet " * 5 for i in range(n)]
    metas = [{"source": f"file_{i % 100}.pdf", "page": i % 50, "tags": ["a", "b"]}
             for i in range(n)]
    return ids, vecs, contents, metas


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": values}


def run_bench(quick: bool = False, base_dir: str | None = None,
              tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every case; return {case: {"unit", "what", "median", "min", "max", "rounds"}}."""
    import mmwal

    rounds = 3 if quick else 5
    n_ops = 2_000 if quick else 20_000
    n_sync = 50 if quick else 300
    n_batches = 5 if quick else 20
    n_store = 5_000 if quick else 50_000
    ids, vecs, contents, metas = _inputs(max(n_ops, 1000 * n_batches, n_store))
    root = tempfile.mkdtemp(prefix="mmwal-bench-", dir=base_dir)
    out: dict[str, Any] = {}

    def case(name: str, unit: str, what: str, fn: Callable[[str], float]) -> None:
        if tick is not None:
            tick(name)
        vals = []
        for r in range(-1, rounds):  # round -1 warms caches and allocators, unmeasured
            path = os.path.join(root, f"{name}-{r + 1}")
            try:
                v = fn(path)
                if r >= 0:
                    vals.append(v)
            finally:
                shutil.rmtree(path, ignore_errors=True)
        out[name] = {"unit": unit, "what": what, **_summary(vals)}

    def raw(path: str) -> float:
        # The ceiling: a pre-built frame written with one os.write each, no lock.
        os.makedirs(path)
        frame = b"\0" * (32 + DIM * 4 + 200)
        fd = os.open(os.path.join(path, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            t = time.perf_counter()
            for _ in range(n_ops):
                os.write(fd, frame)
            return n_ops / (time.perf_counter() - t)
        finally:
            os.close(fd)

    def add_os(path: str) -> float:
        with mmwal.Store(path, dim=DIM, durability="os") as s:
            add = s.add
            t = time.perf_counter()
            for i in range(n_ops):
                add(ids[i], vecs[i], contents[i], metas[i])
            return n_ops / (time.perf_counter() - t)

    def add_fsync(path: str) -> float:
        with mmwal.Store(path, dim=DIM, durability="fsync") as s:
            t = time.perf_counter()
            for i in range(n_sync):
                s.add(ids[i], vecs[i], contents[i], metas[i])
            return n_sync / (time.perf_counter() - t)

    def add_many(path: str) -> float:
        with mmwal.Store(path, dim=DIM, durability="os") as s:
            t = time.perf_counter()
            for b in range(n_batches):
                sl = slice(b * 1000, (b + 1) * 1000)
                s.add_many(ids[sl], vecs[sl], contents[sl], metas[sl])
            return 1000 * n_batches / (time.perf_counter() - t)

    store = os.path.join(root, "store")
    with mmwal.Store(store, dim=DIM, durability="os") as s:
        for a in range(0, n_store, 10_000):
            sl = slice(a, min(a + 10_000, n_store))
            s.add_many(ids[sl], vecs[sl], contents[sl], metas[sl])
        s.checkpoint()

    def reader_open(_path: str) -> float:
        t = time.perf_counter()
        with mmwal.Reader(store) as r:
            _ = r.embeddings[0]
            return (time.perf_counter() - t) * 1e3

    queries = np.random.default_rng(1).standard_normal((10, DIM)).astype(np.float32)

    def search(_path: str) -> float:
        with mmwal.Reader(store) as r:
            r.search(queries[0], k=10)  # warm: first touch of the mapped pages
            times = []
            for q in queries:
                t = time.perf_counter()
                r.search(q, k=10)
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1e3

    try:
        case("raw_write", "ops/s", f"raw ceiling: os.write of a pre-built frame x {n_ops:,}", raw)
        case("add_os", "ops/s", f'Store.add, durability="os" x {n_ops:,}', add_os)
        case("add_many", "docs/s", f'Store.add_many(1000 docs), "os" x {n_batches}', add_many)
        case("add_fsync", "ops/s", f'Store.add, durability="fsync" x {n_sync}', add_fsync)
        case("reader_open", "ms", f"Reader open + embeddings ready, {n_store:,} docs "
             "checkpointed", reader_open)
        case("search", "ms", f"one exact cosine top-10 search over {n_store:,} x {DIM}",
             search)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["add_os"]["vs_raw"] = out["add_os"]["median"] / out["raw_write"]["median"]
    return out
