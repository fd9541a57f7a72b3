#!/usr/bin/env python
"""Add and query throughput: chromadb's PersistentClient against mmwal.chroma, one run.

Usage::

    python benchmarks/bench_chroma.py                 # 10k docs, 384 dims (~1-2 min)
    python benchmarks/bench_chroma.py --quick         # 2k docs
    python benchmarks/bench_chroma.py --docs 20000 --batch 100 --queries 500 --json out.json

Method: the standard workload (ids ``doc-{i}``, ~150 bytes of content, metadata
``{"source": "file_{i%100}.pdf", "page": i%50}``, seeded random 384-dim float32
vectors, generated beforehand) is added through ``Collection.add`` in batches of
``--batch`` into a fresh client in a temporary directory, one process, for:
chromadb 1.x ``PersistentClient`` (its defaults; ``hnsw:space`` cosine),
``mmwal.chroma`` with ``durability="fsync"`` (its default: every add is on stable
storage when it returns) and with ``durability="os"``.  Then ``--queries`` single
queries (``n_results=10``, include the defaults: metadatas, documents, distances),
and the same number with ``where={"source": ...}``.  Each case runs ``--rounds``
times (fresh directory each time); medians are reported, with min and max.
Chroma's query is approximate (HNSW), mmwal's exact: the numbers compare the API
calls an application makes, not the same algorithm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mmwal.chroma as mc  # noqa: E402


def workload(n: int, dim: int, nq: int) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 3
    return {
        "ids": [f"doc-{i}" for i in range(n)],
        "vecs": rng.standard_normal((n, dim)).astype(np.float32),
        "docs": [f"document {i}: {filler}"[:150] for i in range(n)],
        "metas": [{"source": f"file_{i % 100}.pdf", "page": i % 50} for i in range(n)],
        "queries": rng.standard_normal((nq, dim)).astype(np.float32),
    }


def chroma_client(path: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path, settings=Settings(anonymized_telemetry=False))


def run_case(make: Callable[[str], Any], w: dict[str, Any], batch: int) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="bench-chroma-")
    try:
        client = make(d)
        col = client.create_collection("bench", metadata={"hnsw:space": "cosine"},
                                       embedding_function=None)
        n = len(w["ids"])
        t0 = time.perf_counter()
        for a in range(0, n, batch):
            b = min(n, a + batch)
            col.add(ids=w["ids"][a:b], embeddings=w["vecs"][a:b], documents=w["docs"][a:b],
                    metadatas=w["metas"][a:b])
        add_s = time.perf_counter() - t0
        assert col.count() == n
        qs = w["queries"]
        t0 = time.perf_counter()
        for q in qs:
            r = col.query(query_embeddings=[q], n_results=10)
            assert len(r["ids"][0]) == 10
        query_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, q in enumerate(qs):
            col.query(query_embeddings=[q], n_results=10,
                      where={"source": f"file_{i % 100}.pdf"})
        where_s = time.perf_counter() - t0
        close = getattr(client, "close", None)
        if close is not None:
            close()
        return {"add_docs_per_s": n / add_s, "queries_per_s": len(qs) / query_s,
                "where_queries_per_s": len(qs) / where_s}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.rounds = 2000, 50, 1
    w = workload(args.docs, args.dim, args.queries)
    cases: dict[str, Callable[[str], Any]] = {
        "chromadb PersistentClient": chroma_client,
        "mmwal.chroma fsync": lambda p: mc.PersistentClient(p),
        "mmwal.chroma os": lambda p: mc.PersistentClient(p, durability="os"),
    }
    results: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for name, make in cases.items():  # interleaved: machine load hits every case
            got = run_case(make, w, args.batch)
            for k, v in got.items():
                results.setdefault(name, {}).setdefault(k, []).append(v)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:,.0f}"
                                                        for k, v in got.items()),
                  file=sys.stderr)
    print(f"\n{args.docs} docs x {args.dim} dims, batches of {args.batch}, {args.queries} "
          f"queries, n_results=10, median of {args.rounds} (min-max)\n")
    print("| client | add docs/s | queries/s | queries/s with where |")
    print("|---|---|---|---|")
    for name, res in results.items():
        cells = []
        for k in ("add_docs_per_s", "queries_per_s", "where_queries_per_s"):
            v = res[k]
            cells.append(f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
