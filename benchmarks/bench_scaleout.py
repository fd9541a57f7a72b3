#!/usr/bin/env python
"""Scale-out costs: publish per incremental checkpoint, remote open cold/warm, sharded search.

Usage::

    python benchmarks/bench_scaleout.py                  # ~2-4 min on 2 cores
    python benchmarks/bench_scaleout.py --quick          # smoke run (~20 s)
    python benchmarks/bench_scaleout.py --json out.json --no-s3

Cases (issue "Beyond one host"):

publish   a store of N docs (dim 128, checkpointed, published), then +1000 adds and
          100 removes, checkpoint, publish: files and bytes uploaded, seconds; to
          file:// (a local directory) and to S3 (moto's server on localhost, through
          s3fs).  Target: flat in N (bytes = the new fragment + vectors + version +
          MANIFEST).
open      mmwal.Reader(url, cache_dir=...) + one query: cold (empty cache: download
          every file) vs warm (a second Reader over the filled cache), from file:// and
          S3, vs a local Reader on the store itself.  Median of 5 (3 with --quick).
sharded   exact cosine top-10 over 4 shards (ShardedReader, one thread per shard) vs one
          store holding every document: single queries and batches of 32, median
          latency of 50 / 20 rounds after a warm-up.

Stores are built in a temporary directory (removed at the end), seeded random float32
vectors, ids ``doc-{i}``, small contents and metadata, durability "os".  The machine is
shared: numbers are medians of a few rounds, for orders of magnitude, not gates.
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

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import mmwal
from mmwal._scale.remote import clear_cache
from mmwal._scale.sharded import shard_of, shard_paths

DIM = 128


def fill(store, start, n, shards=None):
    rng = np.random.default_rng(start)
    step = 10_000
    for a in range(start, start + n, step):
        b = min(start + n, a + step)
        ids = [f"doc-{i}" for i in range(a, b)]
        emb = rng.standard_normal((b - a, DIM)).astype(np.float32)
        metas = [{"i": i} for i in range(a, b)]
        contents = [f"content of document {i}" for i in range(a, b)]
        if shards is None:
            store.add_many(ids, emb, contents=contents, metadatas=metas)
        else:
            where = np.array([shard_of(i, len(shards)) for i in ids])
            for s, st in enumerate(shards):
                rows = np.flatnonzero(where == s)
                st.add_many([ids[j] for j in rows], emb[rows],
                            contents=[contents[j] for j in rows],
                            metadatas=[metas[j] for j in rows])


def median_time(fn, rounds):
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_publish(root, sizes, dests):
    out = []
    for n in sizes:
        path = os.path.join(root, f"pub-{n}")
        with mmwal.Store(path, dim=DIM, durability="os",
                         config=mmwal.Config(auto_compact=False)) as s:
            fill(s, 0, n)
            s.checkpoint()
            for url, opts in dests.values():
                mmwal.publish(path, f"{url}/pub-{n}", storage_options=opts)
            fill(s, 10_000_000, 1000)
            for i in range(0, 100 * 7, 7):
                s.remove(f"doc-{i}")
            info = s.checkpoint()
            for name, (url, opts) in dests.items():
                p = mmwal.publish(path, f"{url}/pub-{n}", storage_options=opts)
                row = {"docs": n, "dest": name, "files": p.files_uploaded,
                       "bytes": p.bytes_uploaded, "skipped": p.files_skipped,
                       "seconds": round(p.seconds, 4), "checkpoint_bytes": info.bytes_written}
                print(f"publish  {n:>8,} docs -> {name:4}: {p.files_uploaded} files, "
                      f"{p.bytes_uploaded:>9,} B, {p.seconds * 1e3:7.1f} ms "
                      f"(skipped {p.files_skipped})", flush=True)
                out.append(row)
        shutil.rmtree(path)
    return out


def bench_open(root, n, dests, rounds):
    path = os.path.join(root, "open")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        fill(s, 0, n)
        s.checkpoint()
    q = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    out = []

    def local():
        with mmwal.Reader(path) as r:
            r.search(q, k=10)

    t = median_time(local, rounds)
    print(f"open     local Reader + 1 query ({n:,} docs): {t * 1e3:8.1f} ms", flush=True)
    out.append({"docs": n, "how": "local", "seconds": t})
    for name, (url, opts) in dests.items():
        u = f"{url}/open"
        mmwal.publish(path, u, storage_options=opts)
        cache = os.path.join(root, f"cache-{name}")

        def cold(u=u, cache=cache, opts=opts):
            clear_cache(cache, u)
            with mmwal.Reader(u, cache_dir=cache, storage_options=opts) as r:
                r.search(q, k=10)

        def warm(u=u, cache=cache, opts=opts):
            with mmwal.Reader(u, cache_dir=cache, storage_options=opts) as r:
                r.search(q, k=10)

        tc = median_time(cold, rounds)
        warm()
        tw = median_time(warm, rounds)
        print(f"open     {name:4} cold {tc * 1e3:8.1f} ms   warm {tw * 1e3:8.1f} ms",
              flush=True)
        out += [{"docs": n, "how": f"{name} cold", "seconds": tc},
                {"docs": n, "how": f"{name} warm", "seconds": tw}]
    return out


def bench_sharded(root, n, rounds):
    one_path = os.path.join(root, "one")
    paths = shard_paths(os.path.join(root, "sharded"), 4)
    one = mmwal.Store(one_path, dim=DIM, durability="os")
    shards = [mmwal.Store(p, dim=DIM, durability="os") for p in paths]
    fill(one, 0, n)
    fill(None, 0, n, shards)
    for st in (one, *shards):
        st.checkpoint()
        st.close()
    rng = np.random.default_rng(2)
    q1 = rng.standard_normal((rounds, DIM)).astype(np.float32)
    qb = rng.standard_normal((32, DIM)).astype(np.float32)
    out = []
    with mmwal.Reader(one_path) as r1, mmwal.ShardedReader(paths) as sr:
        for name, r in (("one store", r1), ("4 shards", sr)):
            r.search(q1[0], k=10)
            it = iter(q1)
            t1 = median_time(lambda r=r, it=it: r.search(next(it), k=10), rounds)
            tb = median_time(lambda r=r: r.search(qb, k=10), max(5, rounds // 2))
            print(f"sharded  {name:9} ({n:,} docs): 1 query {t1 * 1e3:7.2f} ms, "
                  f"32 queries {tb * 1e3:7.2f} ms", flush=True)
            out.append({"docs": n, "how": name, "single_s": t1, "batch32_s": tb})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-s3", action="store_true", help="skip the moto S3 destination")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    sizes = [10_000, 50_000] if args.quick else [10_000, 100_000, 500_000]
    root = tempfile.mkdtemp(prefix="mmwal-bench-scale-")
    results = {}
    try:
        import contextlib

        with contextlib.ExitStack() as stack:
            dests = {"file": (f"file://{root}/remote", None)}
            if not args.no_s3:
                from scale_helpers import BUCKET, moto_server

                opts = stack.enter_context(moto_server())
                dests["s3"] = (f"s3://{BUCKET}/bench", opts)
            results["publish"] = bench_publish(root, sizes, dests)
            results["open"] = bench_open(root, sizes[1], dests, 3 if args.quick else 5)
            results["sharded"] = bench_sharded(root, 40_000 if args.quick else 200_000,
                                               20 if args.quick else 50)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
