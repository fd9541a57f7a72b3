"""Approximate search: one HNSW index (usearch) per large fragment, mapped read-only.

A checkpoint or compaction that writes a fragment of at least
``Config.ann_min_rows`` rows builds ``ann.usearch`` beside its files (the
``ann`` extra, usearch), with the fragment's row numbers as keys.  The file is
listed in the fragment's DESCRIPTOR with its size and CRC-32, and described by
the descriptor's ``ann`` entry (metric, dtype, connectivity).  Readers open it
with ``view=True``: a read-only mapping, so every query worker on a host
shares one copy in the page cache.

The index keeps its own reduced-precision copy of the vectors (f16 by
default): its hits are only candidates, re-scored exactly from the mapped
float32 matrix, and rows dead in the snapshot or outside a filter are dropped
before the top k is taken (over-fetching, doubling until k survive, else
exact).  Before an index file is mapped for the first time in a process its
CRC-32 is checked against the descriptor: a damaged graph is never handed to
the C++ search (which trusts it); the fragment is then searched exactly and
the problem is reported by ``stats()`` and ``verify``.
"""

from __future__ import annotations

import os
import threading
import zlib
from typing import Any

import numpy as np

from .. import _io

__all__ = ["ANN_FILE", "available", "build", "open_index"]

ANN_FILE = "ann.usearch"
#: mmwal metric -> usearch metric (dot is inner product; l2 squared Euclidean).
USEARCH_METRIC = {"cosine": "cos", "dot": "ip", "l2": "l2sq"}
_BLOCK = 1 << 22


def available() -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


#: The fragment size ``Config.ann_expansion_search`` is meant for; larger
#: fragments search wider by default (recall at a fixed breadth falls with size).
EXPANSION_ROWS = 100_000


def default_expansion(base: int, rows: int) -> int:
    """The default search breadth of an index of ``rows`` rows: ``base`` up to 100k rows,
    then ``base * (rows / 100k) ** 0.6`` (1M rows: 4 x base).

    Measured on clustered 384-d data (docs/benchmarks.md, "Search at scale"): at
    a breadth of 64, recall@10 is 0.9995 over 100k rows but 0.80 over 1M; 256
    gives 0.98 there, still ~80x the exact queries/s.
    """
    if rows <= EXPANSION_ROWS:
        return base
    wide: int = round(base * (rows / EXPANSION_ROWS) ** 0.6)
    return min(1 << 16, wide)


def _crc(path: str) -> tuple[int, int]:
    fd = _io.layer.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        crc = pos = 0
        while True:
            block = _io.layer.pread(fd, _BLOCK, pos)
            if not block:
                return pos, crc
            crc = zlib.crc32(block, crc)
            pos += len(block)
    finally:
        _io.layer.close(fd)


def build(dirpath: str, embeddings: np.ndarray, config: Any) -> tuple[dict[str, Any], list[int]]:
    """Build and save ``ann.usearch`` for ``embeddings`` (rows keyed 0..n-1), fsynced.

    Returns the descriptor's ``ann`` entry and the file's [size, CRC-32].
    """
    from usearch.index import Index

    n, dim = embeddings.shape
    index = Index(ndim=dim, metric=USEARCH_METRIC[config.ann_metric], dtype=config.ann_dtype,
                  connectivity=config.ann_connectivity,
                  expansion_add=config.ann_expansion_add,
                  expansion_search=config.ann_expansion_search)
    # Small steps: Python runs signal handlers (Ctrl-C) between them, and the
    # C++ build of one step is never longer than a moment.
    step = 4096
    for a in range(0, n, step):
        b = min(n, a + step)
        index.add(np.arange(a, b, dtype=np.uint64), np.ascontiguousarray(embeddings[a:b]),
                  threads=os.cpu_count() or 1)
    path = os.path.join(dirpath, ANN_FILE)
    index.save(path)
    del index
    fd = _io.layer.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _io.layer.fsync(fd)
    finally:
        _io.layer.close(fd)
    meta = {"file": ANN_FILE, "metric": config.ann_metric, "dtype": config.ann_dtype,
            "connectivity": config.ann_connectivity,
            "expansion_search": default_expansion(config.ann_expansion_search, n), "rows": n}
    size, crc = _crc(path)
    return meta, [size, crc]


class AnnHandle:
    """The mapped index of one fragment, opened on first use, shared by its snapshots."""

    def __init__(self, dirpath: str, meta: dict[str, Any], file_meta: list[int],
                 rows: int, dim: int) -> None:
        self.path = os.path.join(dirpath, ANN_FILE)
        self.meta = meta
        self.file_meta = file_meta
        self.rows = rows
        self.dim = dim
        self.metric = meta.get("metric")
        self.index: Any = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self._tried = False

    def get(self) -> Any:
        """The mapped usearch index, or None (no usearch, or a damaged file: exact search)."""
        if self._tried:
            return self.index
        with self.lock:
            if self._tried:
                return self.index
            try:
                self.index = self._open()
            except ImportError:
                self.index = None
            except (OSError, ValueError, RuntimeError) as exc:
                self.error = f"{self.path}: {exc}"
                self.index = None
            self._tried = True
        return self.index

    def _open(self) -> Any:
        from usearch.index import Index

        size, crc = _crc(self.path)
        if [size, crc] != list(self.file_meta):
            raise ValueError(f"size/CRC-32 {size}/{crc:#010x}, the descriptor says "
                             f"{self.file_meta[0]}/{self.file_meta[1]:#010x}; searched "
                             "exactly (run `mmwal verify`)")
        index = Index.restore(self.path, view=True)
        if index is None or index.ndim != self.dim or len(index) != self.rows:
            raise ValueError("the index does not describe this fragment; searched exactly")
        return index

    def search(self, Q: np.ndarray, count: int, expansion: int | None) -> tuple[Any, Any]:
        """(keys (m, count), counts (m,)) of the ``count`` nearest rows per query."""
        index = self.get()
        want = max(expansion or int(self.meta.get("expansion_search", 64)), count)
        with self.lock:  # expansion is a property of the shared index object
            if index.expansion_search != want:
                index.expansion_search = want
            m = index.search(Q, count, threads=os.cpu_count() or 1)
        # One query comes back as Matches (no .counts), a batch as BatchMatches.
        keys = np.asarray(m.keys).reshape(len(Q), -1)
        counts = (np.asarray(m.counts).reshape(len(Q)) if hasattr(m, "counts")
                  else np.full(len(Q), keys.shape[1]))
        return keys, counts


def open_index(view: Any) -> AnnHandle | None:
    """The ANN handle of a fragment view whose descriptor lists an index, else None."""
    d = view.descriptor
    meta = d.get("ann")
    if not isinstance(meta, dict) or meta.get("file") != ANN_FILE:
        return None
    fm = d["files"].get(ANN_FILE)
    if not isinstance(fm, list) or len(fm) != 2:
        return None
    return AnnHandle(view.dir, meta, fm, view.count, view.embeddings.shape[1])
