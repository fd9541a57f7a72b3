#!/usr/bin/env python
"""LangChain add_texts and similarity_search: mmwal against Chroma and LanceDB, one run.

Usage::

    python benchmarks/bench_langchain.py                      # 5000 texts, 200 queries
    python benchmarks/bench_langchain.py --docs 20000 --queries 500 --json out.json

Method: ``--docs`` texts of ~150 bytes (``document {i}: lorem ipsum ...``) with
metadata ``{"source": "file_{i%100}.pdf", "page": i%50}`` and ids ``doc-{i}``,
and ``--queries`` query strings.  Every text and query has a seeded random
384-dim float32 unit vector computed beforehand; the ``Embeddings`` given to every
store looks them up in a dict, so embedding costs next to nothing and the same
for all.  Each contender gets a fresh temporary directory and one store built
through its LangChain integration; ``add_texts`` is timed in calls of
``--batch`` texts (documents/s), then ``similarity_search(query, k=10)`` once
per query (queries/s).  The rounds are interleaved (round 1 of every contender,
then round 2, ...), so the load of a shared machine falls on all of them;
medians are reported, with the ratio to mmwal (fsync).  The stores are set
to cosine distance (LanceDB's LangChain wrapper searches by l2 whatever its
``distance``; on unit vectors both rank the same).  Contenders:

- ``mmwal.langchain.MmwalVectorStore`` with ``durability="fsync"`` (default:
  every ``add_texts`` is on stable storage when it returns) and ``"os"``;
- ``langchain_chroma.Chroma`` (package ``langchain-chroma``) with
  ``persist_directory`` (chromadb's PersistentClient; HNSW, approximate);
- ``langchain_community.vectorstores.LanceDB`` (packages ``langchain-community``
  and ``lancedb``) on a local directory, ``mode="append"`` (its default
  ``"overwrite"`` makes each ``add_texts`` replace the table), no vector index
  (a flat, exact scan).

A contender that does not import or fails is reported as skipped, with the
reason.  "top-10 overlap" is the mean fraction of a contender's results that
are also in mmwal's exact top 10 (round 1), as a check that all answered the
same question; an approximate index may score below 1.
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
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402


class LookupEmbeddings(Embeddings):
    """Returns precomputed vectors: the embedding cost is a dict lookup."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


def workload(n: int, dim: int, nq: int) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 3
    texts = [f"document {i}: {filler}"[:150] for i in range(n)]
    queries = [f"query {j}: what does document {j * 7 % max(n, 1)} say?" for j in range(nq)]
    vecs = rng.standard_normal((n + nq, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)  # cosine and l2 rank alike
    # lists of Python floats, as a real Embeddings returns them
    table = dict(zip(texts + queries, vecs.tolist(), strict=True))
    return {"texts": texts, "ids": [f"doc-{i}" for i in range(n)],
            "metas": [{"source": f"file_{i % 100}.pdf", "page": i % 50} for i in range(n)],
            "queries": queries, "emb": LookupEmbeddings(table)}


# Each maker: (directory, embeddings) -> (store, count(), close()).
Maker = Callable[[str, Embeddings], tuple[VectorStore, Callable[[], int], Callable[[], None]]]


def make_mmwal(durability: str) -> Maker:
    def make(d: str, emb: Embeddings) -> tuple[VectorStore, Callable[[], int], Callable[[], None]]:
        import mmwal
        from mmwal.langchain import MmwalVectorStore

        path = os.path.join(d, "store")
        vs = MmwalVectorStore(path, emb, dim=384, durability=durability)

        def count() -> int:
            with mmwal.Reader(path) as r:
                return len(r)
        return vs, count, vs.close
    return make


def make_chroma(d: str, emb: Embeddings) -> tuple[VectorStore, Callable[[], int],
                                                  Callable[[], None]]:
    from chromadb.config import Settings
    from langchain_chroma import Chroma

    vs = Chroma(collection_name="bench", embedding_function=emb, persist_directory=d,
                collection_metadata={"hnsw:space": "cosine"},
                client_settings=Settings(anonymized_telemetry=False, is_persistent=True,
                                         persist_directory=d))

    def close() -> None:
        c = getattr(vs._client, "close", None)
        if c is not None:
            c()
    return vs, lambda: int(vs._collection.count()), close


def make_lancedb(d: str, emb: Embeddings) -> tuple[VectorStore, Callable[[], int],
                                                   Callable[[], None]]:
    import lancedb
    with warnings.catch_warnings():  # langchain-community warns that it is being sunset
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.vectorstores import LanceDB

    conn = lancedb.connect(d)
    vs = LanceDB(connection=conn, embedding=emb, table_name="bench", mode="append",
                 distance="cosine")

    def count() -> int:
        t = vs.get_table()
        return 0 if t is None else int(t.count_rows())
    return vs, count, lambda: None


def run_case(make: Maker, w: dict[str, Any], batch: int) -> tuple[dict[str, float],
                                                                 list[set[str]]]:
    d = tempfile.mkdtemp(prefix="bench-langchain-")
    try:
        vs, count, close = make(d, w["emb"])
        texts, ids, metas = w["texts"], w["ids"], w["metas"]
        n = len(texts)
        t0 = time.perf_counter()
        for a in range(0, n, batch):
            vs.add_texts(texts[a:a + batch], metas[a:a + batch], ids=ids[a:a + batch])
        add_s = time.perf_counter() - t0
        got = count()
        if got != n:
            raise RuntimeError(f"holds {got} documents after adding {n}")
        answers = []
        t0 = time.perf_counter()
        for q in w["queries"]:
            answers.append(vs.similarity_search(q, k=10))
        query_s = time.perf_counter() - t0
        if any(len(a) != 10 for a in answers):
            raise RuntimeError("a similarity_search returned fewer than 10 documents")
        close()
        return ({"docs_per_s": n / add_s, "queries_per_s": len(answers) / query_s},
                [{doc.page_content for doc in a} for a in answers])
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=1000, help="texts per add_texts call")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    w = workload(args.docs, args.dim, args.queries)
    cases: dict[str, Maker] = {
        "mmwal fsync": make_mmwal("fsync"),
        "mmwal os": make_mmwal("os"),
        "Chroma (langchain-chroma)": make_chroma,
        "LanceDB (langchain-community)": make_lancedb,
    }
    results: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    overlap: dict[str, float] = {}
    reference: list[set[str]] | None = None
    for r in range(args.rounds):
        for name, make in cases.items():  # interleaved: machine load hits every case
            if name in skipped:
                continue
            try:
                got, answers = run_case(make, w, args.batch)
            except Exception as exc:  # a contender that does not install or work
                skipped[name] = f"{type(exc).__name__}: {exc}"
                results.pop(name, None)
                print(f"round {r + 1} {name}: skipped ({skipped[name]})", file=sys.stderr)
                continue
            if r == 0:
                if reference is None:
                    reference = answers
                overlap[name] = statistics.fmean(
                    len(a & b) / 10 for a, b in zip(answers, reference, strict=True))
            for k, v in got.items():
                results.setdefault(name, {}).setdefault(k, []).append(v)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:,.0f}"
                                                        for k, v in got.items()),
                  file=sys.stderr)
    print(f"\n{args.docs} texts x {args.dim} dims, add_texts of {args.batch}, "
          f"{args.queries} similarity_search(k=10), median of {args.rounds} (min-max)\n")
    print("| store | add_texts docs/s | vs mmwal fsync | similarity_search queries/s "
          "| vs mmwal fsync | top-10 overlap |")
    print("|---|---|---|---|---|---|")
    base = {k: statistics.median(v) for k, v in results.get("mmwal fsync", {}).items()}
    for name, res in results.items():
        cells = []
        for k in ("docs_per_s", "queries_per_s"):
            v = res[k]
            m = statistics.median(v)
            cells.append(f"{m:,.0f} ({min(v):,.0f}-{max(v):,.0f})")
            cells.append(f"{m / base[k]:.2f}x" if k in base else "-")
        print(f"| {name} | " + " | ".join(cells) + f" | {overlap[name]:.2f} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} | | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "overlap": overlap,
                       "skipped": skipped}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
