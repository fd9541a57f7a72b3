#!/usr/bin/env python
"""Search at scale: the per-fragment ANN index against exact search, LanceDB and Chroma.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_ann.py --json benchmarks/results/ann.json \\
        --plot docs/img/bench_ann.png                   # 100k and 1M x 384 (the 1M
                                                        # index alone: tens of minutes
                                                        # on 2 loaded cores)
    python benchmarks/bench_ann.py --large-dim 128 --ann-repeats 1   # 1M at dim 128:
                                                        # 20 min here at load 5-8
    python benchmarks/bench_ann.py --quick              # smoke run, tiny sizes (~1 min)
    python benchmarks/bench_ann.py --sizes 100k --no-chroma --dim 128

Data: a Gaussian mixture (never uniform noise, on which ANN measures nothing):
``--centers`` centers drawn from N(0, I) in ``--dim`` dimensions, each row a center
picked uniformly at random plus ``--sigma`` x N(0, I); float32.  The queries are fresh
draws of the same mixture (not rows of the store), the same queries for every system.
Metadata per row: ``{"cat10": r % 10, "cat1000": r % 1000}`` with r a random draw
independent of the cluster, so ``{"cat10": 3}`` keeps 10 % of the rows and
``{"cat1000": 7}`` 0.1 %.  Ids ``doc-{i}``, no content.

Per size (default 100k and 1M), in one run:

build     ``add_many`` of batches of 10k into a store (durability "os"), then the
          log is checkpointed on fresh copies: with ``Config(ann_min_rows=0)`` (no
          index) and with ``Config(ann_min_rows=--ann-min-rows)`` (the fragment gets
          ``ann.usearch``).  Index build time = the difference of the medians; its
          share = that / the checkpoint with the index.
search    recall@10 of ``Reader.search(q, k=10)`` (auto: the index) against
          ``exact=True`` (the ground truth), and queries/s for single queries and for
          batches of ``--batch``, at each ``--expansions`` value; exact queries/s
          beside.  Target at the largest size: recall@10 >= 0.95 at >= 20x the exact
          queries/s.
filter    ``where={"cat10": 3}`` (10 %) and ``{"cat1000": 7}`` (0.1 %): recall of the
          auto search against ``exact=True`` with the same filter, and latency.
lance     LanceDB on the same rows: flat (exact) search, then an IVF_PQ index
          (cosine, sqrt(n) partitions, dim/8 sub-vectors) at several nprobes /
          refine_factor settings: recall@10 against mmwal exact, single-query QPS.
chroma    chromadb PersistentClient (HNSW, cosine, its defaults) up to
          ``--chroma-max`` rows: build time, recall@10, single and batch QPS.
pss       (largest size) 8 worker processes each open a Reader, run one exact
          search (every page of embeddings.npy is touched) and the queries through
          the index; summed PSS (/proc/PID/smaps_rollup) against index file +
          embeddings file.  Target ~1x each: shared mappings.

Timed numbers are medians of ``--repeats`` runs (default 3) after one warm-up,
except the 1M checkpoint with the index (``--ann-repeats``, default 1 at >= 1M: one
build takes minutes on 2 cores).  --data is deleted at the end unless --keep.
"""

from __future__ import annotations

import os

# Pin BLAS to one thread unless the caller chose (as the other benchmarks are run).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _readwork as W  # noqa: E402
import numpy as np  # noqa: E402

SEED = 20261203
SECTIONS = ("build", "search", "filter", "lance", "chroma", "pss")
K = 10


def log(msg: str) -> None:
    print(f"[bench_ann {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}",
          file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--sizes", help="store sizes (default 100k,1M; --quick 5k,20k)")
    ap.add_argument("--dim", type=int, default=W.DIM, help="vector dimension (default 384)")
    ap.add_argument("--large-dim", type=int, help="dimension of the sizes >= 1M (default "
                    "--dim): a smaller one when a 1M x --dim index cannot be built in the "
                    "time at hand; reported per size")
    ap.add_argument("--centers", type=int, help="mixture centers (default 1000; --quick 50)")
    ap.add_argument("--sigma", type=float, default=1.0, help="per-coordinate spread around a "
                    "center, in units of the centers' spread (default 1.0)")
    ap.add_argument("--queries", type=int, help="queries (default 200; --quick 30)")
    ap.add_argument("--exact-queries", type=int, help="single queries timed for exact search "
                    "(default 50; --quick 10)")
    ap.add_argument("--batch", type=int, default=64, help="queries per batch (default 64)")
    ap.add_argument("--expansions", default="16,32,64,128,256",
                    help="usearch expansion_search values (default 16,32,64,128,256)")
    ap.add_argument("--ann-min-rows", type=int, help="Config.ann_min_rows of the indexed "
                    "store (default 50000; --quick 1000)")
    ap.add_argument("--repeats", type=int, help="measured runs (default 3; --quick 1)")
    ap.add_argument("--ann-repeats", type=int, help="checkpoints with the index per size "
                    "(default 3 below 1M, 1 at >= 1M; --quick 1)")
    ap.add_argument("--nprobes", default="10,30,100", help="LanceDB nprobes (default 10,30,100)")
    ap.add_argument("--refine", default="0,10", help="LanceDB refine_factor, 0 = none "
                    "(default 0,10)")
    ap.add_argument("--chroma-max", help="largest size Chroma is run at (default 100k)")
    ap.add_argument("--workers", type=int, default=8, help="processes of the pss case")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (build always runs)")
    ap.add_argument("--no-lance", action="store_true", help="skip LanceDB")
    ap.add_argument("--no-chroma", action="store_true", help="skip Chroma")
    ap.add_argument("--data", default="/tmp/mmwal-bench-ann", help="working directory")
    ap.add_argument("--keep", action="store_true", help="keep --data at the end")
    ap.add_argument("--json", metavar="PATH", help="write every number here (also after "
                    "each section, marked complete=false until the end)")
    ap.add_argument("--plot", metavar="PNG", help="draw recall against queries/s")
    ap.add_argument("--plot-only", metavar="JSON", help="redraw --plot from an earlier JSON")
    a = ap.parse_args(argv)
    q = a.quick
    a.sizes = sorted(W.parse_n(x) for x in (a.sizes or ("5k,20k" if q else "100k,1M")).split(","))
    a.centers = a.centers or (50 if q else 1000)
    a.queries = a.queries or (30 if q else 200)
    a.exact_queries = min(a.queries, a.exact_queries or (10 if q else 50))
    a.ann_min_rows = a.ann_min_rows if a.ann_min_rows is not None else (1000 if q else 50_000)
    a.repeats = a.repeats or (1 if q else 3)
    a.expansions = [int(x) for x in a.expansions.split(",")]
    a.nprobes = [int(x) for x in a.nprobes.split(",")]
    a.refine = [int(x) for x in a.refine.split(",")]
    a.chroma_max = W.parse_n(a.chroma_max or "100k")
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = set(a.sections) - set(SECTIONS)
    if bad:
        ap.error(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")
    a.data = os.path.abspath(a.data)
    a.lance = not a.no_lance and "lance" in a.sections
    a.chroma = not a.no_chroma and "chroma" in a.sections
    for mod, flag in (("lancedb", "lance"), ("chromadb", "chroma")):
        if getattr(a, flag):
            try:
                __import__(mod)
            except ImportError:
                log(f"{mod} is not installed: skipped")
                setattr(a, flag, False)
    return a


# ============================================================================ shim
SHIM_NOTE = ("usearch returns a Matches (no .counts) for a 1-row query batch and "
             "mmwal/_search/ann.py:AnnHandle.search reads m.counts: every single query "
             "through an index raised AttributeError; the run wrapped usearch's "
             "Index.search to return a 1-row batch view (mmwal code unchanged)")


def single_query_bug(data: str) -> bool:
    """True if a 1-D query through an indexed fragment raises (probed on a tiny store)."""
    import mmwal

    path = os.path.join(data, "probe")
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(1)
    with mmwal.Store(path, dim=8, durability="os", config=mmwal.Config(ann_min_rows=100)) as st:
        st.add_many([f"p{i}" for i in range(300)], rng.standard_normal((300, 8)))
        st.checkpoint()
    try:
        with mmwal.Reader(path) as r:
            r.search(rng.standard_normal(8), k=3)
        return False
    except AttributeError:
        return True
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install_shim() -> None:
    """Make usearch answer a 1-row batch with a batch-shaped result (keys (1, k), counts)."""
    from usearch.index import Index

    orig = Index.search

    class _One:
        def __init__(self, m: Any) -> None:
            self.keys = np.asarray(m.keys).reshape(1, -1)
            self.distances = np.asarray(m.distances).reshape(1, -1)
            self.counts = np.array([self.keys.shape[1]])

    def search(self: Any, vectors: Any, count: int = 10, *args: Any, **kw: Any) -> Any:
        m = orig(self, vectors, count, *args, **kw)
        if not hasattr(m, "counts") and np.ndim(vectors) == 2:
            return _One(m)
        return m

    Index.search = search  # type: ignore[method-assign]


# ============================================================================ data
class Mixture:
    """The Gaussian mixture: rows drawn per aligned block of 10k, so any batching agrees."""

    def __init__(self, dim: int, centers: int, sigma: float) -> None:
        self.dim, self.sigma = dim, sigma
        rng = np.random.default_rng([SEED, 0])
        self.C = rng.standard_normal((centers, dim), dtype=np.float32)

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        lab = rng.integers(0, len(self.C), n)
        X = self.C[lab] + np.float32(self.sigma) * rng.standard_normal((n, self.dim),
                                                                       dtype=np.float32)
        meta = rng.integers(0, 1_000_000, n)  # independent of the cluster
        return np.ascontiguousarray(X, dtype=np.float32), meta

    def block(self, lo: int, n: int) -> tuple[list[str], np.ndarray, list[dict[str, Any]], Any]:
        """Rows lo..lo+n-1 (lo a multiple of W.BATCH, n <= W.BATCH)."""
        assert lo % W.BATCH == 0 and n <= W.BATCH
        X, r = self._draw(np.random.default_rng([SEED, 1, lo]), W.BATCH)
        X, r = X[:n], r[:n]
        ids = [f"doc-{i}" for i in range(lo, lo + n)]
        metas = [{"cat10": int(v % 10), "cat1000": int(v % 1000)} for v in r.tolist()]
        return ids, X, metas, r

    def queries(self, n: int) -> np.ndarray:
        return self._draw(np.random.default_rng([SEED, 2]), n)[0]


def blocks(n: int) -> list[tuple[int, int]]:
    return [(lo, min(W.BATCH, n - lo)) for lo in range(0, n, W.BATCH)]


# ============================================================================ helpers
def med(xs: list[float]) -> float:
    return float(W.summarize(xs)["median"])


def recall(got: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / max(1, len(t)) for g, t in zip(got, truth)]))


def time_single(fn: Callable[[np.ndarray], list[str]], Q: np.ndarray, reps: int
                ) -> tuple[dict[str, Any], list[list[str]]]:
    """Seconds per query over ``Q`` (one warm-up query, then ``reps`` passes); the ids."""
    fn(Q[0])
    runs, ids = [], []
    for r in range(reps):
        out = []
        t0 = time.perf_counter()
        for q in Q:
            out.append(fn(q))
        runs.append((time.perf_counter() - t0) / len(Q))
        if r == 0:
            ids = out
    return W.summarize(runs), ids


def time_batch(fn: Callable[[np.ndarray], list[list[str]]], Q: np.ndarray, b: int, reps: int
               ) -> tuple[dict[str, Any], list[list[str]]]:
    """Seconds per query when ``Q`` is searched in batches of ``b``; the ids."""
    fn(Q[:b])
    runs, ids = [], []
    for r in range(reps):
        out: list[list[str]] = []
        t0 = time.perf_counter()
        for lo in range(0, len(Q), b):
            out += fn(Q[lo:lo + b])
        runs.append((time.perf_counter() - t0) / len(Q))
        if r == 0:
            ids = out
    return W.summarize(runs), ids


def qps(s: dict[str, Any]) -> float:
    return 1.0 / s["median"]


def fragment_file(path: str, name: str) -> str:
    got = sorted(glob.glob(os.path.join(path, "checkpoints", "*", name)))
    if len(got) != 1:
        raise RuntimeError(f"{path}: expected one fragment with {name}, found {got}")
    return got[0]


# ============================================================================ build
def build_log(path: str, mix: Mixture, n: int) -> dict[str, Any]:
    import mmwal

    t_add = 0.0
    with mmwal.Store(path, dim=mix.dim, durability="os") as st:
        for lo, k in blocks(n):
            ids, X, metas, _ = mix.block(lo, k)
            t0 = time.perf_counter()
            st.add_many(ids, X, None, metas)
            t_add += time.perf_counter() - t0
    return {"add_s": t_add, "docs_per_s": n / t_add, "log_bytes": W.seg_bytes(path)}


def timed_checkpoint(path: str, ann_min_rows: int) -> dict[str, Any]:
    import mmwal

    os.sync()
    with mmwal.Store(path, durability="os", config=mmwal.Config(ann_min_rows=ann_min_rows)) as st:
        t0 = time.perf_counter()
        info = st.checkpoint()
        dt = time.perf_counter() - t0
    return {"seconds": dt, "documents": info.documents, "fragments": info.fragments,
            "bytes_written": info.bytes_written}


def case_build(a: argparse.Namespace, mix: Mixture, n: int) -> tuple[dict[str, Any], str, str]:
    """Returns the results, the Markdown and the path of the indexed store."""
    base = os.path.join(a.data, f"log-{n}")
    shutil.rmtree(base, ignore_errors=True)
    log(f"{W.fmt_n(n)}: add_many ...")
    res: dict[str, Any] = {"n": n, "log": build_log(base, mix, n)}
    log(f"{W.fmt_n(n)}: added in {res['log']['add_s']:.1f} s; df {a.data}: "
        f"{shutil.disk_usage(a.data).free / 2**30:.1f} GiB free")
    work = os.path.join(a.data, "work")
    plain = []
    for i in range(a.repeats):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        plain.append(timed_checkpoint(work, 0))
        log(f"{W.fmt_n(n)}: checkpoint without index {i + 1}/{a.repeats}: "
            f"{plain[-1]['seconds']:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    reps = a.ann_repeats or (1 if (a.quick or n >= 1_000_000) else 3)
    withix = []
    for i in range(reps):
        last = i == reps - 1
        target = base if last else work
        if not last:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
        withix.append(timed_checkpoint(target, a.ann_min_rows))
        log(f"{W.fmt_n(n)}: checkpoint with index {i + 1}/{reps}: {withix[-1]['seconds']:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    p = W.summarize([x["seconds"] for x in plain])
    q = W.summarize([x["seconds"] for x in withix])
    ix_s = q["median"] - p["median"]
    ann_bytes = os.path.getsize(fragment_file(base, "ann.usearch"))
    emb_bytes = os.path.getsize(fragment_file(base, "embeddings.npy"))
    res.update({"checkpoint_plain_s": p, "checkpoint_ann_s": q, "index_build_s": ix_s,
                "index_share": ix_s / q["median"], "ann_bytes": ann_bytes,
                "embeddings_bytes": emb_bytes, "plain_runs": plain, "ann_runs": withix,
                "ann_repeats": reps})
    md = (f"| {W.fmt_n(n)} × {mix.dim} | {res['log']['add_s']:.1f} s | {p['median']:.1f} s "
          f"({len(plain)}) | {q['median']:.1f} s ({reps}) | {ix_s:.1f} s | "
          f"{100 * ix_s / q['median']:.0f} % | {W.fmt_mib(ann_bytes)} | {W.fmt_mib(emb_bytes)} |")
    return res, md, base


# ============================================================================ search
def case_search(a: argparse.Namespace, path: str, Q: np.ndarray) -> dict[str, Any]:
    import mmwal

    r = mmwal.Reader(path)
    idx = r.stats().fragments
    b = a.batch

    def ids1(hits: Any) -> list[str]:
        return [h.id for h in hits]

    res: dict[str, Any] = {"fragments": idx}
    # Ground truth: exact=True, batched (also the exact batch timing).
    log("exact (ground truth) ...")
    eb, truth = time_batch(lambda B: [ids1(h) for h in r.search(B, k=K, exact=True)], Q, b,
                           a.repeats)
    es, got = time_single(lambda q: ids1(r.search(q, k=K, exact=True)), Q[:a.exact_queries],
                          a.repeats)
    assert got == truth[:a.exact_queries], "exact single and batch disagree"
    res["exact"] = {"single_s": es, "batch_s": eb, "single_qps": qps(es), "batch_qps": qps(eb)}
    curve = []
    # First the default breadth (expansion=None: what a user gets without asking), then the
    # explicit ones.  The default grows with a fragment's rows (_search.ann.default_expansion).
    from mmwal._search.ann import default_expansion

    rows = max((f["rows"] for f in idx), default=0)
    res["default_breadth"] = default_expansion(mmwal.Config().ann_expansion_search, rows)
    for e in [None, *a.expansions]:
        s, got_s = time_single(lambda q, e=e: ids1(r.search(q, k=K, expansion=e)), Q, a.repeats)
        bt, got_b = time_batch(lambda B, e=e: [ids1(h) for h in r.search(B, k=K, expansion=e)],
                               Q, b, a.repeats)
        curve.append({"expansion": "default" if e is None else e,
                      "breadth": res["default_breadth"] if e is None else e,
                      "recall_single": recall(got_s, truth),
                      "recall_batch": recall(got_b, truth), "single_s": s, "batch_s": bt,
                      "single_qps": qps(s), "batch_qps": qps(bt),
                      "speedup_single": qps(s) / qps(es), "speedup_batch": qps(bt) / qps(eb)})
        log(f"expansion {e}: recall {curve[-1]['recall_single']:.4f}, "
            f"{qps(s):,.0f} q/s single ({curve[-1]['speedup_single']:.1f}x exact), "
            f"{qps(bt):,.0f} q/s batch")
    res["default"] = curve.pop(0)
    res["curve"] = curve
    res["_truth"] = truth
    r.close()
    return res


def case_filter(a: argparse.Namespace, path: str, Q: np.ndarray) -> dict[str, Any]:
    import mmwal

    r = mmwal.Reader(path)
    out: dict[str, Any] = {}
    for name, where in (("10%", {"cat10": 3}), ("0.1%", {"cat1000": 7})):
        matching = len(r.find(where))

        def ex1(q: np.ndarray, w: Any = where) -> list[str]:
            return [h.id for h in r.search(q, k=K, where=w, exact=True)]

        def au1(q: np.ndarray, w: Any = where) -> list[str]:
            return [h.id for h in r.search(q, k=K, where=w)]

        def aub(B: np.ndarray, w: Any = where) -> list[list[str]]:
            return [[h.id for h in hl] for hl in r.search(B, k=K, where=w)]

        es, truth = time_single(ex1, Q, a.repeats)
        s, got = time_single(au1, Q, a.repeats)
        bt, got_b = time_batch(aub, Q, a.batch, a.repeats)
        bad = sum(1 for g in got for i in g if i not in set(r.find(where)))  if len(Q) <= 50 else None
        out[name] = {"where": where, "matching": matching, "share": matching / len(r),
                     "recall_single": recall(got, truth), "recall_batch": recall(got_b, truth),
                     "exact_single_s": es, "single_s": s, "batch_s": bt,
                     "exact_qps": qps(es), "single_qps": qps(s), "batch_qps": qps(bt),
                     "nonmatching_hits": bad}
        log(f"filter {name} ({matching} rows): recall {out[name]['recall_single']:.4f}, "
            f"{s['median'] * 1e3:.2f} ms auto, {es['median'] * 1e3:.2f} ms exact")
    r.close()
    return out


# ============================================================================ LanceDB
def case_lance(a: argparse.Namespace, mix: Mixture, n: int, Q: np.ndarray,
               truth: list[list[str]]) -> dict[str, Any]:
    import lancedb
    import pyarrow as pa

    path = os.path.join(a.data, f"lance-{n}")
    shutil.rmtree(path, ignore_errors=True)
    db = lancedb.connect(path)
    tbl = None
    t_add = 0.0
    for lo, k in blocks(n):
        ids, X, _, r = mix.block(lo, k)
        rows = pa.table({
            "id": pa.array(ids, type=pa.string()),
            "cat10": pa.array(r % 10, type=pa.int32()),
            "cat1000": pa.array(r % 1000, type=pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()),
                                                        mix.dim),
        })
        t0 = time.perf_counter()
        if tbl is None:
            tbl = db.create_table("ann", rows)
        else:
            tbl.add(rows)
        t_add += time.perf_counter() - t0
    assert tbl is not None
    res: dict[str, Any] = {"version": lancedb.__version__, "add_s": t_add}
    log(f"lance {W.fmt_n(n)}: added in {t_add:.1f} s")

    def ids_of(t: Any) -> list[str]:
        return [str(x) for x in t.column("id").to_pylist()]

    def flat(q: np.ndarray) -> list[str]:
        return ids_of(tbl.search(q).distance_type("cosine").bypass_vector_index().limit(K)
                      .select(["id"]).to_arrow())

    fs, got = time_single(flat, Q[:a.exact_queries], a.repeats)
    res["flat"] = {"single_s": fs, "single_qps": qps(fs),
                   "recall": recall(got, truth[:a.exact_queries])}
    log(f"lance flat: {qps(fs):,.1f} q/s, recall {res['flat']['recall']:.4f}")
    parts = max(1, round(math.sqrt(n)))
    subv = max(1, mix.dim // 8)
    t0 = time.perf_counter()
    tbl.create_index(metric="cosine", num_partitions=parts, num_sub_vectors=subv,
                     vector_column_name="vector", index_type="IVF_PQ")
    res["index"] = {"type": "IVF_PQ", "num_partitions": parts, "num_sub_vectors": subv,
                    "build_s": time.perf_counter() - t0}
    res["bytes"] = W.dir_bytes(path)
    log(f"lance IVF_PQ built in {res['index']['build_s']:.1f} s")
    pts = []
    for npb in a.nprobes:
        for rf in a.refine:
            def one(q: np.ndarray, npb: int = npb, rf: int = rf) -> list[str]:
                s = tbl.search(q).distance_type("cosine").nprobes(npb)
                if rf:
                    s = s.refine_factor(rf)
                return ids_of(s.limit(K).select(["id"]).to_arrow())

            s, got = time_single(one, Q, a.repeats)
            pts.append({"nprobes": npb, "refine_factor": rf, "single_s": s,
                        "single_qps": qps(s), "recall": recall(got, truth)})
            log(f"lance nprobes {npb} refine {rf}: recall {pts[-1]['recall']:.4f}, "
                f"{qps(s):,.0f} q/s")
    res["ivf_pq"] = pts
    return res


# ============================================================================ Chroma
def case_chroma(a: argparse.Namespace, mix: Mixture, n: int, Q: np.ndarray,
                truth: list[list[str]]) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings

    path = os.path.join(a.data, f"chroma-{n}")
    shutil.rmtree(path, ignore_errors=True)
    client = chromadb.PersistentClient(path, settings=Settings(anonymized_telemetry=False))
    col = client.create_collection("ann", metadata={"hnsw:space": "cosine"})
    mb = client.get_max_batch_size()
    t_add = 0.0
    for lo, k in blocks(n):
        ids, X, metas, _ = mix.block(lo, k)
        for s in range(0, k, mb):
            t0 = time.perf_counter()
            col.add(ids=ids[s:s + mb], embeddings=X[s:s + mb], metadatas=metas[s:s + mb])
            t_add += time.perf_counter() - t0
    assert col.count() == n
    res: dict[str, Any] = {"version": chromadb.__version__, "add_s": t_add,
                           "bytes": W.dir_bytes(path)}
    log(f"chroma {W.fmt_n(n)}: added in {t_add:.1f} s")

    def one(q: np.ndarray) -> list[str]:
        return list(col.query(query_embeddings=[q], n_results=K, include=[])["ids"][0])

    def many(B: np.ndarray) -> list[list[str]]:
        return [list(x) for x in col.query(query_embeddings=list(B), n_results=K,
                                           include=[])["ids"]]

    s, got = time_single(one, Q, a.repeats)
    bt, got_b = time_batch(many, Q, a.batch, a.repeats)
    res.update({"single_s": s, "batch_s": bt, "single_qps": qps(s), "batch_qps": qps(bt),
                "recall": recall(got, truth), "recall_batch": recall(got_b, truth)})
    log(f"chroma: recall {res['recall']:.4f}, {qps(s):,.0f} q/s single, {qps(bt):,.0f} q/s batch")
    shutil.rmtree(path, ignore_errors=True)
    return res


# ============================================================================ PSS
def child_pss(path: str, qfile: str, shim: str) -> None:
    import mmwal

    if shim == "1":
        install_shim()
    Q = np.load(qfile)
    r = mmwal.Reader(path)
    r.search(Q[0], k=K, exact=True)  # touches every page of embeddings.npy
    n_hits = 0
    for q in Q:
        n_hits += len(r.search(q, k=K))
    for lo in range(0, len(Q), 64):
        r.search(Q[lo:lo + 64], k=K)
    fr = r.stats().fragments
    mapped = [v["index"]["mapped"] for v in fr if v.get("index")]
    sys.stdout.write(json.dumps({"pid": os.getpid(), "hits": n_hits, "mapped": mapped}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()
    r.close()


def case_pss(a: argparse.Namespace, path: str, Q: np.ndarray) -> dict[str, Any]:
    qfile = os.path.join(a.data, "queries.npy")
    np.save(qfile, Q)
    ann_f = fragment_file(path, "ann.usearch")
    emb_f = fragment_file(path, "embeddings.npy")
    procs = []
    try:
        for _ in range(a.workers):
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_child", "pss",
                                  path, qfile, "1" if a.shim else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            W._children.append(p)
            procs.append(p)
        infos = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"pss worker {p.pid} died (exit {p.wait()})")
            infos.append(json.loads(line))
        per = []
        for info in infos:
            pid = info["pid"]
            roll = W.smaps_rollup(pid)
            per.append({"pid": pid, "mapped": info["mapped"], "pss_kib": roll["Pss"],
                        "rss_kib": roll["Rss"],
                        "ann": W.smaps_of_file(pid, os.path.basename(os.path.dirname(ann_f))
                                               + "/ann.usearch"),
                        "emb": W.smaps_of_file(pid, os.path.basename(os.path.dirname(emb_f))
                                               + "/embeddings.npy")})
    finally:
        W.release_children(procs)
    tot = sum(x["pss_kib"] for x in per) * 1024
    ann_b, emb_b = os.path.getsize(ann_f), os.path.getsize(emb_f)
    ann_pss = sum(x["ann"]["Pss"] for x in per) * 1024
    emb_pss = sum(x["emb"]["Pss"] for x in per) * 1024
    return {"workers": len(per), "total_pss_bytes": tot,
            "total_rss_bytes": sum(x["rss_kib"] for x in per) * 1024,
            "ann_pss_bytes": ann_pss, "emb_pss_bytes": emb_pss,
            "ann_rss_bytes_per_worker": [x["ann"]["Rss"] * 1024 for x in per],
            "emb_rss_bytes_per_worker": [x["emb"]["Rss"] * 1024 for x in per],
            "ann_file_bytes": ann_b, "emb_file_bytes": emb_b,
            "ratio_total": tot / (ann_b + emb_b),
            "ratio_mapped": (ann_pss + emb_pss) / (ann_b + emb_b),
            "other_pss_per_worker_bytes": (tot - ann_pss - emb_pss) / len(per),
            "per_worker": per}


# ============================================================================ plot
def plot(results: dict[str, Any], target: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = [s for s in results["sizes"] if "search" in results["sizes"][s]]
    if not sizes:
        return None
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.2 * len(sizes), 4.8), squeeze=False)
    for ax, key in zip(axes[0], sizes):
        R = results["sizes"][key]
        cur = R["search"]["curve"]
        ex = R["search"]["exact"]
        ax.plot([c["single_qps"] for c in cur], [c["recall_single"] for c in cur], "o-",
                color="#d62728", label="mmwal index, 1 query")
        ax.plot([c["batch_qps"] for c in cur], [c["recall_batch"] for c in cur], "s--",
                color="#d62728", alpha=0.6, label=f"mmwal index, batch of {results['args']['batch']}")
        for c in cur:
            ax.annotate(str(c["expansion"]), (c["single_qps"], c["recall_single"]),
                        fontsize=6, xytext=(3, -8), textcoords="offset points")
        d = R["search"].get("default")
        if d:
            ax.plot([d["single_qps"]], [d["recall_single"]], "*", color="#d62728", ms=12,
                    label=f"mmwal default breadth ({d['breadth']}), 1 query")
        ax.axvline(ex["single_qps"], color="gray", ls=":", label="mmwal exact, 1 query")
        ax.axvline(ex["batch_qps"], color="gray", ls="-.", label="mmwal exact, batch")
        ax.axvline(20 * ex["single_qps"], color="green", ls=":", lw=0.8,
                   label="20x exact (1 query)")
        ax.axhline(0.95, color="green", ls="--", lw=0.8)
        L = R.get("lance")
        if L:
            ax.plot([p["single_qps"] for p in L["ivf_pq"]], [p["recall"] for p in L["ivf_pq"]],
                    "^", color="#1f77b4", label="LanceDB IVF_PQ, 1 query")
            for p in L["ivf_pq"]:
                ax.annotate(f"{p['nprobes']}/{p['refine_factor']}",
                            (p["single_qps"], p["recall"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            ax.plot([L["flat"]["single_qps"]], [L["flat"]["recall"]], "v", color="#1f77b4",
                    mfc="none", label="LanceDB flat, 1 query")
        C = R.get("chroma")
        if C and "single_qps" in C:
            ax.plot([C["single_qps"]], [C["recall"]], "D", color="#ff7f0e",
                    label="Chroma HNSW, 1 query")
            ax.plot([C["batch_qps"]], [C["recall_batch"]], "D", color="#ff7f0e", mfc="none",
                    label="Chroma HNSW, batch")
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (median of runs, 2 shared cores)")
        ax.set_ylabel("recall@10 against exact")
        ax.set_title(f"{W.fmt_n(int(key))} x {R.get('dim', results['args']['dim'])}, clustered", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    fig.savefig(target, dpi=110)
    return target


# ============================================================================ main
def write_json(a: argparse.Namespace, results: dict[str, Any]) -> None:
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(a.json + ".tmp", a.json)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        if argv[1] == "pss":
            child_pss(*argv[2:])
            return 0
        raise SystemExit(f"unknown child mode {argv[1]!r}")
    a = parse_args(argv)
    if a.plot_only:
        with open(a.plot_only) as f:
            got = plot(json.load(f), a.plot or "bench_ann.png")
        print(got or "no plot (matplotlib missing)")
        return 0 if got else 2
    W.install_signal_handlers()
    os.makedirs(a.data, exist_ok=True)
    info = W.machine_info(a.data)
    import usearch

    info["usearch"] = usearch.__version__
    if a.lance:
        import lancedb

        info["lancedb"] = lancedb.__version__
    if a.chroma:
        import chromadb

        info["chromadb"] = chromadb.__version__
    info["disk_free_gib"] = round(shutil.disk_usage(a.data).free / 2**30, 1)
    cmd = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + argv)
    print("## mmwal ANN benchmark\n")
    print(f"Command: `{cmd}`\n")
    print(W.md_table(["", ""], [[k, f"{v}"] for k, v in info.items()]) + "\n", flush=True)
    a.shim = single_query_bug(a.data)
    if a.shim:
        install_shim()
        log("single queries through an index raise on this code: " + SHIM_NOTE)
    info["single_query_shim"] = SHIM_NOTE if a.shim else None
    results: dict[str, Any] = {"command": cmd, "machine": info, "complete": False, "sizes": {},
                               "args": {k: v for k, v in vars(a).items()
                                        if isinstance(v, (int, float, str, list, bool))}}
    build_rows: list[str] = []
    t_all = time.perf_counter()
    try:
        for n in a.sizes:
            dim = a.large_dim if (a.large_dim and n >= 1_000_000) else a.dim
            mix = Mixture(dim, a.centers, a.sigma)
            Q = mix.queries(a.queries)
            R: dict[str, Any] = {"dim": dim}
            results["sizes"][str(n)] = R
            load0 = os.getloadavg()
            R["build"], row, path = case_build(a, mix, n)
            build_rows.append(row)
            write_json(a, results)
            truth = None
            if "search" in a.sections or a.lance or a.chroma:
                R["search"] = case_search(a, path, Q)
                truth = R["search"].pop("_truth")
                write_json(a, results)
            if "filter" in a.sections:
                R["filter"] = case_filter(a, path, Q)
                write_json(a, results)
            if a.lance and truth is not None:
                R["lance"] = case_lance(a, mix, n, Q, truth)
                shutil.rmtree(os.path.join(a.data, f"lance-{n}"), ignore_errors=True)
                write_json(a, results)
            if a.chroma and truth is not None:
                if n <= a.chroma_max:
                    R["chroma"] = case_chroma(a, mix, n, Q, truth)
                else:
                    R["chroma"] = {"skipped": f"{n} rows > --chroma-max {a.chroma_max}"}
                write_json(a, results)
            if "pss" in a.sections and n == a.sizes[-1]:
                log("pss ...")
                R["pss"] = case_pss(a, path, Q)
                write_json(a, results)
            R["loadavg"] = {"start": load0, "end": os.getloadavg()}
            R["seconds"] = time.perf_counter() - t_all
            shutil.rmtree(path, ignore_errors=True)
            log(f"{W.fmt_n(n)} done; df: {shutil.disk_usage(a.data).free / 2**30:.1f} GiB free")
        results["complete"] = True
    finally:
        W._reap_all()
        results["machine"]["loadavg_end"] = os.getloadavg()
        results["total_s"] = time.perf_counter() - t_all
        write_json(a, results)
        if not a.keep:
            shutil.rmtree(a.data, ignore_errors=True)
    report(a, results, build_rows)
    if a.plot:
        print(f"Plot: {plot(results, a.plot)}")
    return 0


def report(a: argparse.Namespace, results: dict[str, Any], build_rows: list[str]) -> None:
    print("### Build (add_many, then checkpoint of the whole log; medians, runs in brackets)\n")
    print("| rows | add_many | checkpoint, no index | checkpoint with index | index build | "
          "share | ann.usearch | embeddings.npy |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(build_rows) + "\n")
    for key, R in results["sizes"].items():
        n = int(key)
        if "search" not in R:
            continue
        S = R["search"]
        ex = S["exact"]
        print(f"### {W.fmt_n(n)} x {R['dim']}: recall@10 and queries/s\n")
        rows = [["exact", "1.0000", W.fmt_rate(ex["single_qps"]), "1.0×",
                 W.fmt_rate(ex["batch_qps"]), "1.0×"]]
        for c in ([S["default"]] if "default" in S else []) + S["curve"]:
            name = (f"index, default breadth ({c['breadth']})" if c["expansion"] == "default"
                    else f"index, expansion {c['expansion']}")
            rows.append([name, f"{c['recall_single']:.4f}",
                         W.fmt_rate(c["single_qps"]), f"{c['speedup_single']:.1f}×",
                         W.fmt_rate(c["batch_qps"]), f"{c['speedup_batch']:.1f}×"])
        L = R.get("lance")
        if L:
            rows.append(["LanceDB flat", f"{L['flat']['recall']:.4f}",
                         W.fmt_rate(L["flat"]["single_qps"]), "", "", ""])
            for p in L["ivf_pq"]:
                rows.append([f"LanceDB IVF_PQ nprobes {p['nprobes']} refine {p['refine_factor']}",
                             f"{p['recall']:.4f}", W.fmt_rate(p["single_qps"]),
                             f"{p['single_qps'] / ex['single_qps']:.1f}×", "", ""])
        C = R.get("chroma")
        if C and "single_qps" in C:
            rows.append(["Chroma HNSW (defaults)", f"{C['recall']:.4f}",
                         W.fmt_rate(C["single_qps"]), f"{C['single_qps'] / ex['single_qps']:.1f}×",
                         W.fmt_rate(C["batch_qps"]), f"{C['batch_qps'] / ex['batch_qps']:.1f}×"])
        print(W.md_table(["search", "recall@10", "q/s (1 query)", "vs exact",
                          f"q/s (batch {a.batch})", "vs exact"], rows) + "\n")
        if L:
            print(f"LanceDB: add {L['add_s']:.1f} s, IVF_PQ build {L['index']['build_s']:.1f} s "
                  f"({L['index']['num_partitions']} partitions, {L['index']['num_sub_vectors']} "
                  f"sub-vectors), table {W.fmt_mib(L['bytes'])}.\n")
        if C:
            what = C.get("skipped") or f"add {C['add_s']:.1f} s, {W.fmt_mib(C['bytes'])} on disk"
            print(f"Chroma: {what}.\n")
        F = R.get("filter")
        if F:
            rows = [[name, f"{f['matching']:,}", f"{f['recall_single']:.4f}",
                     W.fmt_ms(f["single_s"]["median"]), W.fmt_ms(f["exact_single_s"]["median"]),
                     W.fmt_ms(f["batch_s"]["median"])] for name, f in F.items()]
            print(W.md_table(["filter", "matching rows", "recall@10", "auto, 1 query",
                              "exact=True, 1 query", "auto, per query in a batch"], rows) + "\n")
        P = R.get("pss")
        if P:
            print(f"PSS of {P['workers']} workers: total {W.fmt_mib(P['total_pss_bytes'])} "
                  f"(RSS summed {W.fmt_mib(P['total_rss_bytes'])}); of which ann.usearch "
                  f"{W.fmt_mib(P['ann_pss_bytes'])} (file {W.fmt_mib(P['ann_file_bytes'])}), "
                  f"embeddings.npy {W.fmt_mib(P['emb_pss_bytes'])} (file "
                  f"{W.fmt_mib(P['emb_file_bytes'])}); total / (index + embeddings) = "
                  f"{P['ratio_total']:.2f}, mapped part {P['ratio_mapped']:.2f}; other "
                  f"{W.fmt_mib(P['other_pss_per_worker_bytes'])} per worker.\n")
    big = results["sizes"].get(str(a.sizes[-1]), {}).get("search")
    if big:
        ok = [c for c in big["curve"] if c["recall_single"] >= 0.95]
        best = max((c["speedup_single"] for c in ok), default=0.0)
        print(f"Target (largest size): recall@10 >= 0.95 at >= 20x exact q/s (1 query): best "
              f"speedup at recall >= 0.95 is {best:.1f}x -> {'met' if best >= 20 else 'MISSED'}\n")
    print(f"Load average at the end: {tuple(round(x, 2) for x in os.getloadavg())}; "
          f"took {results.get('total_s', 0):.0f} s; complete={results['complete']}.")


if __name__ == "__main__":
    sys.exit(main())
