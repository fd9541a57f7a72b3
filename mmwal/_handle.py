"""One store seen through a Store (writes) and a Reader (reads), for the framework adapters.

The LangChain and LlamaIndex vector stores hold one :class:`StoreHandle`.  It
opens the Store at once when the path already holds a store or ``dim`` is
given, and otherwise on the first write, with the dimension of the first
vector (so a user need not know the embedding size up front).  The Reader is
opened on the first read once the store exists, and refreshed before every
read: a write made through the same handle -- or by any other process -- is
visible to the next read (a refresh costs a ``stat`` plus the records
appended since the last one).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ._fsutil import Paths
from ._reader import Reader
from ._snapshot import Snapshot
from ._store import Store
from ._types import DURABILITY_MODES, Config
from .errors import ClosedError, InvalidInputError


class StoreHandle:
    """A lazily opened Store and Reader over one path (internal to the adapters)."""

    def __init__(self, path: str | os.PathLike[str], dim: int | None, durability: str,
                 config: Config | None) -> None:
        # Check what the Store would check now, not at the first write.
        if durability not in DURABILITY_MODES:
            raise InvalidInputError(f"durability must be one of {DURABILITY_MODES}, got "
                                    f"{durability!r}", got=durability)
        if dim is not None and (type(dim) is not int or dim < 1):
            raise InvalidInputError(f"dim must be a positive int, got {dim!r}", got=dim)
        if config is not None and not isinstance(config, Config):
            raise InvalidInputError(f"config must be an mmwal.Config, got {type(config).__name__}")
        self.path = os.path.abspath(os.fspath(path))
        self._durability = durability
        self._config = config
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._reader: Reader | None = None
        self._closed = False
        if dim is not None or self._exists():
            self._store = Store(self.path, dim=dim, durability=durability, config=config)

    def _exists(self) -> bool:
        return os.path.exists(Paths(self.path).manifest)

    @property
    def dim(self) -> int | None:
        """The store's dimension, or None while no store exists."""
        s = self._store
        return s.dim if s is not None else None

    def store(self, dim: int) -> Store:
        """The Store, created with ``dim`` if there is no store yet."""
        s = self._store
        if s is not None:
            return s
        with self._lock:
            self._check_open()
            if self._store is None:
                # Another process may have created the store meanwhile: then
                # ``dim`` is checked against it (DimensionError on a mismatch).
                self._store = Store(self.path, dim=dim, durability=self._durability,
                                    config=self._config)
            return self._store

    def existing_store(self) -> Store | None:
        """The Store if a store exists (opening it), else None; never creates one."""
        if self._store is None and self._exists():
            with self._lock:
                self._check_open()
                if self._store is None:
                    self._store = Store(self.path, durability=self._durability,
                                        config=self._config)
        return self._store

    def snapshot(self) -> Snapshot | None:
        """A fresh snapshot (every write so far applied), or None while no store exists."""
        self._check_open()
        r = self._reader
        if r is None:
            if self._store is None and not self._exists():
                return None
            with self._lock:
                self._check_open()
                if self._reader is None:
                    self._reader = Reader(self.path)
                r = self._reader
        else:
            r.refresh()
        return r.snapshot()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"this vector store over {self.path!r} is closed", path=self.path)

    def close(self) -> None:
        """Close the Reader and the Store (idempotent)."""
        with self._lock:
            self._closed = True
            r, s = self._reader, self._store
            self._reader = self._store = None
        if r is not None:
            r.close()
        if s is not None:
            s.close()

    def __repr__(self) -> str:
        return f"StoreHandle({self.path!r})"



def mmr(query: Any, candidates: Any, k: int, lambda_mult: float) -> list[int]:
    """Rows of ``candidates`` picked by maximal marginal relevance, in pick order.

    Each step picks the row maximising ``lambda_mult * cos(query, row) -
    (1 - lambda_mult) * max cos(row, picked)`` (Carbonell and Goldstein 1998):
    1 favours relevance only, 0 diversity only.  Cosine similarity is used
    whatever the search metric, as LangChain's and LlamaIndex's own helpers do.
    """
    E = np.asarray(candidates, dtype=np.float64)
    if k <= 0 or len(E) == 0:
        return []
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-30)
    qn = q / max(float(np.linalg.norm(q)), 1e-30)
    rel = En @ qn
    picked = [int(np.argmax(rel))]
    # The largest similarity of each row to any picked row so far.
    red = En @ En[picked[0]]
    while len(picked) < min(k, len(E)):
        score = lambda_mult * rel - (1.0 - lambda_mult) * red
        score[picked] = -np.inf
        j = int(np.argmax(score))
        picked.append(j)
        red = np.maximum(red, En @ En[j])
    return picked
