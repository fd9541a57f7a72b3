"""Arrow and pandas interchange: snapshots out as tables, tables in as ``add_many`` batches.

Optional: pyarrow and pandas are imported inside these functions only, so
``import mmwal`` never loads them; a missing one raises
:class:`mmwal.errors.MissingDependencyError` naming the extra to install.

Out (:func:`snapshot_table`): one row per live document, in the snapshot's
row order, columns ``id`` (string), ``content`` (string), ``metadata``
(string: each dict as JSON text, null for None) and ``embedding``
(``fixed_size_list<float32>[dim]``).  Metadata is JSON rather than a struct
because metadata dicts are heterogeneous: a struct column would give every
row every key of every other row (as nulls) and fail on keys whose values
change type from row to row.  The embedding column wraps the snapshot's
``embeddings`` array through the buffer protocol: when that is the mapped
matrix (a version of one fragment without deletions, empty tail) the table
points into the mapping itself, no byte copied; otherwise ``embeddings`` is
already the documented copy (live fragment rows, then tail rows) and the
table wraps that copy.

In (:func:`ingest`): rows are grouped into consecutive batches of
``batch_size`` whatever the input's chunking, and each batch is ONE
``Store.add_many`` call, so one atomic log record.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import DimensionError, InvalidInputError, MissingDependencyError

__all__ = ["COLUMNS", "dataframe", "ingest", "require", "snapshot_table"]

#: The columns of :func:`snapshot_table`, in their default order.
COLUMNS = ("id", "content", "metadata", "embedding")

#: Field metadata of the ``metadata`` column: how to read its strings.
METADATA_ENCODING = {b"mmwal.encoding": b"json"}


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional module, or raise MissingDependencyError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".", maxsplit=1)[0]
        raise MissingDependencyError(
            f"{what} needs {package}, which is not installed (or failed to import: {exc}); "
            f"install it with: pip install 'mmwal[{extra}]'", package=package, extra=extra,
        ) from exc


# ============================================================================ out
def _select(columns: Any) -> list[str]:
    if columns is None:
        return list(COLUMNS)
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Iterable):
        raise InvalidInputError(f"columns must be None or a list of column names from "
                                f"{list(COLUMNS)}, got {columns!r:.80}", got=repr(columns))
    names = list(columns)
    for name in names:
        if name not in COLUMNS:
            raise InvalidInputError(f"columns: unknown column {name!r}; the columns are "
                                    f"{list(COLUMNS)}", column=name)
    if len(set(names)) != len(names):
        raise InvalidInputError(f"columns: {names} names a column twice", got=names)
    return names


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        import base64

        # As `mmwal dump` writes them: JSON has no bytes (docs/arrow.md).
        return base64.b64encode(bytes(obj)).decode("ascii")
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                          default=_json_default).encode


def _docs(snap: Any) -> tuple[list[str], list[Any]]:
    """(contents, metadatas) of the snapshot's live rows, in row order."""
    contents: list[str] = []
    metas: list[Any] = []
    ckpt = snap._ckpt
    if ckpt is not None and snap._ckpt_live:
        dead = snap._ckpt_dead()
        for p in ckpt.parts:  # each fragment, one chunk decode at a time
            v = p.view
            step = v.chunk_docs
            for k in range(v.nchunks):
                chunk = v.chunk(k)
                if dead is not None:
                    a = p.start + k * step
                    keep = np.flatnonzero(~dead[a : a + len(chunk)]).tolist()
                    chunk = [chunk[j] for j in keep]
                for content, meta in chunk:
                    contents.append(content)
                    metas.append(meta)
    docs = snap._tail.docs
    for row in snap._tail_rows().tolist():
        content, meta = docs[row]
        contents.append(content)
        metas.append(meta)
    return contents, metas


def _live_ids(snap: Any) -> list[str]:
    """The snapshot's live ids in row order (``snap.ids``, read a block of ids.bin at a time)."""
    out: list[str] = []
    ckpt = snap._ckpt
    if ckpt is not None and snap._ckpt_live:
        dead = snap._ckpt_dead()
        step = 65536
        for a in range(0, ckpt.count, step):
            block = ckpt.id_block(a, min(step, ckpt.count - a))
            keep = (range(len(block)) if dead is None
                    else np.flatnonzero(~dead[a : a + len(block)]).tolist())
            try:
                out.extend([block[j].decode("utf-8") for j in keep])
            except UnicodeDecodeError:
                for j in keep:
                    ckpt.id_at(a + j)  # raises CorruptionError naming the row
                raise
    ids = snap._tail.ids
    out.extend([ids[row] for row in snap._tail_rows().tolist()])
    return out


def embedding_array(pa: Any, emb: np.ndarray, dim: int) -> Any:
    """A ``fixed_size_list<float32>[dim]`` array over ``emb``'s own buffer (no copy)."""
    if emb.dtype != np.dtype("=f4") or not emb.flags.c_contiguous:
        emb = np.ascontiguousarray(emb, dtype="=f4")  # never for mmwal's own arrays
    n = emb.shape[0]
    # py_buffer keeps a reference to ``emb`` (for the memmap: to the mapping),
    # so the table stays valid after the Reader closes or the checkpoint
    # files are retired (an unlinked file stays mapped, RULES.md 19).
    values = pa.Array.from_buffers(pa.float32(), n * dim, [None, pa.py_buffer(emb)])
    return pa.FixedSizeListArray.from_arrays(values, dim)


def snapshot_table(snap: Any, columns: Any = None) -> Any:
    """The live documents of ``snap`` as a ``pyarrow.Table`` (see the module docstring)."""
    pa = require("pyarrow", "arrow", "to_arrow")
    names = _select(columns)
    arrays: dict[str, Any] = {}
    fields = []
    if "content" in names or "metadata" in names:
        contents, metas = _docs(snap)
    for name in names:
        if name == "id":
            arrays[name] = pa.array(_live_ids(snap), pa.string())
            fields.append(pa.field(name, pa.string(), nullable=False))
        elif name == "content":
            arrays[name] = pa.array(contents, pa.string())
            fields.append(pa.field(name, pa.string(), nullable=False))
        elif name == "metadata":
            arrays[name] = pa.array([None if m is None else _dumps(m) for m in metas],
                                    pa.string())
            fields.append(pa.field(name, pa.string(), metadata=METADATA_ENCODING))
        else:
            arrays[name] = embedding_array(pa, snap.embeddings, snap.dim)
            fields.append(pa.field(name, pa.list_(pa.float32(), snap.dim), nullable=False))
    schema = pa.schema(fields, metadata={
        "mmwal.seq": str(snap.seq), "mmwal.checkpoint": str(snap.checkpoint_id),
        "mmwal.dim": str(snap.dim)})
    if not names:
        return schema.empty_table()
    return pa.Table.from_arrays([arrays[n] for n in names], schema=schema)


def dataframe(snap: Any, columns: Any = None) -> Any:
    """``snapshot_table`` as a pandas DataFrame: metadata as dicts, embeddings as arrays."""
    pd = require("pandas", "pandas", "to_pandas")
    require("pyarrow", "pandas", "to_pandas")
    table = snapshot_table(snap, columns)
    df = table.to_pandas()
    if "metadata" in table.column_names:
        parsed = [None if s is None else json.loads(s)
                  for s in table.column("metadata").to_pylist()]
        df["metadata"] = pd.Series(parsed, index=df.index, dtype=object)
    return df


# ============================================================================ in
def _missing(x: Any) -> bool:
    """None, or pandas' markers of a missing value (NaN, NA, NaT)."""
    if x is None:
        return True
    if isinstance(x, float):
        return math.isnan(x)
    return type(x).__name__ in ("NAType", "NaTType")


def _ids(values: list[Any], col: str, row0: int) -> list[str]:
    for i, x in enumerate(values):
        if not isinstance(x, str):
            raise InvalidInputError(
                f"column {col!r} row {row0 + i}: an id must be a str, got "
                f"{type(x).__name__} {x!r:.40}; every row needs a non-empty string id",
                column=col, row=row0 + i)
    return values


def _contents(values: list[Any], col: str, row0: int) -> list[str]:
    out = []
    for i, x in enumerate(values):
        if isinstance(x, str):
            out.append(x)
        elif _missing(x):
            out.append("")
        else:
            raise InvalidInputError(
                f"column {col!r} row {row0 + i}: content must be a str (or missing), got "
                f"{type(x).__name__} {x!r:.40}", column=col, row=row0 + i)
    return out


def _metadatas(values: list[Any], col: str, row0: int) -> list[Any]:
    out: list[Any] = []
    for i, x in enumerate(values):
        if isinstance(x, dict):
            out.append(x)
        elif isinstance(x, str):
            try:
                m = json.loads(x)
            except ValueError as exc:
                raise InvalidInputError(
                    f"column {col!r} row {row0 + i}: not valid JSON ({exc}); a string "
                    "metadata column must hold JSON objects", column=col, row=row0 + i,
                ) from None
            if m is not None and not isinstance(m, dict):
                raise InvalidInputError(
                    f"column {col!r} row {row0 + i}: the JSON holds a {type(m).__name__}, "
                    "not an object; metadata must be a JSON object or null",
                    column=col, row=row0 + i)
            out.append(m)
        elif isinstance(x, list) and all(isinstance(p, tuple) and len(p) == 2 for p in x):
            out.append(dict(x))  # an Arrow map column: (key, value) pairs
        elif _missing(x):
            out.append(None)
        else:
            raise InvalidInputError(
                f"column {col!r} row {row0 + i}: metadata must be a dict, a JSON object "
                f"string or missing, got {type(x).__name__} {x!r:.40}",
                column=col, row=row0 + i)
    return out


def _arrow_vectors(pa: Any, col: Any, dim: int, name: str, row0: int) -> np.ndarray:
    """An (n, dim) array of the values of a list column of numbers."""
    t = col.type
    if isinstance(t, pa.BaseExtensionType):  # e.g. fixed_shape_tensor: a fixed_size_list inside
        col, t = col.storage, t.storage_type
    if pa.types.is_fixed_size_list(t):
        if t.list_size != dim:
            raise DimensionError(f"column {name!r} holds vectors of dimension {t.list_size}, "
                                 f"the store has {dim}", column=name, expected=dim,
                                 got=t.list_size)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if len(bad) and col.is_valid()[int(bad[0])].as_py():
            got = int(lengths[bad[0]])
            raise DimensionError(f"column {name!r} row {row0 + int(bad[0])} holds a vector "
                                 f"of dimension {got}, the store has {dim}", column=name,
                                 expected=dim, got=got, row=row0 + int(bad[0]))
    else:
        raise InvalidInputError(
            f"column {name!r} has type {t}; embeddings must be a list or fixed_size_list of "
            "numbers (fixed_size_list<float32> is read without conversion)",
            column=name, type=str(t))
    if col.null_count:
        row = next(i for i, ok in enumerate(col.is_valid().to_pylist()) if not ok)
        raise InvalidInputError(f"column {name!r} row {row0 + row}: the embedding is null; "
                                "every row needs a vector", column=name, row=row0 + row)
    vt = t.value_type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        raise InvalidInputError(f"column {name!r} holds lists of {vt}, not numbers",
                                column=name, type=str(t))
    values = col.flatten()
    if values.null_count:
        first = next(i for i, ok in enumerate(values.is_valid().to_pylist()) if not ok)
        raise InvalidInputError(f"column {name!r} row {row0 + first // dim}: the embedding "
                                "holds a null value", column=name, row=row0 + first // dim)
    arr: np.ndarray = values.to_numpy(zero_copy_only=False)
    return arr.reshape(len(col), dim)


def _python_vectors(values: list[Any], dim: int, name: str, row0: int) -> np.ndarray:
    """An (n, dim) array from a column of per-row vectors (numpy arrays or lists)."""
    for i, v in enumerate(values):
        if _missing(v):
            raise InvalidInputError(f"column {name!r} row {row0 + i}: the embedding is "
                                    "missing; every row needs a vector", column=name,
                                    row=row0 + i)
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__"):
            raise InvalidInputError(f"column {name!r} row {row0 + i}: an embedding must be "
                                    f"a vector of numbers, got {type(v).__name__}",
                                    column=name, row=row0 + i)
        if len(v) != dim:
            raise DimensionError(f"column {name!r} row {row0 + i} holds a vector of "
                                 f"dimension {len(v)}, the store has {dim}", column=name,
                                 expected=dim, got=len(v), row=row0 + i)
    if not values:
        return np.empty((0, dim), np.float32)
    try:
        return np.stack([np.asarray(v) for v in values])
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"column {name!r} does not hold vectors of numbers ({exc})",
                                column=name) from None


class _Batcher:
    """Groups rows into batches of ``size``; each full batch is one ``add_many``."""

    def __init__(self, store: Any, size: int, api: str) -> None:
        self.store = store
        self.size = size
        self.api = api
        self.written: list[range] = []
        self.rows = 0  # rows handed to add_many so far
        self.ids: list[str] = []
        self.vecs: list[np.ndarray] = []
        self.contents: list[str] = []
        self.metas: list[Any] = []

    def feed(self, ids: list[str], vecs: np.ndarray, contents: list[str],
             metas: list[Any]) -> None:
        self.ids += ids
        self.vecs.append(vecs)
        self.contents += contents
        self.metas += metas
        while len(self.ids) >= self.size:
            self._flush(self.size)

    def _flush(self, k: int) -> None:
        allv = np.concatenate(self.vecs) if len(self.vecs) > 1 else self.vecs[0]
        ids, vecs = self.ids[:k], allv[:k]
        contents, metas = self.contents[:k], self.metas[:k]
        self.ids, self.vecs = self.ids[k:], [allv[k:]]
        self.contents, self.metas = self.contents[k:], self.metas[k:]
        a = self.rows
        try:
            got = self.store.add_many(ids, vecs, contents, metas)
        except InvalidInputError as exc:
            done = sum(len(r) for r in self.written)
            then = (f"the {done} rows before them were written, in {len(self.written)} "
                    "records (the error's `written` lists their seqs)" if self.written
                    else "nothing was written")
            facts = {**exc.facts, "rows": (a, a + k), "written": list(self.written)}
            raise type(exc)(f"{self.api}: rows {a}..{a + k - 1} were not written "
                            f"(indices below count from row {a}): {exc.message}; {then}",
                            **facts) from exc
        self.rows += k
        if len(got):
            self.written.append(got)

    def annotate(self, exc: InvalidInputError) -> InvalidInputError:
        """``exc`` (about input not yet written) with what was written before it."""
        done = sum(len(r) for r in self.written)
        then = (f"; the {done} rows before were written, in {len(self.written)} records "
                "(the error's `written` lists their seqs)" if self.written
                else "; nothing was written")
        return type(exc)(exc.message + then, **{**exc.facts, "written": list(self.written)})

    def finish(self) -> list[range]:
        if self.ids:
            self._flush(len(self.ids))
        return self.written


def _check_options(batch_size: Any, names: dict[str, Any], optional: tuple[str, ...]) -> None:
    if type(batch_size) is not int or batch_size < 1:
        raise InvalidInputError(f"batch_size must be an int >= 1, got {batch_size!r}",
                                got=batch_size)
    for opt, value in names.items():
        if value is None and opt in optional:
            continue
        if not isinstance(value, str):
            raise InvalidInputError(f"{opt} must be a column name (str)"
                                    + (" or None" if opt in optional else "")
                                    + f", got {value!r}", got=repr(value))


def _record_batches(pa: Any, data: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=batch_size)
    elif isinstance(data, pa.RecordBatch):
        yield data
    elif isinstance(data, pa.RecordBatchReader):
        yield from data
    elif type(data).__name__ == "DataFrame" and hasattr(data, "iloc"):
        raise InvalidInputError("add_arrow got a pandas DataFrame; use Store.add_pandas")
    elif hasattr(data, "__arrow_c_stream__"):  # polars, DuckDB, ... (the Arrow C stream)
        yield from pa.RecordBatchReader.from_stream(data)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        for i, item in enumerate(data):
            if isinstance(item, pa.RecordBatch):
                yield item
            elif isinstance(item, pa.Table):
                yield from item.to_batches(max_chunksize=batch_size)
            else:
                raise InvalidInputError(f"add_arrow: item {i} of the input is a "
                                        f"{type(item).__name__}, not a pyarrow RecordBatch",
                                        got=type(item).__name__)
    else:
        raise InvalidInputError(
            f"add_arrow needs a pyarrow Table, RecordBatch, RecordBatchReader, an "
            f"iterable of RecordBatches or a dict of columns, got {type(data).__name__}",
            got=type(data).__name__)


def _arrow_strings(pa: Any, col: Any, name: str, what: str) -> list[Any]:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.dictionary_decode(), t.value_type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)
            or getattr(pa.types, "is_string_view", lambda _t: False)(t)
            or pa.types.is_null(t)):
        raise InvalidInputError(f"column {name!r} has type {t}; {what} must be strings",
                                column=name, type=str(t))
    return col.to_pylist()  # type: ignore[no-any-return]


def ingest(store: Any, data: Any, *, id_column: Any, embedding_column: Any,
           content_column: Any, metadata_column: Any, batch_size: Any,
           pandas: bool = False) -> list[range]:
    """Write ``data`` (Arrow, or a DataFrame when ``pandas``) as ``add_many`` batches."""
    api = "add_pandas" if pandas else "add_arrow"
    _check_options(batch_size, {"id_column": id_column, "embedding_column": embedding_column,
                                "content_column": content_column,
                                "metadata_column": metadata_column},
                   ("content_column", "metadata_column"))
    out = _Batcher(store, batch_size, api)
    try:
        _feed(out, data, store.dim, api, id_column, embedding_column, content_column,
              metadata_column, batch_size, pandas)
    except InvalidInputError as exc:
        if "written" in exc.facts:  # from _Batcher: says it already
            raise
        raise out.annotate(exc) from exc
    return out.finish()


def _feed(out: _Batcher, data: Any, dim: int, api: str, id_column: str,
          embedding_column: str, content_column: str | None, metadata_column: str | None,
          batch_size: int, pandas: bool) -> None:
    if pandas or isinstance(data, Mapping):
        if pandas:
            pd = require("pandas", "pandas", "add_pandas")
            if not isinstance(data, pd.DataFrame):
                raise InvalidInputError(f"add_pandas needs a pandas DataFrame, got "
                                        f"{type(data).__name__}", got=type(data).__name__)
        cols = [str(c) for c in data.columns] if pandas else [str(c) for c in data]
        _need(cols, id_column, "id_column", api)
        _need(cols, embedding_column, "embedding_column", api)
        content_col = _optional(cols, content_column, "content", api)
        meta_col = _optional(cols, metadata_column, "metadata", api)
        use = (id_column, embedding_column, content_col, meta_col)
        n = len(data) if pandas else _same_lengths(data, use)
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            if pandas:
                part = data.iloc[a:b]
                out.feed(*_python_rows(lambda c, part=part: part[c], a, dim, *use))
            else:
                out.feed(*_python_rows(lambda c, a=a, b=b: data[c][a:b], a, dim, *use))
        return
    pa = require("pyarrow", "arrow", "add_arrow")
    row0 = 0
    for rb in _record_batches(pa, data, batch_size):
        cols = list(rb.schema.names)
        _need(cols, id_column, "id_column", api)
        _need(cols, embedding_column, "embedding_column", api)
        content_col = _optional(cols, content_column, "content", api)
        meta_col = _optional(cols, metadata_column, "metadata", api)
        n = rb.num_rows
        ids = _ids(_arrow_strings(pa, rb.column(id_column), id_column, "ids"),
                   id_column, row0)
        vecs = _arrow_vectors(pa, rb.column(embedding_column), dim, embedding_column, row0)
        if content_col is None:
            contents = [""] * n
        else:
            contents = _contents(_arrow_strings(pa, rb.column(content_col), content_col,
                                                "contents"), content_col, row0)
        if meta_col is None:
            metas = [None] * n
        else:
            metas = _metadatas(_arrow_metadata(pa, rb.column(meta_col), meta_col),
                               meta_col, row0)
        out.feed(ids, vecs, contents, metas)
        row0 += n


def _need(cols: list[str], name: str, opt: str, api: str) -> None:
    if name not in cols:
        raise InvalidInputError(f"{api}: no column {name!r} in the input (columns: "
                                f"{cols[:20]}); it is required: name yours with {opt}=",
                                column=name)


def _optional(cols: list[str], name: str | None, default: str, api: str) -> str | None:
    """The optional column to read, or None: absent under its default name, or not wanted."""
    if name is None or (name == default and name not in cols):
        return None
    if name not in cols:  # named on purpose: a typo must not silently drop the column
        raise InvalidInputError(f"{api}: no column {name!r} in the input (columns: "
                                f"{cols[:20]})", column=name)
    return name


def _arrow_metadata(pa: Any, col: Any, name: str) -> list[Any]:
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.dictionary_decode(), t.value_type
    if (pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_null(t)
            or getattr(pa.types, "is_string_view", lambda _t: False)(t)):
        return col.to_pylist()  # type: ignore[no-any-return]
    raise InvalidInputError(f"column {name!r} has type {t}; metadata must be a struct, a map "
                            "or a string column of JSON objects", column=name, type=str(t))


def _same_lengths(data: Mapping[str, Any], use: tuple[str | None, ...]) -> int:
    """The common length of the dict's columns that are read."""
    n = -1
    for c in use:
        if c is None:
            continue
        col = data[c]
        if isinstance(col, (str, bytes)) or not hasattr(col, "__len__"):
            raise InvalidInputError(f"add_arrow: column {c!r} of the dict must be a sequence "
                                    f"or an array, got {type(col).__name__}", column=c)
        if n >= 0 and len(col) != n:
            raise InvalidInputError(f"add_arrow: column {c!r} of the dict has {len(col)} rows, "
                                    f"column {use[0]!r} has {n}", column=c)
        n = len(col)
    return n


def _tolist(x: Any) -> list[Any]:
    return x.tolist() if hasattr(x, "tolist") else list(x)  # type: ignore[no-any-return]


def _python_rows(get: Any, row0: int, dim: int, id_col: str, emb_col: str,
                 content_col: str | None, meta_col: str | None,
                 ) -> tuple[list[str], np.ndarray, list[str], list[Any]]:
    """One batch of a DataFrame or a dict of columns; ``get(column)`` slices it."""
    ids = _ids(_tolist(get(id_col)), id_col, row0)
    n = len(ids)
    emb = get(emb_col)
    if type(getattr(emb, "dtype", None)).__name__ == "ArrowDtype":  # pandas over Arrow
        pa = require("pyarrow", "pandas", "add_pandas")
        vecs = _arrow_vectors(pa, pa.array(emb), dim, emb_col, row0)
    elif isinstance(emb, np.ndarray) and emb.ndim == 2:  # a dict's 2-D array
        if emb.shape[1] != dim:
            raise DimensionError(f"column {emb_col!r} holds vectors of dimension "
                                 f"{emb.shape[1]}, the store has {dim}", column=emb_col,
                                 expected=dim, got=emb.shape[1])
        vecs = emb
    else:
        vecs = _python_vectors(list(emb), dim, emb_col, row0)
    contents = ([""] * n if content_col is None
                else _contents(_tolist(get(content_col)), content_col, row0))
    metas = ([None] * n if meta_col is None
             else _metadatas(_tolist(get(meta_col)), meta_col, row0))
    return ids, vecs, contents, metas
