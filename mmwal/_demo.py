"""``mmwal demo``: the main job of mmwal on a temporary store, in well under a minute.

1. 4 ingestion worker processes write realistic documents concurrently
   (``add_many`` batches, ``durability="fsync"``), with a progress bar;
2. one checkpoint folds the log into memory-mappable files;
3. 2 query worker processes map the store, run searches and measure how much
   of the mapped embeddings they share (PSS against RSS, Linux);
4. an open Reader sees a write made after the checkpoint on ``refresh()``;
5. ``verify`` checks everything.

Documents are synthetic but searchable: each one is about a topic, and its
embedding is a normalised bag of word vectors (a stand-in for a real embedding
model), so a query about solar batteries finds documents about energy storage.
Every child process is started with ``spawn`` (what macOS and Python 3.14 use by
default) and ignores Ctrl-C: the parent stops and reaps them.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._progress import progress

__all__ = ["DemoOptions", "embed_texts", "make_documents", "run_demo"]

DIM = 384
WRITERS = 4
QUERY_WORKERS = 2

TOPICS: dict[str, tuple[str, ...]] = {
    "energy": ("solar", "battery", "grid", "wind", "turbine", "storage", "power", "inverter",
               "voltage", "renewable", "hydrogen", "capacity", "charging", "substation"),
    "medicine": ("patient", "clinical", "trial", "dosage", "vaccine", "immune", "diagnosis",
                 "therapy", "symptoms", "hospital", "cardiology", "antibody", "placebo", "cohort"),
    "finance": ("revenue", "quarterly", "earnings", "margin", "dividend", "portfolio",
                "interest", "inflation", "bond", "equity", "audit", "forecast", "liquidity",
                "valuation"),
    "software": ("database", "latency", "kernel", "compiler", "cache", "deployment",
                 "container", "python", "index", "query", "thread", "memory", "mmap", "fsync"),
    "climate": ("emissions", "carbon", "temperature", "glacier", "drought", "rainfall", "ocean",
                "forest", "warming", "ice", "sea", "wildfire", "methane", "permafrost"),
    "space": ("orbit", "satellite", "rocket", "telescope", "galaxy", "launch", "lunar", "mars",
              "asteroid", "spacecraft", "payload", "gravity", "comet", "nebula"),
    "food": ("recipe", "flour", "oven", "tomato", "garlic", "baking", "dough", "sauce", "spice",
             "harvest", "wheat", "olive", "yeast", "basil"),
    "law": ("contract", "court", "liability", "patent", "clause", "appeal", "statute",
            "plaintiff", "verdict", "regulation", "compliance", "license", "tribunal", "damages"),
}
TOPIC_NAMES = tuple(TOPICS)
VOCAB = tuple(w for words in TOPICS.values() for w in words)
assert len({len(words) for words in TOPICS.values()}) == 1  # make_documents relies on it
_WORD_INDEX = {w: i for i, w in enumerate(VOCAB)}
_GLUE = ("the", "and", "of", "with", "for", "on", "a", "new", "in", "about", "from", "to")
_KINDS = ("notes", "report", "brief", "summary", "memo", "minutes", "review", "digest")

QUERIES = (
    "battery storage for the solar power grid",
    "clinical trial of a new vaccine dosage",
    "quarterly earnings and dividend forecast",
    "database cache latency and mmap",
    "carbon emissions and ocean warming",
    "satellite launch into lunar orbit",
    "baking dough with flour and yeast",
    "patent liability and contract appeal",
)
HEADLINE_QUERY = QUERIES[0]


# ============================================================================ documents
def _word_vectors() -> np.ndarray:
    """One fixed random unit vector per vocabulary word (the same in every process)."""
    rng = np.random.default_rng(20240611)
    w = rng.standard_normal((len(VOCAB), DIM)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return w


_W: np.ndarray | None = None


def embed_texts(texts: list[str]) -> np.ndarray:
    """(n, 384) float32 unit vectors: the normalised sum of each text's word vectors.

    Words outside the vocabulary are ignored; a text without any gets a vector
    derived from its hash.
    """
    global _W
    if _W is None:
        _W = _word_vectors()
    counts = np.zeros((len(texts), len(VOCAB)), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().replace(",", " ").replace(":", " ").split():
            j = _WORD_INDEX.get(word)
            if j is not None:
                counts[i, j] += 1.0
    out = counts @ _W
    empty = ~counts.any(axis=1)
    for i in np.flatnonzero(empty).tolist():
        rng = np.random.default_rng(zlib.crc32(texts[i].encode("utf-8")))
        out[i] = rng.standard_normal(DIM)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    vecs: np.ndarray = out.astype(np.float32, copy=False)
    return vecs


def make_documents(start: int, n: int) -> tuple[list[str], np.ndarray, list[str],
                                                   list[dict[str, Any]]]:
    """Documents ``start .. start+n-1``: ids, embeddings, contents (~150 B), metadata.

    Deterministic in ``(start, n)``; generated with numpy a batch at a time,
    so that making documents costs far less than writing them.
    """
    rng = np.random.default_rng([start, n])
    nt, per = len(TOPIC_NAMES), len(TOPICS[TOPIC_NAMES[0]])
    width = 32  # more words than any ~150-byte content needs
    t1 = rng.integers(nt, size=n)
    t2 = (t1 + rng.integers(1, nt, size=n)) % nt
    pick = rng.random((n, width))
    word = rng.integers(per, size=(n, width))
    glue = rng.integers(len(_GLUE), size=(n, width)).tolist()
    vocab = np.where(pick < 0.55, t1[:, None] * per + word,
                     np.where(pick < 0.7, t2[:, None] * per + word, -1)).tolist()
    ids, contents, metas = [], [], []
    rows: list[int] = []
    cols: list[int] = []
    for r in range(n):
        i = start + r
        topic, other = TOPIC_NAMES[int(t1[r])], TOPIC_NAMES[int(t2[r])]
        parts = [f"{topic.capitalize()} {_KINDS[i % len(_KINDS)]} {i}:"]
        length = len(parts[0])
        vr, gr = vocab[r], glue[r]
        for c in range(width):
            if length >= 140:
                break
            v = vr[c]
            if v >= 0:
                w = VOCAB[v]
                rows.append(r)
                cols.append(v)
            else:
                w = _GLUE[gr[c]]
            parts.append(w)
            length += len(w) + 1
        ids.append(f"doc-{i}")
        contents.append(" ".join(parts) + ".")
        metas.append({"source": f"file_{i % 100}.pdf", "page": i % 50, "topic": topic,
                      "tags": [topic, other]})
    global _W
    if _W is None:
        _W = _word_vectors()
    counts = np.zeros((n, len(VOCAB)), dtype=np.float32)
    np.add.at(counts, (np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp)), 1.0)
    vecs = counts @ _W
    vecs += rng.standard_normal(vecs.shape, dtype=np.float32) * np.float32(0.05)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return ids, vecs, contents, metas


# ============================================================================ children
def _child_setup() -> None:
    """Ctrl-C is the parent's business: it stops and reaps the children."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _writer(path: str, worker: int, start: int, count: int, batch: int, durability: str,
            barrier: Any, done: Any, results: Any) -> None:
    _child_setup()
    try:
        from ._store import Store

        with Store(path, durability=durability) as store:
            first = make_documents(start, min(batch, count))  # warm up before the clock
            barrier.wait(timeout=120)
            t0 = time.perf_counter()
            records = 0
            for a in range(start, start + count, batch):
                k = min(batch, start + count - a)
                ids, vecs, contents, metas = first if a == start else make_documents(a, k)
                store.add_many(ids, vecs, contents, metas)
                records += 1
                done[worker] += k
            results.put(("writer", worker, {"docs": count, "records": records,
                                            "seconds": time.perf_counter() - t0}))
    except BaseException as exc:
        results.put(("error", worker, f"writer {worker}: {type(exc).__name__}: {exc}\n"
                     + traceback.format_exc()))


def _mapping_memory(suffix: str) -> dict[str, int] | None:
    """Rss/Pss in bytes of this process's mappings of files ending in ``suffix`` (Linux)."""
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rss = pss = 0
    inside = False
    for line in lines:
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and ":" not in head:  # a mapping header: "start-end perms ..."
            inside = line.rstrip().endswith(suffix)
        elif inside and head in ("Rss:", "Pss:"):
            kb = int(line.split()[1]) * 1024
            if head == "Rss:":
                rss += kb
            else:
                pss += kb
    return {"rss": rss, "pss": pss}


def _process_memory() -> dict[str, int] | None:
    """Whole-process Rss/Pss in bytes from /proc/self/smaps_rollup (Linux), or None."""
    try:
        with open("/proc/self/smaps_rollup", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
            out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out if len(out) == 2 else None


def _query_worker(path: str, worker: int, n_queries: int, barrier: Any, results: Any) -> None:
    _child_setup()
    try:
        from ._reader import Reader

        queries = embed_texts(list(QUERIES))
        t0 = time.perf_counter()
        reader = Reader(path)
        _ = reader.embeddings.shape  # "open + embeddings ready"
        open_s = time.perf_counter() - t0
        try:
            lat = []
            for j in range(n_queries):
                q = queries[j % len(queries)]
                t = time.perf_counter()
                reader.search(q, k=5)
                lat.append(time.perf_counter() - t)
            batch = np.repeat(queries, 4, axis=0)  # 32 queries in one call
            t = time.perf_counter()
            reader.search(batch, k=5)
            batch_s = time.perf_counter() - t
            hits = []
            for h in reader.search(queries[0], k=5):
                doc = reader[h.id]
                hits.append((h.id, h.score, doc.content, doc.metadata))
            # Hold the mapping while the other worker measures too.
            barrier.wait(timeout=120)
            mapped = _mapping_memory("embeddings.npy")
            whole = _process_memory()
            barrier.wait(timeout=120)
            results.put(("reader", worker, {
                "open_s": open_s, "latencies": lat, "batch_s": batch_s, "batch": len(batch),
                "hits": hits, "mapped": mapped, "process": whole, "docs": len(reader),
                "pid": os.getpid()}))
        finally:
            reader.close()
    except BaseException as exc:
        results.put(("error", worker, f"query worker {worker}: {type(exc).__name__}: {exc}\n"
                     + traceback.format_exc()))


# ============================================================================ parent
@dataclass
class DemoOptions:
    docs: int = 50_000
    batch: int = 500
    queries: int = 50
    keep: bool = False
    dir: str | None = None
    durability: str = "fsync"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


@contextmanager
def _reaped(procs: list[Any]) -> Iterator[None]:
    """Whatever happens, no child outlives the demo.

    On success the children are joined first: one terminated while its queue
    feeder thread still holds the queue's write lock would leave the lock
    taken for good (the multiprocessing "joining processes that use queues"
    rule).  On failure or Ctrl-C they are terminated at once.
    """
    failed = True
    try:
        yield
        failed = False
    finally:
        deadline = time.monotonic() + (0 if failed else 30)
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _start(procs: list[Any]) -> None:
    """Start children with SIGINT blocked, so none can die of Ctrl-C before its setup.

    Each child also gets a single-threaded BLAS (unless the user chose otherwise):
    several processes each spinning a thread pool per core only fight for the
    cores, and the demo's matrix products are small.
    """
    mask = hasattr(signal, "pthread_sigmask")
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    for k in _BLAS_THREADS:
        os.environ.setdefault(k, "1")
    if mask:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
    finally:
        if mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _collect(results: Any, procs: list[Any], want: int,
             tick: Callable[[], None] | None = None) -> list[tuple[str, int, Any]]:
    got: list[tuple[str, int, Any]] = []
    while len(got) < want:
        try:
            item = results.get(timeout=0.05)
        except queue.Empty:
            if tick is not None:
                tick()
            if not any(p.is_alive() for p in procs) and results.empty():
                dead = [p.exitcode for p in procs]
                raise RuntimeError(f"a demo worker process died (exit codes {dead})") from None
            continue
        if item[0] == "error":
            raise RuntimeError(item[2])
        got.append(item)
        if tick is not None:
            tick()
    return got


def run_demo(opts: DemoOptions, out: Callable[[str], None] = print) -> int:
    """Run the demo; return the exit code (0 when everything checked out)."""
    import multiprocessing as mp

    from ._reader import Reader
    from ._store import Store
    from ._types import Config
    from ._verify import verify

    pad = " " * 15

    def say(label: str, *lines: str) -> None:
        for i, line in enumerate(lines):
            out((f"{label:<15}" if i == 0 else pad) + line)

    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="mmwal-demo-", dir=opts.dir)
    path = os.path.join(root, "store")
    ok = False
    try:
        where = "kept afterwards" if opts.keep else "removed at the end; --keep keeps it"
        out(f"mmwal demo: a temporary store in {path}\n({where})\n")
        ctx = mp.get_context("spawn")
        with Store(path, dim=DIM):
            pass

        # ---- 1. ingestion --------------------------------------------------------
        n = opts.docs
        share = [n // WRITERS + (1 if w < n % WRITERS else 0) for w in range(WRITERS)]
        starts = [sum(share[:w]) for w in range(WRITERS)]
        results = ctx.Queue()
        barrier = ctx.Barrier(WRITERS + 1)
        done = ctx.RawArray("q", WRITERS)
        writers = [ctx.Process(target=_writer, name=f"mmwal-demo-writer-{w}",
                               args=(path, w, starts[w], share[w], opts.batch, opts.durability,
                                     barrier, done, results)) for w in range(WRITERS)]
        say("1. ingest", f"{WRITERS} writer processes, add_many batches of {opts.batch}, "
            f"durability={opts.durability!r}")
        with _reaped(writers):
            _start(writers)
            barrier.wait(timeout=120)
            t0 = time.perf_counter()
            with progress(n, f"{pad}writing", "docs") as bar:
                got = _collect(results, writers, WRITERS, lambda: bar.set(sum(done)))
            ingest_s = time.perf_counter() - t0
        records = sum(g[2]["records"] for g in got)
        # No approximate index (mmwal[ann]): the demo's searches are exact, and
        # its checkpoint shows what folding the log costs, not an index build.
        with Store(path, config=Config(ann_min_rows=0)) as store:
            seq = store.seq
            say("", f"{n:,} documents in {ingest_s:.2f} s: {n / ingest_s:,.0f} docs/s "
                f"({records:,} atomic records, seqs 1..{seq:,})")

            # ---- 2. checkpoint -----------------------------------------------------
            t0 = time.perf_counter()
            info = store.checkpoint()
            ckpt_s = time.perf_counter() - t0
            stats = store.stats()
        emb_file = os.path.join(path, "checkpoints", f"{info.id:08d}", "embeddings.npy")
        emb_bytes = os.path.getsize(emb_file)
        say("2. checkpoint", f"{info.documents:,} documents folded into checkpoint {info.id} "
            f"in {ckpt_s:.2f} s",
            f"{_mb(stats.checkpoint_bytes)} on disk, of which embeddings.npy {_mb(emb_bytes)}")

        # ---- 3. query workers ------------------------------------------------------
        results = ctx.Queue()
        qbarrier = ctx.Barrier(QUERY_WORKERS)
        readers = [ctx.Process(target=_query_worker, name=f"mmwal-demo-query-{w}",
                               args=(path, w, opts.queries, qbarrier, results))
                   for w in range(QUERY_WORKERS)]
        with _reaped(readers):
            _start(readers)
            got = sorted(_collect(results, readers, QUERY_WORKERS), key=lambda g: g[1])
        rs = [g[2] for g in got]
        lat = np.array([x for r in rs for x in r["latencies"]])
        lines = [
            "Reader open: " + " / ".join(f"{r['open_s'] * 1e3:.1f} ms" for r in rs)
            + " (independent of the store size)",
            f"search: {len(lat)} queries, median {np.median(lat) * 1e3:.1f} ms, p90 "
            f"{np.percentile(lat, 90) * 1e3:.1f} ms (exact cosine top-5, {rs[0]['docs']:,} x "
            f"{DIM})",
            f"batch: {rs[0]['batch']} queries in one search() call, "
            f"{rs[0]['batch_s'] * 1e3:.1f} ms",
        ]
        mapped = [r["mapped"] for r in rs]
        if all(m is not None and m["rss"] for m in mapped):
            pss = sum(m["pss"] for m in mapped)
            lines += [
                "memory shared: each worker maps all of embeddings.npy (RSS "
                + " + ".join(_mb(m["rss"]) for m in mapped) + "),",
                f"but their PSS adds up to {_mb(pss)} = {pss / emb_bytes:.2f} x the file: "
                "one copy, in the page cache",
            ]
        else:
            lines.append("memory shared: not measured (no /proc/self/smaps on this system)")
        say("3. query", f"{QUERY_WORKERS} query worker processes mapped the checkpoint", *lines)
        out(f"   top hits for {HEADLINE_QUERY!r}:")
        for hid, score, content, meta in rs[0]["hits"]:
            src = f"{meta['source']} p.{meta['page']}" if meta else ""
            text = content if len(content) <= 49 else content[:46] + "..."
            out(f"{pad}{score:.3f}  {hid:<10} {src:<17} {text}")

        # ---- 4. near-real-time -----------------------------------------------------
        with Reader(path) as reader, Store(path) as store:
            fresh = "Energy bulletin: grid battery storage record for solar power."
            store.add("doc-fresh", embed_texts([fresh])[0], content=fresh,
                      metadata={"source": "live"})
            t0 = time.perf_counter()
            moved = reader.refresh()
            refresh_s = time.perf_counter() - t0
            seen = "doc-fresh" in reader and moved == 1
            top = reader.search(embed_texts([HEADLINE_QUERY])[0], k=1)[0].id
        say("4. refresh", "a document added after the checkpoint was visible to an open Reader",
            f"after refresh() in {refresh_s * 1e3:.2f} ms"
            + (", and is now the top hit" if top == "doc-fresh" else ""))

        # ---- 5. verify -------------------------------------------------------------
        t0 = time.perf_counter()
        report = verify(path)
        verify_s = time.perf_counter() - t0
        say("5. verify", f"{'ok' if report.ok else 'PROBLEMS FOUND'}: checkpoint files, id "
            f"index and log checked in {verify_s:.2f} s",
            *(f"problem: {p}" for p in report.problems))
        ok = report.ok and seen
        out(f"\ndone in {time.perf_counter() - t_start:.1f} s.  Where to go next:")
        if opts.keep:
            out(f"  mmwal inspect {path}")
            out(f"  mmwal dump {path} | head")
        else:
            out("  mmwal demo --keep    keep the store; then mmwal inspect / dump / verify it")
        out("  docs/tutorial.md     writers, query workers, checkpoints, recovery, step by step")
        out("  examples/            an ingestion pipeline, an HTTP search server with worker")
        out("                       processes, a recovery walk-through after kill -9")
        out("  mmwal stress         watch the guarantees hold on your own disk, under kill -9")
        out("  mmwal bench          a micro-benchmark (the full benchmarks: benchmarks/)")
        return 0 if ok else 1
    finally:
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
        sys.stdout.flush()
