"""Ray Data for mmwal: a datasink that ingests into stores, a datasource that reads versions.

Needs ``pip install 'mmwal[ray]'``.  Both use Ray Data's public
:class:`ray.data.Datasink` / :class:`ray.data.Datasource` APIs:

* :func:`write_mmwal` appends a dataset's blocks as ``add_many`` batches
  (``Store.add_arrow``) into one store, or into ``shards`` stores
  ``path/shard-000`` ... chosen by :func:`mmwal._scale.sharded.shard_of`
  of the id (the hash :class:`mmwal.ShardedReader` routes ``get`` by), then
  checkpoints each store once.  Many write tasks append to one store at once:
  that is what mmwal's log is for.  The stores live on the driver's host (an
  mmwal log needs a local filesystem and its locks: ``supports_distributed_writes``
  is False); publish them (:func:`mmwal.publish`) to serve them elsewhere.
* :class:`ShardedSearch` serves each shard from its own Ray actor (a Reader
  on whichever node Ray places it: give published URLs for a cluster) and
  merges their top-k, like :class:`mmwal.ShardedReader` does with threads.
* :func:`read_mmwal` reads the live rows of the current version (not the log
  tail: checkpoint first) of a store, a sharded store or a published URL, as
  Arrow blocks with the columns of ``Reader.to_arrow`` (``id``, ``content``,
  ``metadata`` as JSON text, ``embedding`` as ``fixed_size_list<float32>``).
  A fragment without deleted rows gives its embeddings zero-copy from the
  mapped file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._arrow import METADATA_ENCODING, _dumps, embedding_array, require
from ._fsutil import Paths
from ._scale._fs import is_url
from ._scale.sharded import shard_of, shard_paths
from ._types import CheckpointInfo
from .errors import InvalidInputError

__all__ = ["MmwalDatasink", "MmwalDatasource", "ShardedSearch", "WriteInfo", "read_mmwal",
           "store_paths", "write_mmwal"]

_ray = require("ray.data", "ray", "mmwal.ray")
_pa = require("pyarrow", "ray", "mmwal.ray")
_core: Any = require("ray", "ray", "mmwal.ray")  # ray itself, untyped here
_Datasink: Any = _ray.Datasink
_Datasource: Any = _ray.Datasource


def store_paths(path: str) -> list[str]:
    """The stores under ``path``: itself, or its ``shard-NNN`` stores in order."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "MANIFEST")):
        return [path]
    try:
        names = sorted(n for n in os.listdir(path)
                       if n.startswith("shard-") and n[6:].isdigit()
                       and os.path.exists(os.path.join(path, n, "MANIFEST")))
    except FileNotFoundError:
        names = []
    if not names or names != [f"shard-{i:03d}" for i in range(len(names))]:
        from .errors import StoreNotFoundError

        raise StoreNotFoundError(f"no mmwal store at {path} (no MANIFEST) and no complete "
                                 "set of shard-000... stores under it", path=path)
    return [os.path.join(path, n) for n in names]


# ============================================================================ sink
@dataclass
class WriteInfo:
    """What :func:`write_mmwal` wrote: rows, the store paths, each store's checkpoint."""

    rows: int
    paths: list[str]
    checkpoints: list[CheckpointInfo] = field(default_factory=list)


def _plain_columns(table: Any) -> Any:
    """Ray's tensor extension columns as plain Arrow lists (what ``add_arrow`` reads)."""
    pa = _pa
    for i, f in enumerate(table.schema):
        if isinstance(f.type, pa.ExtensionType):
            col = table.column(i)
            table = table.set_column(i, f.name, pa.chunked_array(
                [c.storage for c in col.chunks], type=f.type.storage_type))
    return table


class MmwalDatasink(_Datasink):  # type: ignore[misc]
    """The Ray Data datasink behind :func:`write_mmwal` (see there for the parameters)."""

    def __init__(self, path: str, *, dim: int | None, shards: int | None, batch_size: int,
                 id_column: str, embedding_column: str, content_column: str | None,
                 metadata_column: str | None, durability: str, checkpoint: bool) -> None:
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                                   or not 1 <= shards <= 999):
            raise InvalidInputError(f"shards must be None or an int in 1..999, got {shards!r}",
                                    got=shards)
        self.path = os.path.abspath(os.fspath(path))
        self.dim = dim
        self.shards = shards
        self.paths = shard_paths(self.path, shards) if shards else [self.path]
        self.batch_size = batch_size
        self.columns: dict[str, Any] = dict(
            id_column=id_column, embedding_column=embedding_column,
            content_column=content_column, metadata_column=metadata_column)
        self.durability = durability
        self.checkpoint = checkpoint
        self.info: WriteInfo | None = None

    @property
    def supports_distributed_writes(self) -> bool:
        return False  # one host: the log needs a local filesystem (docs/scale-out.md)

    def get_name(self) -> str:
        return "mmwal"

    def on_write_start(self, schema: Any = None) -> None:
        from ._store import Store

        if self.dim is not None:  # create the stores once, here, before the tasks race
            for p in self.paths:
                Store(p, dim=self.dim, durability=self.durability).close()

    def _dim_of(self, table: Any) -> int:
        t = table.schema.field(self.columns["embedding_column"]).type
        if hasattr(t, "list_size") and t.list_size > 0:
            return int(t.list_size)
        first = table.column(self.columns["embedding_column"])[0].as_py()
        return len(first)

    def write(self, blocks: Any, ctx: Any) -> int:
        from ray.data.block import BlockAccessor

        from ._store import Store

        stores: dict[int, Any] = {}
        parts: list[tuple[int, np.ndarray | None]]
        n = 0
        try:
            for block in blocks:
                table = _plain_columns(BlockAccessor.for_block(block).to_arrow())
                if not table.num_rows:
                    continue
                if self.shards:
                    ids = table.column(self.columns["id_column"]).to_pylist()
                    where = np.fromiter((shard_of(i, self.shards) if isinstance(i, str) else 0
                                         for i in ids), np.int64, len(ids))
                    parts = [(s, np.flatnonzero(where == s)) for s in range(self.shards)]
                else:
                    parts = [(0, None)]
                for s, rows in parts:
                    if rows is not None and not len(rows):
                        continue
                    sub = table if rows is None else table.take(_pa.array(rows))
                    st = stores.get(s)
                    if st is None:
                        st = stores[s] = Store(self.paths[s], dim=self.dim or self._dim_of(sub),
                                               durability=self.durability)
                    st.add_arrow(sub, batch_size=self.batch_size, **self.columns)
                n += table.num_rows
        finally:
            for st in stores.values():
                st.close()
        return n

    def on_write_complete(self, write_result: Any) -> None:
        from ._store import Store

        rows = sum(int(r) for r in write_result.write_returns)
        infos = []
        if self.checkpoint:
            for p in self.paths:
                if os.path.exists(os.path.join(p, "MANIFEST")):
                    with Store(p, durability=self.durability) as st:
                        infos.append(st.checkpoint())
        self.info = WriteInfo(rows, list(self.paths), infos)


def write_mmwal(dataset: Any, path: str | os.PathLike[str], *, shards: int | None = None,
                batch_size: int = 1000, id_column: str = "id",
                embedding_column: str = "embedding", content_column: str | None = "content",
                metadata_column: str | None = "metadata", dim: int | None = None,
                durability: str = "fsync", checkpoint: bool = True,
                concurrency: int | None = None) -> WriteInfo:
    """Write a Ray dataset into an mmwal store, or ``shards`` stores by hash of the id.

    Parameters
    ----------
    dataset
        A ``ray.data.Dataset`` with an id column (str) and an embedding
        column (fixed-size or variable lists of numbers, or Ray's tensor
        column); optional content (str) and metadata (struct, map or JSON
        text) columns, as :meth:`mmwal.Store.add_arrow` reads them.
    path
        The store; with ``shards=N``, the directory of ``shard-000`` ...
        ``shard-{N-1:03d}`` (read them with ``mmwal.ShardedReader``).
    batch_size
        Rows per ``add_many`` (one atomic log record).
    dim
        The dimension, to create new stores (default: from the first block).
    durability
        Of the writers (``"fsync"``, ``"os"``...), see :class:`mmwal.Store`.
    checkpoint
        Checkpoint every store once all blocks are written.
    concurrency
        Write tasks at once (Ray's default when None).

    Returns
    -------
    WriteInfo

    Examples
    --------
    A sketch (it starts Ray; tests/test_scale_ray.py runs the real thing)::

        import numpy as np, ray
        from mmwal.ray import write_mmwal
        ds = ray.data.from_items([{"id": f"d{i}", "embedding": np.ones(4, np.float32)}
                                  for i in range(100)])
        write_mmwal(ds, "/data/docs", shards=4).rows   # -> 100
    """
    sink = MmwalDatasink(os.fspath(path), dim=dim, shards=shards, batch_size=batch_size,
                         id_column=id_column, embedding_column=embedding_column,
                         content_column=content_column, metadata_column=metadata_column,
                         durability=durability, checkpoint=checkpoint)
    dataset.write_datasink(sink, concurrency=concurrency)
    assert sink.info is not None
    return sink.info


# ============================================================================ source
def _fragment_table(view: Any, dead: Any, a: int, b: int, dim: int, columns: list[str],
                    meta: dict[str, str]) -> Any:
    """Rows [a, b) of one mapped fragment, live ones only, as an Arrow table."""
    pa = _pa
    live = None if dead is None else np.flatnonzero(~dead[a:b])
    arrays = []
    fields = []
    for name in columns:
        if name == "id":
            ids = view.id_block(a, b - a)
            keep = ids if live is None else [ids[j] for j in live.tolist()]
            arrays.append(pa.array([x.decode("utf-8") for x in keep], pa.string()))
            fields.append(pa.field(name, pa.string(), nullable=False))
        elif name in ("content", "metadata"):
            docs = view.doc_block(a, b - a)
            if live is not None:
                docs = [docs[j] for j in live.tolist()]
            if name == "content":
                arrays.append(pa.array([d[0] for d in docs], pa.string()))
                fields.append(pa.field(name, pa.string(), nullable=False))
            else:
                arrays.append(pa.array([None if d[1] is None else _dumps(d[1]) for d in docs],
                                       pa.string()))
                fields.append(pa.field(name, pa.string(), metadata=METADATA_ENCODING))
        else:
            emb = view.embeddings[a:b]  # a view of the mapping: zero-copy without deletions
            if live is not None:
                emb = np.ascontiguousarray(emb[live])
            arrays.append(embedding_array(pa, emb, dim))
            fields.append(pa.field(name, pa.list_(pa.float32(), dim), nullable=False))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def _read_blocks(ref: tuple[Any, ...], version: Any, dim: int,
                 pieces: list[tuple[int, int, int]], columns: list[str]) -> Any:
    """A read task: map the planned version (pinned, by its files) and yield its pieces."""
    from ._version import VersionView

    reader = None
    if ref[0] == "url":
        from ._scale.remote import RemoteReader

        reader = RemoteReader(ref[1], cache_dir=ref[2], storage_options=ref[3])
        root = reader.cache_path
    else:
        root = ref[1]
    try:
        vv = VersionView(Paths(root), None, dim, version=version)
        meta = {"mmwal.checkpoint": str(version.id), "mmwal.seq": str(version.seq),
                "mmwal.dim": str(dim)}
        for i, a, b in pieces:
            p = vv.parts[i]
            yield _fragment_table(p.view, p.dead, a, b, dim, columns, meta)
    finally:
        if reader is not None:
            reader.close()


class MmwalDatasource(_Datasource):  # type: ignore[misc]
    """The Ray Data datasource behind :func:`read_mmwal` (see there for the parameters)."""

    def __init__(self, path_or_url: Any, *, cache_dir: Any = None,
                 storage_options: dict[str, Any] | None = None,
                 columns: list[str] | None = None, rows_per_block: int = 65536) -> None:
        from ._arrow import _select
        from ._reader import Reader

        self.columns = _select(columns)
        targets = list(path_or_url) if isinstance(path_or_url, (list, tuple)) else [path_or_url]
        self._plans: list[tuple[tuple[Any, ...], Any, int, list[tuple[int, int, int]]]] = []
        self._remote = False
        for t in targets:
            refs: list[tuple[Any, ...]]
            if is_url(t):
                self._remote = True
                cdir = os.fspath(cache_dir) if cache_dir is not None else os.path.join(
                    tempfile.gettempdir(), "mmwal-cache")
                refs = [("url", t, cdir, storage_options)]
            else:
                refs = [("path", p) for p in store_paths(os.fspath(t))]
            for ref in refs:
                if ref[0] == "url":
                    r = Reader(ref[1], cache_dir=ref[2],  # type: ignore[call-arg]
                               storage_options=ref[3])
                else:
                    r = Reader(ref[1])
                try:
                    snap = r.snapshot()
                    base = snap._base
                    dim = r.dim
                    if base is None:
                        continue
                    pieces = []
                    for i, p in enumerate(base.parts):
                        step = max(p.view.chunk_docs,
                                   rows_per_block // p.view.chunk_docs * p.view.chunk_docs)
                        for a in range(0, p.view.count, step):
                            pieces.append((i, a, min(p.view.count, a + step)))
                    self._plans.append((ref, base.version, dim, pieces))
                finally:
                    r.close()

    def supports_distributed_reads(self) -> bool:  # type: ignore[override]
        return self._remote  # a local store is read on its own host

    def get_name(self) -> str:
        return "mmwal"

    def estimate_inmemory_data_size(self) -> int:
        return sum(v.documents * dim * 4 for _r, v, dim, _p in self._plans)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[Any]:
        from ray.data.block import BlockMetadata

        work = [(k, piece) for k, plan in enumerate(self._plans) for piece in plan[3]]
        if not work:
            return []
        n = max(1, min(parallelism if parallelism > 0 else len(work), len(work)))
        tasks = []
        columns = self.columns
        for t in range(n):
            mine = work[t::n]
            by_plan: dict[int, list[tuple[int, int, int]]] = {}
            for k, piece in mine:
                by_plan.setdefault(k, []).append(piece)
            calls = [(self._plans[k][0], self._plans[k][1], self._plans[k][2], pieces)
                     for k, pieces in by_plan.items()]
            rows = sum(piece[2] - piece[1] for _k, piece in mine)
            dim = calls[0][2]

            def read_fn(calls: list[Any] = calls) -> Any:
                for ref, v, d, pieces in calls:
                    yield from _read_blocks(ref, v, d, pieces, columns)

            meta = BlockMetadata(num_rows=None, size_bytes=rows * 4 * (dim + 8),
                                 exec_stats=None, input_files=None)
            tasks.append(_ray.ReadTask(read_fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_mmwal(path_or_url: Any, *, cache_dir: Any = None,
               storage_options: dict[str, Any] | None = None,
               columns: list[str] | None = None, rows_per_block: int = 65536,
               **read_args: Any) -> Any:
    """A ``ray.data.Dataset`` of the live rows of a store's current version.

    Parameters
    ----------
    path_or_url
        A store, a directory of ``shard-NNN`` stores (as :func:`write_mmwal`
        makes them), a published URL, or a list of these.
    cache_dir, storage_options
        For a URL (see :class:`mmwal.Reader`); ``cache_dir`` defaults to
        ``<tmp>/mmwal-cache`` on each node.
    columns
        A subset of ``["id", "content", "metadata", "embedding"]``.
    rows_per_block
        Rows per Arrow block (rounded to the fragment's metadata chunk).
    read_args
        Passed to ``ray.data.read_datasource`` (``override_num_blocks``,
        ``concurrency``...).

    Notes
    -----
    What is read is the version current when this is called (its files stay
    readable while the tasks run unless a checkpoint retires them first);
    the log tail after it is not: checkpoint (and publish) first.
    """
    src = MmwalDatasource(path_or_url, cache_dir=cache_dir, storage_options=storage_options,
                          columns=columns, rows_per_block=rows_per_block)
    return _ray.read_datasource(src, **read_args)


# ============================================================================ actors
class _ShardServer:
    """A Ray actor holding one shard's Reader (a local path or a published URL)."""

    def __init__(self, target: str, cache_dir: Any, storage_options: Any) -> None:
        from ._reader import Reader

        if is_url(target):
            cdir = cache_dir if cache_dir is not None else os.path.join(
                tempfile.gettempdir(), "mmwal-cache")
            self.reader = Reader(target, cache_dir=cdir,  # type: ignore[call-arg]
                                 storage_options=storage_options)
        else:
            self.reader = Reader(target)

    def search(self, q: Any, k: int, metric: str, kw: dict[str, Any]) -> Any:
        return self.reader.search(q, k, metric, **kw)

    def get(self, id: str) -> Any:
        return self.reader.get(id)

    def size(self) -> int:
        return len(self.reader)

    def refresh(self) -> int:
        return self.reader.refresh()

    def close(self) -> None:
        self.reader.close()


class ShardedSearch:
    """One Ray actor per shard; ``search`` fans out to them and merges the top-k.

    The same results, routing (:func:`mmwal._scale.sharded.shard_of`) and
    methods as :class:`mmwal.ShardedReader` (``search``, ``get``, ``in``,
    ``len``, ``refresh``, ``close``, ``with``), for shards served on other
    nodes: pass published URLs (each actor fills its own node's cache) or
    paths every node can see.  Needs a running Ray (``ray.init()``).

    Parameters
    ----------
    paths_or_urls
        The shards, in order.
    cache_dir, storage_options
        For URL shards, on each actor's node (default ``<tmp>/mmwal-cache``).
    actor_options
        Passed to ``ray.remote`` for each actor (e.g. ``{"num_cpus": 1}``;
        default ``{"num_cpus": 0}``: the actors only take the CPU a query uses).
    """

    def __init__(self, paths_or_urls: Any, *, cache_dir: Any = None,
                 storage_options: dict[str, Any] | None = None,
                 actor_options: dict[str, Any] | None = None) -> None:
        ray = _core
        if isinstance(paths_or_urls, (str, bytes, os.PathLike)):
            raise InvalidInputError("ShardedSearch takes a list of shard paths or URLs",
                                    got=str(paths_or_urls))
        shards = [os.fspath(p) if not is_url(p) else p for p in paths_or_urls]
        if not shards:
            raise InvalidInputError("ShardedSearch needs at least one shard path or URL")
        self.shards = shards
        actor = ray.remote(**(actor_options or {"num_cpus": 0}))(_ShardServer)
        cdir = os.fspath(cache_dir) if cache_dir is not None else None
        self._actors = [actor.remote(s, cdir, storage_options) for s in shards]
        self._closed = False
        self.size()  # surfaces a shard that cannot be opened now, not on the first query

    def _check(self) -> None:
        if self._closed:
            from .errors import ClosedError

            raise ClosedError("ShardedSearch is closed")

    def search(self, q: Any, k: int = 10, metric: str = "cosine", **kw: Any) -> Any:
        """Top-k over every shard (``where=``, ``exact=``... as on :meth:`mmwal.Reader.search`)."""
        from ._scale.sharded import _merge

        ray = _core

        self._check()
        q = np.asarray(q, dtype=np.float32)
        results = ray.get([a.search.remote(q, k, metric, kw) for a in self._actors])
        if len(results) == 1:
            return results[0]
        if q.ndim == 2:
            return [_merge([res[i] for res in results], k, metric)
                    for i in range(len(results[0]))]
        return _merge(results, k, metric)

    def get(self, id: str, default: Any = None) -> Any:
        """The Document with this id from the shard its hash names, or ``default``."""
        ray = _core
        self._check()
        if not isinstance(id, str):
            raise InvalidInputError(f"ids are str, got {type(id).__name__}",
                                    got=type(id).__name__)
        doc = ray.get(self._actors[shard_of(id, len(self._actors))].get.remote(id))
        return default if doc is None else doc

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self.get(id) is not None

    def size(self) -> int:
        ray = _core
        self._check()
        return sum(ray.get([a.size.remote() for a in self._actors]))

    __len__ = size

    def refresh(self) -> int:
        """Refresh every shard's Reader; the total seq advance."""
        ray = _core
        self._check()
        return sum(ray.get([a.refresh.remote() for a in self._actors]))

    def close(self) -> None:
        """Close the Readers and end the actors; idempotent."""
        ray = _core
        if self._closed:
            return
        self._closed = True
        try:
            ray.get([a.close.remote() for a in self._actors])
        finally:
            for a in self._actors:
                ray.kill(a)

    def __enter__(self) -> ShardedSearch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
