#!/usr/bin/env python
"""A multiprocessing ingestion pipeline: several worker processes, one mmwal store.

The main process lists the input files and hands their paths to N worker
processes over a queue.  Each worker opens its *own* ``mmwal.Store`` (never
share a Store object between processes), splits a file into passages, embeds
them and writes them with ONE ``add_many`` call: a file's passages become
visible all together or, after a crash, not at all.  Meanwhile the main process
checkpoints whenever ``needs_checkpoint()`` says the log has grown enough -
the workers keep appending during a checkpoint.

Run it::

    python examples/ingest_pipeline.py                    # a temporary store, removed
    python examples/ingest_pipeline.py --store my.store   # keep the store
    python examples/ingest_pipeline.py --workers 8 --files 2000

Then look at the store with ``mmwal inspect my.store`` or ``mmwal dump my.store``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time

from _embed import DIM, embed

import mmwal

TOPICS = {
    "energy": "solar battery grid wind turbine storage inverter voltage hydrogen",
    "health": "patient clinical trial vaccine dosage therapy diagnosis hospital",
    "finance": "revenue earnings margin dividend portfolio inflation bond audit",
    "software": "database latency kernel compiler cache container query memory",
}


def make_corpus(directory: str, n_files: int, seed: int = 0) -> list[str]:
    """Write ``n_files`` small text files (paragraphs separated by blank lines)."""
    rng = random.Random(seed)
    paths = []
    for i in range(n_files):
        topic = rng.choice(list(TOPICS))
        words = TOPICS[topic].split()
        paragraphs = [
            f"{topic.capitalize()} note {i}.{p}: "
            + " ".join(rng.choice(words) for _ in range(rng.randint(12, 30)))
            for p in range(rng.randint(3, 12))
        ]
        path = os.path.join(directory, f"{topic}-{i:05d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(paragraphs))
        paths.append(path)
    return paths


def worker(store_path: str, todo: mp.Queue, done: mp.Queue) -> None:
    """Ingest files until the ``None`` sentinel; report (file, passages, first seq)."""
    # One Store per process.  durability="fsync": each add_many is on stable
    # storage when it returns; concurrent workers share fsyncs (group commit).
    with mmwal.Store(store_path, durability="fsync") as store:
        for path in iter(todo.get, None):
            with open(path, encoding="utf-8") as f:
                passages = [p.strip() for p in f.read().split("\n\n") if p.strip()]
            name = os.path.basename(path)
            ids = [f"{name}#{k}" for k in range(len(passages))]
            metas = [{"source": name, "passage": k} for k in range(len(passages))]
            seqs = store.add_many(ids, embed(passages), passages, metas)
            done.put((name, len(passages), seqs.start))
    done.put(None)  # this worker is finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store directory (default: a temporary one, removed)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--files", type=int, default=300)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="mmwal-ingest-")
    store_path = args.store or os.path.join(tmp, "store")
    try:
        corpus = make_corpus(tmp, args.files)
        # Create the store (and its dim) once, before the workers open it.  A low
        # threshold, so that this small example checkpoints a few times.
        config = mmwal.Config(checkpoint_threshold=2_000, keep_checkpoints=2)
        with mmwal.Store(store_path, dim=DIM, config=config) as store:
            todo: mp.Queue = mp.Queue()
            done: mp.Queue = mp.Queue()
            procs = [mp.Process(target=worker, args=(store_path, todo, done))
                     for _ in range(args.workers)]
            t0 = time.perf_counter()
            for p in procs:
                p.start()
            try:
                for path in corpus:
                    todo.put(path)
                for _ in procs:
                    todo.put(None)
                files = passages = finished = checkpoints = 0
                while finished < len(procs):
                    item = done.get(timeout=120)
                    if item is None:
                        finished += 1
                        continue
                    files += 1
                    passages += item[1]
                    # The main process is the checkpointer: cheap to ask, and a
                    # checkpoint does not stop the workers from appending.
                    if files % 25 == 0 and store.needs_checkpoint():
                        info = store.checkpoint()
                        checkpoints += 1
                        print(f"  checkpoint {info.id}: {info.documents:,} passages "
                              f"folded in, up to seq {info.seq:,}")
            finally:
                for p in procs:
                    p.join(timeout=60)
                    if p.is_alive():
                        p.terminate()
            elapsed = time.perf_counter() - t0
            info = store.checkpoint()  # fold the rest: readers open it zero-copy
        print(f"ingested {files:,} files = {passages:,} passages with {args.workers} worker "
              f"processes in {elapsed:.2f} s ({passages / elapsed:,.0f} passages/s), "
              f"{checkpoints + 1} checkpoints, the last one {info.id} at seq {info.seq:,}")

        with mmwal.Reader(store_path) as reader:
            assert len(reader) == passages, (len(reader), passages)
            query = "battery storage for the solar grid"
            print(f"{len(reader):,} passages in the store; top hits for {query!r}:")
            for hit in reader.search(embed([query])[0], k=3):
                doc = reader[hit.id]
                print(f"  {hit.score:.3f}  {hit.id:<22} {doc.content[:60]}...")
        report = mmwal.verify(store_path)
        print(f"verify: {'ok' if report.ok else report.problems}")
        if args.store:
            print(f"the store is at {store_path}: try `mmwal inspect {store_path}`")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
