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

__all__ = ["MmwalDatasink", "MmwalDatasource", "WriteInfo", "read_mmwal", "store_paths",
           "write_mmwal"]

_ray = require("ray.data", "ray", "mmwal.ray")
_pa = require("pyarrow", "ray", "mmwal.ray")
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
