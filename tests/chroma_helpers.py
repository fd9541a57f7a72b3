"""Child-process bodies of tests/test_chroma_compat.py.

Kept apart so that spawned children import this small module only, not the
test module (which imports chromadb, seconds of start-up per child).
"""

from __future__ import annotations

import os
import time

import numpy as np

import mmwal
import mmwal.chroma as mc

N_PROC, PER_PROC, BATCH, QDIM = 4, 500, 25, 16


def _vec_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(QDIM).astype(np.float32)


def _writer(path: str, w: int) -> None:
    client = mc.PersistentClient(path)  # default durability: fsync
    col = client.get_or_create_collection("docs", metadata={"hnsw:space": "cosine"})
    for b in range(0, PER_PROC, BATCH):
        ids = [f"w{w}-{i}" for i in range(b, b + BATCH)]
        col.add(ids=ids, embeddings=np.stack([_vec_of(w * 10_000 + i)
                                              for i in range(b, b + BATCH)]),
                documents=[f"doc {x}" for x in ids], metadatas=[{"w": w, "i": i}
                                                                for i in range(b, b + BATCH)])


def _checkpointer(store_path: str, stop, done) -> None:
    n = 0
    while not stop.is_set():
        if not os.path.exists(os.path.join(store_path, "MANIFEST")):
            time.sleep(0.005)
            continue
        with mmwal.Store(store_path) as s:
            s.checkpoint()
            n += 1
    done.put(n)


def _creator(path: str, barrier, out) -> None:
    client = mc.PersistentClient(path, durability="os")
    barrier.wait(60)
    got = {}
    for i in range(8):
        col = client.get_or_create_collection(f"race-{i}")
        col.add(ids=[f"{os.getpid()}"], embeddings=[[1.0, 0.0]])
        got[col.name] = col.id
    out.put(got)


def _holder(path: str, ready, go, result) -> None:
    col = mc.PersistentClient(path, durability="os").get_collection("victim")
    col.add(ids=["held"], embeddings=[[1.0, 1.0]])
    ready.set()
    go.wait(30)
    try:
        col.add(ids=["late"], embeddings=[[1.0, 1.0]])
        result.put("added")
    except mc.NotFoundError:
        result.put("NotFoundError")
