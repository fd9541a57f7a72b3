"""``mmwal.ShardedReader``: one search over several shard stores, top-k merged.

A sharded store is N ordinary stores; a document lives in shard
``shard_of(id, N)`` (CRC-32 of the id's UTF-8 bytes, mod N: stable across
processes, machines and Python versions, unlike ``hash()``).  The writers
(``mmwal.ray.write_mmwal(..., shards=N)``) and :class:`ShardedReader` share
that one function, so a lookup by id reads one shard.
"""

from __future__ import annotations

import heapq
import os
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._reader import Reader
from .._types import Hit
from ..errors import InvalidInputError
from ._fs import is_url

__all__ = ["ShardedReader", "shard_of", "shard_paths"]


def shard_of(id: str, shards: int) -> int:
    """The shard of a document id: CRC-32 of its UTF-8 bytes modulo ``shards``."""
    return zlib.crc32(id.encode("utf-8", "surrogatepass")) % shards


def shard_paths(path: str, shards: int) -> list[str]:
    """The shard stores of a sharded store at ``path``: ``path/shard-000`` ... in order."""
    return [os.path.join(path, f"shard-{i:03d}") for i in range(shards)]


#: Metrics whose score is a distance (lower is better); the others are similarities.
_LOWER_IS_BETTER = frozenset({"l2"})


def _merge(lists: Sequence[list[Hit]], k: int, metric: str) -> list[Hit]:
    # Stable in shard order for equal scores; heapq keeps the k best of n in O(n log k).
    flat = [h for hits in lists for h in hits]
    if metric in _LOWER_IS_BETTER:
        return heapq.nsmallest(k, flat, key=lambda h: h.score)
    return heapq.nlargest(k, flat, key=lambda h: h.score)


class ShardedReader:
    """A read-only view over shard stores (local paths or published URLs).

    ``search`` runs on every shard in a thread pool (numpy's matrix products
    release the GIL) and merges the per-shard top-k: the result equals a
    search over one store holding every document.  ``get``/``in`` read the
    one shard :func:`shard_of` names; ``len`` sums the shards.

    Parameters
    ----------
    paths_or_urls
        The shards in order (shard i holds the ids with ``shard_of(id, N) == i``).
        Local store paths, or URLs of published shards (then ``cache_dir`` is
        needed: see :class:`mmwal.Reader`).
    cache_dir, storage_options
        For URL shards.
    max_workers
        Threads of the search pool (default: one per shard, at most the CPUs).
    refresh_every
        Passed to every shard Reader.

    Examples
    --------
    >>> import mmwal, tempfile
    >>> from mmwal._scale.sharded import shard_of, shard_paths
    >>> paths = shard_paths(tempfile.mkdtemp(), 2)
    >>> stores = [mmwal.Store(p, dim=2, durability="os") for p in paths]
    >>> for i, v in {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}.items():
    ...     _ = stores[shard_of(i, 2)].add(i, v)
    >>> for s in stores:
    ...     s.close()
    >>> with mmwal.ShardedReader(paths) as r:
    ...     len(r), [h.id for h in r.search([1.0, 0.1], k=2)], r["b"].embedding.tolist()
    (3, ['a', 'c'], [0.0, 1.0])
    """

    def __init__(self, paths_or_urls: Iterable[Any], *, cache_dir: Any = None,
                 storage_options: dict[str, Any] | None = None, max_workers: int | None = None,
                 refresh_every: float | None = None) -> None:
        self._closed = True
        if isinstance(paths_or_urls, (str, bytes, os.PathLike)):
            raise InvalidInputError("ShardedReader takes a list of shard paths or URLs, got one "
                                    f"{type(paths_or_urls).__name__}; for one store use "
                                    "mmwal.Reader", got=str(paths_or_urls))
        shards = list(paths_or_urls)
        if not shards:
            raise InvalidInputError("ShardedReader needs at least one shard path or URL")
        self.shards = shards
        self.readers: list[Reader] = []
        try:
            for p in shards:
                if is_url(p):
                    self.readers.append(Reader(p, cache_dir=cache_dir,  # type: ignore[call-arg]
                                               storage_options=storage_options,
                                               refresh_every=refresh_every))
                else:
                    self.readers.append(Reader(p, refresh_every=refresh_every))
            dims = {r.dim for r in self.readers}
            if len(dims) != 1:
                raise InvalidInputError(f"shards have different dimensions {sorted(dims)}: "
                                        f"{shards!r:.200}", got=sorted(dims))
        except BaseException:
            for r in self.readers:
                r.close()
            raise
        self.dim: int = self.readers[0].dim
        n = len(self.readers)
        workers = max_workers or min(n, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="mmwal-shard")
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            from ..errors import ClosedError

            raise ClosedError(f"ShardedReader({self.shards!r:.80}) is closed")

    def _fan(self, fn: Any) -> list[Any]:
        self._check()
        if len(self.readers) == 1:
            return [fn(self.readers[0])]
        futures = [self._pool.submit(fn, r) for r in self.readers]
        return [f.result() for f in futures]

    def _shard(self, id: Any) -> Reader:
        self._check()
        if not isinstance(id, str):
            raise InvalidInputError(f"ids are str, got {type(id).__name__}",
                                    got=type(id).__name__)
        return self.readers[shard_of(id, len(self.readers))]

    # ------------------------------------------------------------------ reads
    def search(self, q: Any, k: int = 10, metric: str = "cosine", *, where: Any = None,
               exact: bool | None = None, expansion: int | None = None,
               where_document: Any = None) -> Any:
        """Top-k over every shard; the parameters and result of :meth:`mmwal.Reader.search`."""
        results = self._fan(lambda r: r.search(q, k, metric, where=where, exact=exact,
                                               expansion=expansion,
                                               where_document=where_document))
        if len(results) == 1:
            return results[0]
        if np.ndim(q) == 2:  # a batch (the shards validated q already)
            return [_merge([res[i] for res in results], k, metric)
                    for i in range(len(results[0]))]
        return _merge(results, k, metric)

    def find(self, where: Any = None, limit: int | None = None, *,
             where_document: Any = None) -> list[str]:
        """Ids matching ``where`` on every shard, shard after shard (at most ``limit``)."""
        found = self._fan(lambda r: r.find(where, limit, where_document=where_document))
        out = [i for ids in found for i in ids]
        return out if limit is None else out[:limit]

    def get(self, id: str, default: Any = None) -> Any:
        """The Document with this id, from the shard :func:`shard_of` names, or ``default``."""
        return self._shard(id).get(id, default)

    def __getitem__(self, id: str) -> Any:
        return self._shard(id)[id]

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._shard(id)

    def __len__(self) -> int:
        self._check()
        return sum(len(r) for r in self.readers)

    def refresh(self) -> int:
        """Refresh every shard (in parallel); the total seq advance."""
        return sum(self._fan(lambda r: r.refresh()))

    def stats(self) -> list[Any]:
        """Each shard's :class:`mmwal.ReaderStats`, in shard order."""
        return self._fan(lambda r: r.stats())

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every shard Reader and the thread pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        for r in self.readers:
            r.close()

    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.readers)} shards"
        return f"ShardedReader({state})"
