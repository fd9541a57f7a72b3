"""Arrow and pandas: ``to_arrow``/``to_pandas``, ``add_arrow``/``add_pandas``, Parquet dump.

Round trips ingest -> checkpoint -> to_arrow compare ids, contents, metadata
and embedding bytes exactly; zero-copy is asserted by buffer address; batching
is checked against the records the log really holds (``mmwal.replay`` and the
frames of the segments).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    doc_content,
    doc_id,
    doc_meta,
    frame_spans,
    overwrite,
    read_bytes,
    segment_files,
    vecs,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmwal
from mmwal.errors import DimensionError, InvalidInputError, MissingDependencyError

DIM = 8
N = 60

ODD_META = [
    {"emoji": "\U0001f600 ü 中文", "n": None},
    {"deep": {"a": [1, {"b": [True, None, 2.5, "x"]}]}, "big": 2**62, "neg": -(2**63)},
    {},
    None,
    {"list": [], "empty": "", "float": 1e-300, "f": -0.0},
]


def docs(n: int = N, start: int = 0):
    """ids, vectors, contents (unicode, empty), metadata (nested, None, odd values)."""
    ids = [doc_id(k) for k in range(start, start + n)]
    ids[0] = "ünï/cødé id \u2713"
    contents = [doc_content(k) for k in range(start, start + n)]
    metas = [doc_meta(k) for k in range(start, start + n)]
    for j, m in enumerate(ODD_META):
        if j + 1 < n:
            metas[j + 1] = m
    contents[min(2, n - 1)] = "line\nbreak\ttab \"quote\" \\ \x00 nul"
    return ids, vecs(start, n, DIM), contents, metas


def make_store(path: str, n: int = N, checkpoint: bool = True) -> tuple:
    ids, emb, contents, metas = docs(n)
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many(ids, emb, contents, metas)
        if checkpoint:
            s.checkpoint()
    return ids, emb, contents, metas


def expected_rows(r: mmwal.Reader) -> tuple[list, np.ndarray, list, list]:
    ids = list(r.ids)
    got = [r[k] for k in ids]
    return ids, np.asarray(r.embeddings), [d.content for d in got], [d.metadata for d in got]


def assert_table_is_reader(t: pa.Table, r: mmwal.Reader) -> None:
    ids, emb, contents, metas = expected_rows(r)
    assert t.column_names == ["id", "content", "metadata", "embedding"]
    assert t.schema.field("id").type == pa.string()
    assert t.schema.field("content").type == pa.string()
    assert t.schema.field("metadata").type == pa.string()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert t.column("id").to_pylist() == ids
    assert t.column("content").to_pylist() == contents
    assert [None if s is None else json.loads(s)
            for s in t.column("metadata").to_pylist()] == metas
    flat = t.column("embedding").combine_chunks().flatten().to_numpy()
    assert flat.reshape(-1, DIM).tobytes() == emb.tobytes()  # bit-exact


def emb_address(t: pa.Table) -> int:
    col = t.column("embedding")
    assert col.num_chunks == 1
    return int(col.chunk(0).values.buffers()[1].address)


# ------------------------------------------------------------------ to_arrow
def test_round_trip_after_checkpoint_is_exact_and_zero_copy(store_path):
    ids, emb, contents, metas = make_store(store_path)
    with mmwal.Reader(store_path) as r:
        assert isinstance(r.embeddings, np.memmap)  # one checkpoint, no tail
        t = r.to_arrow()
        assert t.num_rows == N
        assert_table_is_reader(t, r)
        # what went in, in the order it went in
        assert t.column("id").to_pylist() == ids
        assert t.column("content").to_pylist() == contents
        assert [None if s is None else json.loads(s)
                for s in t.column("metadata").to_pylist()] == metas
        assert t.column("metadata")[4].as_py() is None  # None metadata is null, not "null"
        assert t.column("metadata")[3].as_py() == "{}"
        assert t.column("embedding").chunk(0).values.to_numpy().tobytes() == emb.tobytes()
        # zero-copy: the Arrow buffer is the mapped checkpoint matrix itself
        assert emb_address(t) == r.embeddings.ctypes.data
        assert t.schema.metadata[b"mmwal.seq"] == str(r.seq).encode()
        assert t.schema.field("metadata").metadata == {b"mmwal.encoding": b"json"}


def test_zero_copy_table_outlives_reader_and_retired_checkpoint(store_path):
    make_store(store_path)
    with mmwal.Reader(store_path) as r:
        t = r.to_arrow(["id", "embedding"])
        expected = np.array(r.embeddings)
        addr = r.embeddings.ctypes.data
    assert emb_address(t) == addr
    with mmwal.Store(store_path, config=mmwal.Config(keep_checkpoints=0)) as s:
        s.add("new", np.ones(DIM, np.float32))
        s.checkpoint()
        s.add("newer", np.ones(DIM, np.float32))
        s.checkpoint()
    assert not os.path.exists(os.path.join(store_path, "checkpoints", "ckpt-00000001"))
    # the table keeps the mapping alive: reading it after the files are gone is fine
    got = t.column("embedding").chunk(0).values.to_numpy().reshape(-1, DIM)
    assert got.tobytes() == expected.tobytes()


def test_round_trip_with_a_tail_is_a_copy_and_exact(store_path):
    make_store(store_path)
    with mmwal.Store(store_path) as s:
        s.add_many(["tail-1", "tail-2"], vecs(1000, 2, DIM), ["t1", ""],
                   [{"t": {"x": [1]}}, None])
        s.add(doc_id(10), vecs(2000, 1, DIM)[0], "replaced", {"r": 1})  # supersedes a ckpt row
    with mmwal.Reader(store_path) as r:
        assert not isinstance(r.embeddings, np.memmap)
        t = r.to_arrow()
        assert t.num_rows == N + 2
        assert_table_is_reader(t, r)
        assert t.column("id").to_pylist()[-3:] == ["tail-1", "tail-2", doc_id(10)]
        # the documented copy: Snapshot.embeddings is built once, the table wraps it
        assert emb_address(t) == r.embeddings.ctypes.data
        snap = r.snapshot()
        assert emb_address(snap.to_arrow(["embedding"])) == snap.embeddings.ctypes.data


def test_round_trip_with_deletions(store_path):
    make_store(store_path)
    gone = [doc_id(k) for k in (3, 17, 59)] + [docs()[0][0]]
    with mmwal.Store(store_path) as s:
        for k in gone:
            s.remove(k)
    with mmwal.Reader(store_path) as r:
        t = r.to_arrow()
        assert t.num_rows == N - len(gone)
        assert not set(gone) & set(t.column("id").to_pylist())
        assert_table_is_reader(t, r)
    with mmwal.Store(store_path) as s:
        s.checkpoint()
    with mmwal.Reader(store_path) as r:  # folded: zero-copy again
        t = r.to_arrow()
        assert_table_is_reader(t, r)
        assert emb_address(t) == r.embeddings.ctypes.data


def test_tail_only_store_and_empty_store(store_path):
    make_store(store_path, checkpoint=False)
    with mmwal.Reader(store_path) as r:
        assert_table_is_reader(r.to_arrow(), r)
    with mmwal.Store(store_path) as s:
        s.clear()
    with mmwal.Reader(store_path) as r:
        t = r.to_arrow()
        assert t.num_rows == 0 and t.schema.field("embedding").type == pa.list_(pa.float32(), DIM)


def test_columns_subset_order_and_unknown_names(store_path):
    make_store(store_path, n=10)
    with mmwal.Reader(store_path) as r:
        t = r.to_arrow(columns=["embedding", "id"])
        assert t.column_names == ["embedding", "id"] and t.num_rows == 10
        assert r.to_arrow(["metadata"]).column_names == ["metadata"]
        for bad in (["id", "vector"], "id", ["id", "id"], [1]):
            with pytest.raises(InvalidInputError) as ei:
                r.to_arrow(columns=bad)
            assert isinstance(ei.value, ValueError)
        with pytest.raises(InvalidInputError, match="unknown column 'vector'"):
            r.to_arrow(columns=["vector"])


def test_an_id_that_is_not_utf8_in_the_checkpoint_is_corruption(store_path):
    make_store(store_path, n=10)
    ckpt = os.path.join(store_path, "checkpoints", os.listdir(os.path.join(store_path,
                                                                          "checkpoints"))[0])
    data = bytearray(read_bytes(os.path.join(ckpt, "ids.bin")))
    at = data.index(b"doc-4")
    data[at] = 0xFF
    overwrite(os.path.join(ckpt, "ids.bin"), bytes(data))
    with mmwal.Reader(store_path) as r:
        with pytest.raises(mmwal.CorruptionError, match="id of row 4 is not UTF-8"):
            r.to_arrow(["id"])
        assert len(r.to_arrow(["embedding"])) == 10  # the other columns do not read ids


def test_bytes_metadata_become_base64_text(store_path):
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add("b", vecs(0, 1, DIM)[0], "", {"raw": b"\x00\x01"})
    with mmwal.Reader(store_path) as r:
        assert r.to_arrow().column("metadata").to_pylist() == ['{"raw":"AAE="}']


# What add accepts (tests/test_store_input.py): 64-bit signed ints, finite floats.
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                           max_leaves=8)
METAS = st.none() | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metas=st.lists(METAS, min_size=1, max_size=6),
       contents=st.lists(st.text(max_size=10), min_size=6, max_size=6),
       checkpoint=st.booleans())
def test_any_json_like_metadata_round_trips_exactly(tmp_path_factory, metas, contents,
                                                    checkpoint):
    path = str(tmp_path_factory.mktemp("h") / "s")
    n = len(metas)
    ids = [f"id-{i}" for i in range(n)]
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many(ids, vecs(0, n, DIM), contents[:n], metas)
        if checkpoint:
            s.checkpoint()
    with mmwal.Reader(path) as r:
        t = r.to_arrow()
        df = r.to_pandas()
    got = [None if x is None else json.loads(x) for x in t.column("metadata").to_pylist()]
    assert got == metas and df["metadata"].tolist() == metas
    assert t.column("content").to_pylist() == contents[:n]
    copy = path + "-copy"
    with mmwal.Store(copy, dim=DIM, durability="os") as s:
        s.add_arrow(t)
    with mmwal.Reader(copy) as r:
        assert [r[k].metadata for k in ids] == metas


# ------------------------------------------------------------------ to_pandas
def test_to_pandas_round_trip(store_path):
    ids, emb, contents, metas = make_store(store_path)
    with mmwal.Reader(store_path) as r:
        df = r.to_pandas()
    assert list(df.columns) == ["id", "content", "metadata", "embedding"]
    assert df["id"].tolist() == ids and df["content"].tolist() == contents
    assert df["metadata"].tolist() == metas  # dicts again (None stays None)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in df["embedding"])
    assert np.stack(df["embedding"].tolist()).tobytes() == emb.tobytes()
    # and back in: a DataFrame from to_pandas is valid add_pandas input
    other = os.path.join(os.path.dirname(store_path), "copy")
    with mmwal.Store(other, dim=DIM, durability="os") as s:
        assert s.add_pandas(df) == [range(1, N + 1)]
    with mmwal.Reader(store_path) as a, mmwal.Reader(other) as b:
        assert_table_is_reader(a.to_arrow(), b)


# ------------------------------------------------------------------ add_arrow / add_pandas
def log_records(path: str) -> list[tuple[int, int]]:
    """(first seq, count) of every record in the log, from the segment frames."""
    return [(seq, count) for seg in segment_files(path) for *_x, seq, count in frame_spans(seg)]


def replay_records(path: str) -> list[list[str]]:
    """The ids of each record as mmwal.replay shows them (ops of one record share its ts)."""
    out: list[list[str]] = []
    last = None
    for op in mmwal.replay(path):
        if op.timestamp != last:
            out.append([])
            last = op.timestamp
        out[-1].append(op.id)
    return out


@pytest.mark.parametrize("chunks", [[25], [7, 11, 1, 6], [1] * 25])
def test_add_arrow_batches_are_one_record_each(store_path, chunks):
    ids, emb, contents, metas = docs(25)
    t = pa.table({"id": ids, "content": contents,
                  "metadata": [None if m is None else json.dumps(m) for m in metas],
                  "embedding": pa.FixedSizeListArray.from_arrays(emb.reshape(-1), DIM)})
    batches, a = [], 0
    for c in chunks:
        batches.extend(t.slice(a, c).to_batches())
        a += c
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        got = s.add_arrow(batches, batch_size=10)
    # batches of 10 whatever the input's chunking: records 10, 10, 5
    assert got == [range(1, 11), range(11, 21), range(21, 26)]
    assert log_records(store_path) == [(1, 10), (11, 10), (21, 5)]
    assert replay_records(store_path) == [ids[:10], ids[10:20], ids[20:]]
    with mmwal.Reader(store_path) as r:
        assert r.to_arrow().column("id").to_pylist() == ids
        for k, c, m, v in zip(ids, contents, metas, emb):
            d = r[k]
            assert (d.content, d.metadata, d.embedding.tobytes()) == (c, m, v.tobytes())


def test_add_arrow_round_trip_of_to_arrow(store_path, tmp_path):
    make_store(store_path)
    with mmwal.Reader(store_path) as r:
        t = r.to_arrow()
    other = str(tmp_path / "other")
    with mmwal.Store(other, dim=DIM, durability="os") as s:
        assert s.add_arrow(t, batch_size=16) == [range(1, 17), range(17, 33), range(33, 49),
                                                  range(49, 61)]
        s.checkpoint()
    with mmwal.Reader(store_path) as a, mmwal.Reader(other) as b:
        assert a.to_arrow().equals(b.to_arrow())
        assert_table_is_reader(a.to_arrow(), b)


def test_add_arrow_accepts_lists_structs_maps_and_defaults(store_path):
    with mmwal.Store(store_path, dim=3, durability="os") as s:
        s.add_arrow(pa.table({  # list<double> embedding, struct metadata, no content column
            "id": ["a", "b"], "embedding": [[1.0, 2.0, 3.0], [4, 5, 6]],
            "metadata": [{"p": 1, "q": "x"}, None]}))
        s.add_arrow(pa.table({  # map metadata, large_string ids, null content
            "id": pa.array(["c"], pa.large_string()),
            "embedding": pa.array([[1, 2, 3]], pa.list_(pa.int32())),
            "content": pa.array([None], pa.string()),
            "metadata": pa.array([[("k", "v")]], pa.map_(pa.string(), pa.string()))}))
        s.add_arrow(pa.table({"doc": ["d"], "vec": [[0.5, 0.5, 0.5]], "text": ["hi"]}),
                    id_column="doc", embedding_column="vec", content_column="text")
        tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ones((1, 3), np.float32))
        s.add_arrow(pa.table({"id": ["e"], "embedding": tensor}))
    with mmwal.Reader(store_path) as r:
        assert r["a"].metadata == {"p": 1, "q": "x"}
        assert r["b"].metadata is None and r["b"].content == ""
        assert r["b"].embedding.tolist() == [4.0, 5.0, 6.0]
        assert r["c"].metadata == {"k": "v"} and r["c"].content == ""
        assert r["d"].content == "hi" and r["e"].embedding.tolist() == [1.0, 1.0, 1.0]


class CStream:
    """Any object that exports the Arrow C stream (as polars and DuckDB results do)."""

    def __init__(self, table):
        self.table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self.table.__arrow_c_stream__(requested_schema)


def test_add_arrow_input_kinds(store_path):
    ids, emb, contents, metas = docs(12)
    t = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(emb.reshape(-1), DIM)})
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        assert s.add_arrow(pa.RecordBatchReader.from_batches(t.schema, t.to_batches(5)),
                           batch_size=4) == [range(1, 5), range(5, 9), range(9, 13)]
        assert s.add_arrow(CStream(t), batch_size=12) == [range(13, 25)]
        assert s.add_arrow(t.to_batches()[0]) == [range(25, 37)]
        # a dict of columns: the embeddings as one 2-D array
        got = s.add_arrow({"id": ids, "embedding": emb.astype(np.float64),
                           "metadata": metas, "content": contents}, batch_size=100)
        assert got == [range(37, 49)]
        with pytest.raises(InvalidInputError, match="column 'embedding' of the dict has 3 rows"):
            s.add_arrow({"id": ids, "embedding": emb[:3]})
        with pytest.raises(DimensionError, match="column 'embedding' holds vectors of dim"):
            s.add_arrow({"id": ids, "embedding": emb[:, :3]})
    with mmwal.Reader(store_path) as r:
        assert_table_is_reader(r.to_arrow(), r)
        assert [r[k].metadata for k in ids] == metas
        assert np.stack([r[k].embedding for k in ids]).tobytes() == emb.tobytes()


def test_add_arrow_type_errors_name_the_column(store_path):
    good = {"id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}

    def bad(**cols):
        return pa.table({**good, **cols})

    cases = [
        (pa.table({"embedding": good["embedding"]}), InvalidInputError, "no column 'id'"),
        (pa.table({"id": good["id"]}), InvalidInputError, "no column 'embedding'"),
        (bad(id=[1, 2]), InvalidInputError, "column 'id' has type int64"),
        (bad(id=["a", None]), InvalidInputError, "column 'id' row 1"),
        (bad(embedding=["x", "y"]), InvalidInputError, "column 'embedding' has type string"),
        (bad(embedding=[[1.0, 2.0], [1.0]]), DimensionError, "column 'embedding' row 1"),
        (bad(embedding=pa.array([[1.0, 2.0], None])), InvalidInputError,
         "column 'embedding' row 1: the embedding is null"),
        (bad(embedding=[[1.0, 2.0], [1.0, None]]), InvalidInputError,
         "column 'embedding' row 1: the embedding holds a null"),
        (bad(embedding=pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2, 3, 4, 5, 6],
                                                                  pa.float32()), 3)[:2]),
         DimensionError, "dimension 3"),
        (bad(content=[1, 2]), InvalidInputError, "column 'content' has type int64"),
        (bad(metadata=[1, 2]), InvalidInputError, "column 'metadata' has type int64"),
        (bad(metadata=["{}", "not json"]), InvalidInputError, "column 'metadata' row 1: not valid"),
        (bad(metadata=["{}", "[1]"]), InvalidInputError, "column 'metadata' row 1: the JSON"),
    ]
    with mmwal.Store(store_path, dim=2, durability="os") as s:
        for table, exc, msg in cases:
            with pytest.raises(exc, match=msg.replace("(", r"\(")):
                s.add_arrow(table)
        with pytest.raises(InvalidInputError, match="no column 'text'"):
            s.add_arrow(pa.table(good), content_column="text")  # named on purpose: must exist
        with pytest.raises(InvalidInputError, match="batch_size"):
            s.add_arrow(pa.table(good), batch_size=0)
        with pytest.raises(InvalidInputError, match="add_pandas"):
            s.add_arrow(pd.DataFrame(good))
        with pytest.raises(InvalidInputError, match="RecordBatch"):
            s.add_arrow([{"id": "a"}])
        assert s.seq == 0  # nothing was written by any of them


def test_a_bad_batch_writes_nothing_of_itself_and_keeps_earlier_batches(store_path):
    ids, emb, contents, metas = docs(30)
    metas[24] = {1: "int key"}  # refused by add_many in the third batch (rows 20..29)
    df = pd.DataFrame({"id": ids, "embedding": list(emb), "content": contents,
                       "metadata": metas})
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        with pytest.raises(InvalidInputError) as ei:
            s.add_pandas(df, batch_size=10)
    err = ei.value
    assert "rows 20..29 were not written" in str(err) and "metadatas[4]" in str(err)
    assert err.rows == (20, 30) and err.written == [range(1, 11), range(11, 21)]
    assert log_records(store_path) == [(1, 10), (11, 10)]
    assert replay_records(store_path) == [ids[:10], ids[10:20]]


def test_a_bad_value_in_a_later_input_batch_reports_what_was_written(store_path):
    ids, emb, _c, _m = docs(20)
    t = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(emb.reshape(-1), DIM)})
    bad = pa.table({"id": pa.array(ids[10:12] + [None] + ids[13:20]),
                    "embedding": t.column("embedding").slice(10)})
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        with pytest.raises(InvalidInputError) as ei:
            s.add_arrow([*t.slice(0, 10).to_batches(), *bad.to_batches()], batch_size=5)
        err = ei.value
        assert "column 'id' row 12" in str(err) and "the 10 rows before were written" in str(err)
        assert err.row == 12 and err.written == [range(1, 6), range(6, 11)]
        with pytest.raises(InvalidInputError) as ei:
            s.add_arrow(bad)
        assert ei.value.written == [] and "nothing was written" in str(ei.value)
    assert log_records(store_path) == [(1, 5), (6, 5)]


def test_add_pandas_batches_and_inputs(store_path):
    ids, emb, contents, metas = docs(23)
    df = pd.DataFrame({
        "id": ids,
        "embedding": [v.tolist() if i % 2 else v for i, v in enumerate(emb)],  # lists, arrays
        "content": [None if i == 5 else c for i, c in enumerate(contents)],
        "metadata": [json.dumps(m) if i % 3 == 0 and m is not None else m
                     for i, m in enumerate(metas)],
    })
    df.loc[7, "metadata"] = np.nan
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        got = s.add_pandas(df, batch_size=5)
    assert got == [range(a, min(a + 5, 24)) for a in range(1, 24, 5)]
    assert log_records(store_path) == [(r.start, len(r)) for r in got]
    assert replay_records(store_path) == [ids[a : a + 5] for a in range(0, 23, 5)]
    with mmwal.Reader(store_path) as r:
        for i, k in enumerate(ids):
            d = r[k]
            assert d.embedding.tobytes() == emb[i].tobytes()
            assert d.content == ("" if i == 5 else contents[i])
            assert d.metadata == (None if i == 7 else metas[i])


def test_add_pandas_errors_name_the_column(store_path):
    ok = {"id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}
    cases = [
        ({"id": ["a", 2]}, InvalidInputError, "column 'id' row 1"),
        ({"embedding": [[1.0, 2.0], None]}, InvalidInputError, "column 'embedding' row 1"),
        ({"embedding": [[1.0, 2.0], [1.0]]}, DimensionError, "column 'embedding' row 1"),
        ({"embedding": [[1.0, 2.0], "ab"]}, InvalidInputError, "column 'embedding' row 1"),
        ({"content": ["x", 3]}, InvalidInputError, "column 'content' row 1"),
        ({"metadata": [{}, 3]}, InvalidInputError, "column 'metadata' row 1"),
    ]
    with mmwal.Store(store_path, dim=2, durability="os") as s:
        for cols, exc, msg in cases:
            with pytest.raises(exc, match=msg):
                s.add_pandas(pd.DataFrame({**ok, **cols}))
        with pytest.raises(InvalidInputError, match="no column 'id'"):
            s.add_pandas(pd.DataFrame({"embedding": ok["embedding"]}))
        with pytest.raises(InvalidInputError, match="DataFrame"):
            s.add_pandas(pa.table(ok))
        assert s.seq == 0
        # an Arrow-backed list column (as pandas reads Parquet with dtype_backend="pyarrow")
        df = pa.table(ok).to_pandas(types_mapper=pd.ArrowDtype)
        assert s.add_pandas(df) == [range(1, 3)]


def test_empty_inputs_write_nothing(store_path):
    with mmwal.Store(store_path, dim=2, durability="os") as s:
        schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), 2))])
        assert s.add_arrow(schema.empty_table()) == []
        assert s.add_arrow([]) == []
        assert s.add_pandas(pd.DataFrame({"id": [], "embedding": []})) == []
        assert s.seq == 0


# ------------------------------------------------------------------ without the extras
def test_core_import_does_not_load_pyarrow_or_pandas():
    code = "import sys, mmwal; print(sorted(m for m in ('pyarrow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_extras_raise_an_import_error_naming_the_extra(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pyarrow"] = None
        sys.modules["pandas"] = None
        import numpy as np, mmwal
        from mmwal.errors import MissingDependencyError
        p = {str(tmp_path / "s")!r}
        with mmwal.Store(p, dim=2, durability="os") as s:
            s.add("a", [1.0, 2.0])
            calls = [lambda: s.add_arrow(None), lambda: s.add_pandas(None)]
            r = mmwal.Reader(p)
            calls += [r.to_arrow, r.to_pandas, r.snapshot().to_arrow]
            for call in calls:
                try:
                    call()
                except ImportError as exc:
                    assert isinstance(exc, MissingDependencyError), type(exc)
                    print(exc.extra, "|", exc)
                else:
                    raise AssertionError("no ImportError")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["arrow", "pandas", "arrow", "pandas", "arrow"]
    assert "pip install 'mmwal[arrow]'" in lines[0]
    assert "pip install 'mmwal[pandas]'" in lines[1]
    # the dump command exits 2 with one line naming the extra
    dump = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.modules["pyarrow"] = None
        from mmwal.cli import main
        sys.exit(main(["dump", {str(tmp_path / "s")!r}, "--format", "parquet",
                       "--output", {str(tmp_path / "o.parquet")!r}]))
    """)], capture_output=True, text=True)
    assert dump.returncode == 2, dump.stderr
    assert dump.stderr.count("\n") == 1 and "pip install 'mmwal[arrow]'" in dump.stderr
    assert not os.path.exists(tmp_path / "o.parquet")


def test_missing_dependency_error_pickles():
    import pickle

    e = MissingDependencyError("m", package="pyarrow", extra="arrow")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, ImportError) and e2.extra == "arrow" and str(e2) == "m"


# ------------------------------------------------------------------ mmwal dump --format parquet
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="error")
    env.pop("MMWAL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mmwal", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_dump_parquet_reads_back_equal_to_to_arrow(store_path, tmp_path):
    make_store(store_path)
    with mmwal.Store(store_path) as s:  # a tail and a deletion too
        s.add("tail", vecs(500, 1, DIM)[0], "t", {"t": [1, {"x": None}]})
        s.remove(doc_id(30))
    out = str(tmp_path / "docs.parquet")
    p = run_cli("dump", store_path, "--format", "parquet", "--output", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {N} documents")
    back = pq.read_table(out)
    with mmwal.Reader(store_path) as r:
        expected = r.to_arrow()
    # Parquet names a list's child "element" (its LIST spec) where Arrow says "item"
    emb = back.schema.field("embedding").type
    assert emb.list_size == DIM and emb.value_type == pa.float32()
    assert back.schema.metadata == expected.schema.metadata
    assert back.schema.field("metadata").metadata == {b"mmwal.encoding": b"json"}
    assert back.cast(expected.schema).equals(expected)
    assert [f for f in os.listdir(tmp_path) if "tmp" in f] == []

    p = run_cli("dump", store_path, "--format", "parquet", "--output", out, "--ids")
    assert p.returncode == 0 and pq.read_table(out).column_names == ["id"]


@pytest.mark.parametrize("args, msg", [
    (["--format", "parquet"], "needs --output"),
    (["--output", "x.parquet"], "--output is for --format parquet"),
    (["--format", "parquet", "--output", "/nonexistent-dir/x.parquet"], "does not exist"),
    (["--format", "csv"], "invalid choice"),
])
def test_dump_parquet_usage_errors_exit_2(store_path, args, msg):
    make_store(store_path, n=3)
    p = run_cli("dump", store_path, *args)
    assert p.returncode == 2 and msg in p.stderr
    assert "Traceback" not in p.stderr


def test_dump_parquet_without_a_store_exits_2(tmp_path):
    p = run_cli("dump", str(tmp_path / "nowhere"), "--format", "parquet", "--output",
                str(tmp_path / "o.parquet"))
    assert p.returncode == 2 and p.stderr.startswith("mmwal dump: no mmwal store")
    assert os.listdir(tmp_path) == []
