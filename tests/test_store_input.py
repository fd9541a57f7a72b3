"""Input validation of Store and friends: typed errors, clear messages, nothing written.

Every bad call is made against a store that already holds a few records; the
test then checks that the log files are byte-identical and that the next good
call gets the next seq.  Every raised error must survive a pickle round trip
(errors cross process boundaries in worker pools); pickle is used for nothing
else in the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from helpers import DIM, read_log, vec

import mmwal
from mmwal import _format as F
from mmwal.errors import (
    ClosedError,
    DimensionError,
    FormatVersionError,
    InvalidInputError,
    PoisonedError,
    StorageIOError,
    StoreNotFoundError,
)


def fingerprint(path):
    """Names and contents of every file of the store except the lock files."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if rel.startswith("locks"):
                out[rel] = None
                continue
            with open(full, "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def check_pickles(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.args == err.args
    for key, value in getattr(err, "facts", {}).items():
        got = getattr(back, key)
        assert got == value or (value != value and got != got)  # NaN facts


@pytest.fixture
def filled(store_path):
    """A store with three records and an open Store on it."""
    store = mmwal.Store(store_path, dim=DIM, durability="os")
    store.add("a", vec(1), content="first", metadata={"x": 1})
    store.add_many(["b", "c"], np.stack([vec(2), vec(3)]))
    try:
        yield store
    finally:
        store.close()


def expect_rejected(store, call, err_type, *words):
    """``call(store)`` raises ``err_type`` naming ``words``; the store is unchanged."""
    before_files = fingerprint(store.path)
    before_log = read_log(store.path)
    seq = store.seq
    with pytest.raises(err_type) as ei:
        call(store)
    err = ei.value
    assert isinstance(err, mmwal.MmwalError)
    msg = str(err).lower()
    for w in words:
        assert w.lower() in msg, f"{w!r} not in message {str(err)!r}"
    check_pickles(err)
    assert fingerprint(store.path) == before_files, "a rejected call wrote to the store"
    assert store.seq == seq
    assert read_log(store.path) == before_log
    # The store still works and the rejected call consumed no seq.
    assert store.add("after", vec(99)) == seq + 1
    return err


NAN = np.full(DIM, 0.5, dtype=np.float32)
NAN[3] = np.nan
INF = np.full(DIM, 0.5, dtype=np.float32)
INF[0] = np.inf
NEG_INF = -INF
BIG64 = np.full(DIM, 0.5)  # float64 that overflows float32
BIG64[5] = 1e300


@pytest.mark.parametrize(("embedding", "err_type", "words"), [
    (np.ones(DIM - 1, dtype=np.float32), DimensionError, ("dimension", str(DIM - 1), str(DIM))),
    (np.ones(DIM + 1), DimensionError, ("dimension", str(DIM + 1))),
    (np.ones((1, DIM), dtype=np.float32), InvalidInputError, ("shape",)),
    (np.float32(1.0), InvalidInputError, ()),
    (NAN, InvalidInputError, ("non-finite", "3")),
    (INF, InvalidInputError, ("non-finite", "0")),
    (NEG_INF, InvalidInputError, ("non-finite",)),
    (BIG64, InvalidInputError, ("non-finite", "5")),
    (["a"] * DIM, InvalidInputError, ("dtype",)),
    ([1.0] * (DIM - 1) + ["x"], InvalidInputError, ("dtype",)),
    (np.array([1.0] * DIM, dtype=object), InvalidInputError, ("dtype", "object")),
    (np.ones(DIM, dtype=np.complex64), InvalidInputError, ("dtype", "complex")),
    ([[1.0, 2.0], [3.0]], InvalidInputError, ("not an array",)),
    (None, InvalidInputError, ()),
    ("12345678", InvalidInputError, ()),
], ids=lambda x: type(x).__name__)
def test_add_bad_embedding(filled, embedding, err_type, words):
    err = expect_rejected(filled, lambda s: s.add("new", embedding), err_type, *words)
    assert isinstance(err, ValueError)
    if err_type is DimensionError:
        assert err.expected == DIM


def test_add_accepts_castable_values(filled):
    # Vectors too long for float32 scoring are refused: see
    # test_vectors_whose_norm_overflows_are_refused and the norm-limit tests below.
    s2 = filled.add("ints", list(range(DIM)))
    s3 = filled.add("f64", np.arange(DIM, dtype=np.float64) / 3)
    ops = {op.seq: op for op in mmwal.replay(filled.path)}
    assert ops[s2].embedding.tolist() == list(range(DIM))
    assert ops[s3].embedding.tobytes() == (np.arange(DIM) / 3).astype(np.float32).tobytes()


@pytest.mark.parametrize(("bad_id", "words"), [
    (1, ("str", "int")), (None, ("str",)), (b"bytes", ("str", "bytes")), ("", ("non-empty",)),
    (["a"], ("str",)), ("x" * 5000, ("longer",)),
], ids=["int", "None", "bytes", "empty", "list", "too-long"])
def test_bad_id(filled, bad_id, words):
    err = expect_rejected(filled, lambda s: s.add(bad_id, vec(5)), InvalidInputError, *words)
    assert isinstance(err, ValueError)
    expect_rejected(filled, lambda s: s.remove(bad_id), InvalidInputError, *words)
    expect_rejected(filled, lambda s: s.add_many(["ok", bad_id], np.stack([vec(1), vec(2)])),
                    InvalidInputError, "ids[1]", *words)


@pytest.mark.parametrize(("metadata", "words"), [
    ([1, 2], ("dict", "list")),
    ("meta", ("dict", "str")),
    ({"s": {1, 2}}, ("set",)),
    ({"n": np.float32(1.5)}, ("float32",)),
    ({"n": np.int64(3)}, ("int64",)),
    ({"n": [np.arange(3)]}, ("ndarray",)),
    ({1: "int key"}, ("keys must be str", "int")),
    ({"outer": {2: "nested int key"}}, ("keys must be str",)),
    ({"outer": [{"ok": 1}, {(1, 2): "tuple key"}]}, ("keys must be str", "tuple")),
    ({"big": 2**70}, ("cannot encode",)),
    ({"obj": object()}, ("object",)),
    ({"surrogate": "\ud800"}, ("cannot encode",)),
], ids=lambda x: repr(x)[:20])
def test_bad_metadata(filled, metadata, words):
    err = expect_rejected(filled, lambda s: s.add("m", vec(5), metadata=metadata),
                          InvalidInputError, *words)
    assert isinstance(err, ValueError)
    expect_rejected(filled, lambda s: s.add_many(["m1", "m2"], np.stack([vec(1), vec(2)]),
                                                 metadatas=[{"fine": 1}, metadata]),
                    InvalidInputError, *words)


@pytest.mark.parametrize(("content", "words"), [(5, ("str", "int")), (b"x", ("str", "bytes")),
                                                 ("\udcff", ("cannot encode",))])
def test_bad_content(filled, content, words):
    expect_rejected(filled, lambda s: s.add("c", vec(5), content=content),
                    InvalidInputError, *words)


@pytest.mark.parametrize(("call", "err_type", "words"), [
    (lambda s: s.add_many(["a", "b", "c"], np.stack([vec(1), vec(2)])), InvalidInputError,
     ("shape", "(2, 8)", "(3, 8)")),
    (lambda s: s.add_many(["a", "b"], np.ones((2, DIM + 2))), DimensionError, ("dimension",)),
    (lambda s: s.add_many(["a", "b"], np.ones(DIM)), InvalidInputError, ("shape",)),
    (lambda s: s.add_many(["a", "b"], np.ones((2, DIM)), contents=["x"]), InvalidInputError,
     ("contents", "1 items", "expected 2")),
    (lambda s: s.add_many(["a", "b"], np.ones((2, DIM)), contents="xy"), InvalidInputError,
     ("contents",)),
    (lambda s: s.add_many(["a", "b"], np.ones((2, DIM)), contents=["x", 3]), InvalidInputError,
     ("contents[1]",)),
    (lambda s: s.add_many(["a", "b"], np.ones((2, DIM)), metadatas=[None]),
     InvalidInputError, ("metadatas", "expected 2")),
    (lambda s: s.add_many("ab", np.ones((2, DIM))), InvalidInputError, ("ids",)),
    (lambda s: s.add_many(5, np.ones((2, DIM))), InvalidInputError, ("ids",)),
    (lambda s: s.add_many(["a", "b", "c"], np.stack([vec(1), vec(2) * np.nan, vec(3)])),
     InvalidInputError, ("non-finite", "(1, 0)")),
], ids=["len-vecs", "dim", "1d", "len-contents", "str-contents", "bad-content",
        "len-metadatas", "ids-str", "ids-int", "nan-row"])
def test_add_many_bad(filled, call, err_type, words):
    expect_rejected(filled, call, err_type, *words)


def test_add_many_empty_writes_nothing(filled):
    before = fingerprint(filled.path)
    assert filled.add_many([], np.zeros((0, DIM))) == range(0)
    assert fingerprint(filled.path) == before


def test_closed_store(filled):
    filled.close()
    for call in (lambda s: s.add("x", vec(1)), lambda s: s.remove("a"), lambda s: s.clear(),
                 lambda s: s.add_many(["x"], vec(1)[None]), lambda s: s.sync()):
        with pytest.raises(ClosedError) as ei:
            call(filled)
        assert "closed" in str(ei.value) and isinstance(ei.value, ValueError)
        check_pickles(ei.value)
    filled.close()  # idempotent


# ------------------------------------------------------------------ opening
def test_open_with_another_dim(filled):
    before = fingerprint(filled.path)
    with pytest.raises(DimensionError) as ei:
        mmwal.Store(filled.path, dim=DIM + 1)
    err = ei.value
    assert (err.expected, err.got) == (DIM, DIM + 1)
    assert str(DIM) in str(err) and str(DIM + 1) in str(err)
    assert isinstance(err, ValueError)
    check_pickles(err)
    assert fingerprint(filled.path) == before
    with mmwal.Store(filled.path) as again:  # dim may be omitted
        assert again.dim == DIM


def test_open_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_bytes(b"not a store")
    with pytest.raises(InvalidInputError) as ei:
        mmwal.Store(path, dim=4)
    assert "not a directory" in str(ei.value) and isinstance(ei.value, ValueError)
    check_pickles(ei.value)
    assert path.read_bytes() == b"not a store"
    for fn in (mmwal.replay, mmwal.verify):
        try:
            r = fn(str(path))
            if fn is mmwal.replay:
                list(r)
            else:
                assert not r.ok
        except mmwal.MmwalError as exc:
            check_pickles(exc)
    assert path.read_bytes() == b"not a store"


def test_open_missing_store_without_dim(tmp_path):
    path = tmp_path / "missing"
    with pytest.raises(InvalidInputError) as ei:
        mmwal.Store(path)
    assert "dim" in str(ei.value)
    check_pickles(ei.value)
    assert not path.exists(), "a refused open left files behind"
    with pytest.raises(StoreNotFoundError) as ei2:
        list(mmwal.replay(path))
    assert isinstance(ei2.value, FileNotFoundError) and str(path) in str(ei2.value)
    check_pickles(ei2.value)
    assert not path.exists()
    assert not mmwal.verify(path).ok
    assert not path.exists()


def test_open_newer_format_version(filled, monkeypatch):
    path = filled.path
    filled.close()
    manifest = os.path.join(path, "MANIFEST")
    with open(manifest, "rb") as f:
        body = F.decode_manifest(f.read())
    newer = F.encode_manifest({**body, "format": F.MANIFEST_VERSION + 1},
                              version=F.MANIFEST_VERSION + 1)
    with open(manifest, "wb") as f:
        f.write(newer)
    before = fingerprint(path)
    for call in (lambda: mmwal.Store(path), lambda: mmwal.Store(path, dim=DIM),
                 lambda: list(mmwal.replay(path))):
        with pytest.raises(FormatVersionError) as ei:
            call()
        assert "upgrade" in str(ei.value) and ei.value.version == F.MANIFEST_VERSION + 1
        check_pickles(ei.value)
    assert not mmwal.verify(path).ok
    assert fingerprint(path) == before


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"dim": 0}, ("dim",)), ({"dim": "8"}, ("dim",)), ({"dim": 2.0}, ("dim",)),
    ({"dim": 8, "durability": "never"}, ("durability",)),
    ({"dim": 8, "config": {"segment_bytes": 1}}, ("config",)),
])
def test_bad_store_arguments(store_path, kwargs, words):
    with pytest.raises(InvalidInputError) as ei:
        mmwal.Store(store_path, **kwargs)
    for w in words:
        assert w in str(ei.value)
    check_pickles(ei.value)
    assert not os.path.exists(store_path)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"segment_bytes": 100}, "segment_bytes"), ({"sync_every_records": 0}, "sync_every_records"),
    ({"sync_every_ms": 0}, "sync_every_ms"), ({"lock_timeout": -1}, "lock_timeout"),
    ({"recovery": "yolo"}, "recovery"), ({"checkpoint_threshold": 1.5}, "checkpoint_threshold"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(InvalidInputError) as ei:
        mmwal.Config(**kwargs)
    assert name in str(ei.value) and isinstance(ei.value, ValueError)
    check_pickles(ei.value)


def test_bad_replay_arguments(filled):
    for after in (-1, "3", 1.0):
        with pytest.raises(InvalidInputError) as ei:
            list(mmwal.replay(filled.path, after_seq=after))
        check_pickles(ei.value)
    with pytest.raises(InvalidInputError) as ei:
        list(mmwal.replay(filled.path, mode="lenient"))
    assert "lenient" in str(ei.value)


def test_io_errors_pickle_with_errno():
    for cls in (StorageIOError, PoisonedError):
        err = cls("fsync failed on /x: Input/output error", err=5, path="/x", op="fsync")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err)
        assert back.errno == 5 and back.filename == "/x" and back.op == "fsync"
        assert isinstance(back, OSError) and isinstance(back, mmwal.MmwalError)


# ====================================================================== issue 10: bad input
# Principle: whatever add/add_many accept, replay, Reader and verify read back equal
# (after the documented normalisation); everything else is a typed error raised before
# anything is appended.
class StrSub(str):
    pass


class ListSub(list):
    pass


def read_back(path, key):
    """The document ``key`` as replay (last op), a Reader, and a Reader after a checkpoint see it."""
    ops = [op for op in mmwal.replay(path) if op.id == key and op.kind == "add"]
    with mmwal.Reader(path) as r:
        doc = r[key]
        got_reader = (doc.id, doc.content, doc.metadata)
    return (ops[-1].id, ops[-1].content, ops[-1].metadata), got_reader


def exact_types(x):
    """True when ``x`` is built of plain dict/list/str/int/float/bool/bytes/None only."""
    t = type(x)
    if t is dict:
        return all(type(k) is str and exact_types(v) for k, v in x.items())
    if t is list:
        return all(exact_types(v) for v in x)
    return t in (str, int, float, bool, bytes, type(None))


@pytest.mark.parametrize("bad_id", [np.str_(""), StrSub(""), StrSub("x" * 5000),
                                    np.str_("y" * 4097), StrSub("\ud800")],
                         ids=["np-empty", "sub-empty", "sub-long", "np-long", "sub-surrogate"])
def test_str_subclass_ids_are_checked(filled, bad_id):
    expect_rejected(filled, lambda s: s.add(bad_id, vec(5)), InvalidInputError, "id")
    expect_rejected(filled, lambda s: s.remove(bad_id), InvalidInputError, "id")
    expect_rejected(filled, lambda s: s.add_many(["ok", bad_id], np.stack([vec(1), vec(2)])),
                    InvalidInputError, "ids[1]")


def test_str_subclass_ids_are_stored_as_plain_str(filled):
    class Loud(str):
        def __str__(self):
            return "not the id"

    filled.add(np.str_("np-id"), vec(1))
    filled.add_many([StrSub("sub-a"), Loud("sub-b")], np.stack([vec(2), vec(3)]))
    filled.remove(StrSub("a"))
    ops = list(mmwal.replay(filled.path))
    assert all(type(op.id) is str for op in ops if op.id is not None)
    with mmwal.Reader(filled.path) as r:
        assert {"np-id", "sub-a", "sub-b"} <= set(r.ids) and "a" not in r
        assert all(type(i) is str for i in r.ids)
    filled.checkpoint()
    with mmwal.Reader(filled.path) as r:
        assert r["sub-b"].id == "sub-b" and "not the id" not in r
    assert mmwal.verify(filled.path).ok


@pytest.mark.parametrize("bad_id", ["\ud800", "a\udcffb", "\udfff" * 3])
def test_surrogate_ids_are_refused_with_a_clear_message(filled, bad_id):
    for call in (lambda s: s.add(bad_id, vec(5)), lambda s: s.remove(bad_id)):
        err = expect_rejected(filled, call, InvalidInputError, "UTF-8")
        assert "metadata" not in str(err)


@pytest.mark.parametrize("ids", [
    {"a", "b"}, frozenset({"a", "b"}), {"a": 1, "b": 2}.keys(), {"a": 1, "b": 2}.values(),
    {"a": 1, "b": 2}, iter(["a", "b"]),
], ids=["set", "frozenset", "keys", "values", "dict", "iterator"])
def test_add_many_refuses_unordered_or_one_shot_ids(filled, ids):
    expect_rejected(filled, lambda s: s.add_many(ids, np.stack([vec(1), vec(2)])),
                    InvalidInputError, "ids")


@pytest.mark.parametrize("field", ["contents", "metadatas"])
def test_add_many_refuses_unordered_contents_and_metadatas(filled, field):
    bad = {"contents": {"x", "y"}, "metadatas": {"a": None, "b": None}.values()}[field]
    expect_rejected(filled, lambda s: s.add_many(["a", "b"], np.stack([vec(1), vec(2)]),
                                                 **{field: bad}), InvalidInputError, field)


def test_add_many_accepts_ordered_sequences(filled):
    seqs = filled.add_many(("t1", "t2"), np.stack([vec(1), vec(2)]), contents=("x", "y"),
                           metadatas=({"i": 1}, None))
    seqs2 = filled.add_many(np.array(["n1", "n2"]), np.stack([vec(3), vec(4)]))
    ops = {op.seq: op for op in mmwal.replay(filled.path)}
    assert [ops[s].id for s in seqs] == ["t1", "t2"] and ops[seqs[0]].metadata == {"i": 1}
    assert [ops[s].id for s in seqs2] == ["n1", "n2"]
    assert all(type(ops[s].id) is str for s in seqs2)


def test_metadata_subclasses_and_tuples_are_normalised(filled):
    import collections
    import enum

    class Color(enum.IntEnum):
        RED = 3

    meta = collections.OrderedDict(
        od=collections.OrderedDict(b=2, a=1),
        dd=collections.defaultdict(list, {"k": ListSub([1, (2, 3)])}),
        tup=(1, "x", (None, True)),
        sub=StrSub("plain"),
        num=np.float64(0.25),
        enum=Color.RED,
        ctr=collections.Counter({"w": 2}),
    )
    meta[StrSub("subkey")] = np.str_("np")
    want = {"od": {"b": 2, "a": 1}, "dd": {"k": [1, [2, 3]]}, "tup": [1, "x", [None, True]],
            "sub": "plain", "num": 0.25, "enum": 3, "ctr": {"w": 2}, "subkey": "np"}
    filled.add("norm", vec(7), content=StrSub("body"), metadata=meta)
    filled.add_many(["n1", "n2"], np.stack([vec(8), vec(9)]), contents=[StrSub("c1"), "c2"],
                    metadatas=[collections.OrderedDict(x=(1,)), meta])
    for key in ("norm", "n2"):
        for got in read_back(filled.path, key):
            assert got[2] == want and exact_types(got[2]), got
            assert list(got[2]) == list(want)  # key order kept
            assert type(got[2]["enum"]) is int and type(got[2]["num"]) is float
    assert read_back(filled.path, "norm")[0][1] == "body"
    assert read_back(filled.path, "n1")[1][1:] == ("c1", {"x": [1]})
    filled.checkpoint()
    with mmwal.Reader(filled.path) as r:
        assert r["norm"].metadata == want and exact_types(r["norm"].metadata)
    assert mmwal.verify(filled.path).ok


def deep(levels, leaf=1, kind=dict):
    """``levels`` containers nested inside the metadata dict (``{"x": [[...leaf]]}``)."""
    v = leaf
    for _ in range(levels):
        v = {"x": v} if kind is dict else kind([v])
    return {"top": v}


def test_metadata_nesting_limit_is_shared_by_writer_and_reader(filled):
    limit = F.MAX_METADATA_DEPTH
    for kind in (dict, list, ListSub):
        filled.add("deep-ok", vec(1), metadata=deep(limit, kind=kind))
        got = read_back(filled.path, "deep-ok")
        assert got[0][2] == got[1][2] == deep(limit, kind=dict if kind is dict else list)
        expect_rejected(filled, lambda s, k=kind: s.add("too-deep", vec(1),
                                                        metadata=deep(limit + 1, kind=k)),
                        InvalidInputError, "nested", str(limit))
    import collections
    od = deep(limit + 1)
    od["top"] = collections.OrderedDict(od["top"])
    expect_rejected(filled, lambda s: s.add("too-deep", vec(1), metadata=od),
                    InvalidInputError, "nested")
    # The reader refuses what the writer refuses: a CRC-valid record nested one level
    # deeper than the limit (which no writer produces) is corruption, not data.
    payload = F.pack([1.0, DIM, ["x"], [""], [deep(limit + 1)], vec(1).tobytes()])
    with pytest.raises(mmwal.CorruptionError) as ei:
        F.decode_add(1, payload, DIM, "seg", 64)
    assert "nested" in str(ei.value)
    payload = F.pack([1.0, DIM, ["x"], [""], [deep(limit)], vec(1).tobytes()])
    assert F.decode_add(1, payload, DIM, "seg", 64)[3] == [deep(limit)]
    for bad_meta in ({b"bytes-key": 1}, {"a": {b"k": 1}}, {"a": [{b"k": 1}]}):
        payload = F.pack([1.0, DIM, ["x"], [""], [bad_meta], vec(1).tobytes()])
        with pytest.raises(mmwal.CorruptionError):
            F.decode_add(1, payload, DIM, "seg", 64)


def test_metadata_scalar_round_trip(filled):
    meta = {"t": True, "f": False, "one": 1, "zero": 0, "fl": 1.0, "neg": -2**63,
            "max": 2**64 - 1, "bytes": b"\x00\xff", "none": None, "s": "\u2713",
            "empty": {}, "el": [], "tiny": 5e-324, "big": 1.7976931348623157e308}
    filled.add("scalars", vec(3), metadata=meta)
    for got in read_back(filled.path, "scalars"):
        m = got[2]
        assert m == meta and exact_types(m)
        assert type(m["t"]) is bool and type(m["one"]) is int and type(m["fl"]) is float
        assert type(m["zero"]) is int and m["f"] is False
    filled.checkpoint()
    with mmwal.Reader(filled.path) as r:
        m = r["scalars"].metadata
        assert m == meta and type(m["t"]) is bool and type(m["one"]) is int
    assert mmwal.verify(filled.path).ok


@pytest.mark.parametrize(("metadata", "words"), [
    ({"dd": __import__("collections").defaultdict(int, {1: 2})}, ("keys must be str", "int")),
    ({"od": __import__("collections").OrderedDict({(1,): 2})}, ("keys must be str",)),
    ({"e": __import__("msgpack").ExtType(5, b"x")}, ("ExtType",)),
    ({"ts": __import__("msgpack").Timestamp(1, 0)}, ("Timestamp",)),
    ({"dt": __import__("datetime").datetime(2020, 1, 1)}, ("datetime",)),
    ({"nan": float("nan")}, ("finite",)),
    ({"inf": [float("inf")]}, ("finite",)),
    ({"ninf": {"x": -float("inf")}}, ("finite",)),
    ({"np": np.float64("nan")}, ("finite",)),
    ({"big": 2**64}, ("64-bit",)),
    ({"small": -2**63 - 1}, ("64-bit",)),
    ({"fs": frozenset({1})}, ("frozenset",)),
    ({"ba": bytearray(b"x")}, ("bytearray",)),
    ({"mv": memoryview(b"x")}, ("memoryview",)),
    ({"gen": (i for i in range(2))}, ("generator",)),
    ({"k\ud800": 1}, ("UTF-8",)),
    ({"v": ["\udcff"]}, ("UTF-8",)),
    ({"bk": {b"k": 1}}, ("keys must be str", "bytes")),
    ({"nb": np.bool_(True)}, ("numpy",)),
], ids=lambda x: "-".join(x).encode("ascii", "replace").decode() if isinstance(x, dict)
   else "w")
def test_bad_metadata_more(filled, metadata, words):
    err = expect_rejected(filled, lambda s: s.add("m", vec(5), metadata=metadata),
                          InvalidInputError, *words)
    assert isinstance(err, ValueError)
    expect_rejected(filled, lambda s: s.add_many(["m1", "m2"], np.stack([vec(1), vec(2)]),
                                                 metadatas=[{"fine": 1}, metadata]),
                    InvalidInputError, "metadatas[1]", *words)


def test_metadata_keys_that_collide_after_normalisation_are_refused(filled):
    class Odd(str):
        def __hash__(self):
            return 12345

        def __eq__(self, other):
            return self is other

    meta = {"a": 1, Odd("a"): 2}
    assert len(meta) == 2
    expect_rejected(filled, lambda s: s.add("m", vec(5), metadata=meta), InvalidInputError,
                    "twice")


def test_metadata_top_level_must_be_a_mapping(filled):
    for bad in ([("a", 1)], (("a", 1),), "x", 3):
        expect_rejected(filled, lambda s, b=bad: s.add("m", vec(5), metadata=b),
                        InvalidInputError, "metadata", "dict")


# ---------------------------------------------------------------------- huge vectors
def reference_scores(rows, q, metric):
    E = np.asarray(rows, dtype=np.float64)
    Q = np.asarray(q, dtype=np.float64)
    if metric == "dot":
        return E @ Q
    if metric == "cosine":
        return (E @ Q) / (np.linalg.norm(E, axis=1) * np.linalg.norm(Q))
    return np.linalg.norm(E - Q, axis=1)


@pytest.mark.parametrize("scale", [1e20, 1e30, float(np.finfo(np.float32).max)])
def test_vectors_whose_norm_overflows_are_refused(filled, scale):
    v = np.full(DIM, scale / 4, dtype=np.float64)
    err = expect_rejected(filled, lambda s: s.add("huge", v), InvalidInputError, "norm")
    assert "2**62" in str(err) or "4.6e+18" in str(err)
    expect_rejected(filled, lambda s: s.add_many(["h1", "h2"], np.stack([vec(1), v])),
                    InvalidInputError, "norm", "embeddings[1]")
    with mmwal.Reader(filled.path) as r, pytest.raises(InvalidInputError) as ei:
        r.search(v, k=1)
    assert "norm" in str(ei.value)


@pytest.mark.parametrize("where", ["tail", "checkpoint"])
def test_large_accepted_vectors_are_scored_consistently(store_path, where):
    big = 2.0**61 / np.sqrt(DIM)  # norm 2**61: just inside the limit
    rows = np.stack([np.full(DIM, big), -np.full(DIM, big), vec(1), vec(2) * 1e-3,
                     np.r_[np.full(DIM // 2, big), np.zeros(DIM - DIM // 2)]]).astype(np.float32)
    names = ["big", "neg", "v1", "small", "half"]
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add_many(names, rows)
        if where == "checkpoint":
            s.checkpoint()
    with mmwal.Reader(store_path) as r:
        for q in (vec(3), np.full(DIM, big, dtype=np.float32), vec(4) * 1e9):
            for metric in ("cosine", "dot", "l2"):
                hits = r.search(q, k=len(names), metric=metric)
                ref = reference_scores(rows, q, metric)
                got = {h.id: h.score for h in hits}
                assert set(got) == set(names), (metric, got)
                rn = np.linalg.norm(rows.astype(np.float64), axis=1)
                qn = float(np.linalg.norm(np.asarray(q, dtype=np.float64)))
                # Error bounds of float32 arithmetic at the scale of the operands.
                scale = {"dot": rn * qn, "cosine": np.ones(len(rn)), "l2": rn + qn}[metric]
                for i, n in enumerate(names):
                    assert np.isfinite(got[n]), (metric, n, got[n])
                    assert abs(got[n] - ref[i]) <= 1e-5 * scale[i], (metric, n, got[n], ref[i])
    assert mmwal.verify(store_path).ok


def test_add_accepts_float32_castable_values_up_to_the_norm_limit(filled):
    edge = np.zeros(DIM, dtype=np.float32)
    edge[0] = np.float32(2.0**62)  # exactly at the limit: accepted
    s1 = filled.add("edge", edge)
    s2 = filled.add_many(["e1", "e2"], np.stack([edge, -edge]))[0]
    ops = {op.seq: op for op in mmwal.replay(filled.path)}
    assert ops[s1].embedding.tobytes() == edge.tobytes()
    assert ops[s2 + 1].embedding.tobytes() == (-edge).tobytes()
    over = edge.copy()
    over[1] = 2.0**40
    expect_rejected(filled, lambda s: s.add("over", over), InvalidInputError, "norm")


# ---------------------------------------------------------------------- reader lookups
@pytest.mark.parametrize("checkpointed", [False, True])
def test_reader_lookup_of_an_unencodable_id(filled, checkpointed):
    if checkpointed:
        filled.checkpoint()
        filled.add("tail-doc", vec(4))
    with mmwal.Reader(filled.path) as r:
        for bad in ("\ud800", "a\udcff", StrSub("\udfff")):
            assert r.get(bad) is None
            assert r.get(bad, "dflt") == "dflt"
            assert bad not in r
            with pytest.raises(KeyError):
                r[bad]
        assert r.get(StrSub("a")).id == "a"
        assert StrSub("b") in r


# ---------------------------------------------------------------------- Config and paths
@pytest.mark.parametrize(("kwargs", "name"), [
    ({"lock_timeout": float("inf")}, "lock_timeout"),
    ({"lock_timeout": float("nan")}, "lock_timeout"),
    ({"lock_timeout": 1e300}, "lock_timeout"),
    ({"lock_timeout": True}, "lock_timeout"),
    ({"lock_timeout": "5"}, "lock_timeout"),
    ({"sync_every_ms": float("inf")}, "sync_every_ms"),
    ({"sync_every_ms": float("nan")}, "sync_every_ms"),
    ({"sync_every_ms": True}, "sync_every_ms"),
    ({"sync_every_ms": 1e300}, "sync_every_ms"),
    ({"checkpoint_threshold": True}, "checkpoint_threshold"),
    ({"keep_checkpoints": -1}, "keep_checkpoints"),
    ({"segment_bytes": 2**64}, "segment_bytes"),
    ({"max_wal_bytes": 2**70}, "max_wal_bytes"),
    ({"chunk_documents": 2**40}, "chunk_documents"),
    ({"metadata_compression_level": True}, "metadata_compression_level"),
    ({"recovery": ["strict"]}, "recovery"),
    ({"auto_checkpoint": 1}, "auto_checkpoint"),
])
def test_bad_config_more(kwargs, name):
    with pytest.raises(InvalidInputError) as ei:
        mmwal.Config(**kwargs)
    assert name in str(ei.value) and isinstance(ei.value, ValueError)
    check_pickles(ei.value)


def test_config_edge_values_are_accepted_and_work(store_path):
    cfg = mmwal.Config(lock_timeout=0, sync_every_ms=0.5, keep_checkpoints=0)
    with mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg) as s:
        s.add("a", vec(1))
        s.sync()
    cfg2 = mmwal.Config(lock_timeout=None, sync_every_ms=10**6)
    with mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg2) as s:
        s.add("b", vec(2))


def test_a_dimension_too_large_for_a_record_is_refused_before_disk(store_path):
    for dim in (F.MAX_PAYLOAD, 2**64, 2**70):
        with pytest.raises(InvalidInputError) as ei:
            mmwal.Store(store_path, dim=dim)
        assert "dim" in str(ei.value)
        assert not os.path.exists(store_path)


def test_store_under_a_regular_file(tmp_path):
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    for path in (f / "sub", f / "sub" / "deeper"):
        with pytest.raises(InvalidInputError) as ei:
            mmwal.Store(path, dim=4)
        assert "not a directory" in str(ei.value) and str(f) in str(ei.value)
        check_pickles(ei.value)
        for call in (lambda p=path: mmwal.Reader(p), lambda p=path: list(mmwal.replay(p))):
            with pytest.raises(mmwal.MmwalError) as ei2:
                call()
            assert isinstance(ei2.value, FileNotFoundError), ei2.value
        assert not mmwal.verify(path).ok
    assert f.read_bytes() == b"x"


def _store_without_permission(target: str, out_fd: int) -> None:
    # Root ignores permissions: the check runs as an unprivileged user.
    res = {}
    try:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            mmwal.Store(target, dim=4)
            res["raised"] = None
        except mmwal.MmwalError as exc:
            res["raised"] = type(exc).__name__
            res["permission"] = isinstance(exc, PermissionError) or \
                "permission" in str(exc).lower()
        except BaseException as exc:  # an untyped error: the finding
            res["raised"] = f"untyped {type(exc).__name__}: {exc}"
    finally:
        os.write(out_fd, json.dumps(res).encode())
        os._exit(0)


def test_store_in_a_directory_without_permission(tmp_path):
    import multiprocessing as mp

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)  # others may enter and list, not create
    rfd, wfd = os.pipe()
    p = mp.get_context("fork").Process(target=_store_without_permission,
                                       args=(str(ro / "s"), wfd))
    p.start()
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    p.join(60)
    res = json.loads(data)
    assert res["raised"] and not res["raised"].startswith("untyped"), res
    assert res["permission"] is True
    assert not (ro / "s").exists()


def test_store_paths_with_odd_parts_raise_typed_errors(tmp_path, store_path):
    with mmwal.Store(store_path, dim=4, durability="os") as s:
        s.add("a", np.ones(4))
    # A store whose wal/ became a file, or whose MANIFEST is a directory.
    broken = tmp_path / "broken"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(store_path, broken)
    for name in os.listdir(broken / "wal"):
        os.unlink(broken / "wal" / name)
    os.rmdir(broken / "wal")
    (broken / "wal").write_bytes(b"")
    for call in (lambda: mmwal.Store(broken, dim=4), lambda: mmwal.Reader(broken),
                 lambda: list(mmwal.replay(broken))):
        with pytest.raises(mmwal.MmwalError):
            call()
    assert not mmwal.verify(broken).ok
    odd = tmp_path / "odd"
    shutil_copy(store_path, odd)
    os.unlink(odd / "MANIFEST")
    (odd / "MANIFEST").mkdir()
    for call in (lambda: mmwal.Store(odd, dim=4), lambda: mmwal.Reader(odd),
                 lambda: list(mmwal.replay(odd))):
        with pytest.raises(mmwal.MmwalError):
            call()
    assert not mmwal.verify(odd).ok


@pytest.mark.parametrize("part", ["wal", "checkpoints", "locks"])
def test_store_parts_that_are_files_raise_typed_errors(tmp_path, store_path, part):
    import shutil
    with mmwal.Store(store_path, dim=4, durability="os") as s:
        s.add("a", np.ones(4))
        s.checkpoint()
        s.add("b", np.ones(4))
    broken = str(tmp_path / "broken")
    shutil.copytree(store_path, broken)
    shutil.rmtree(os.path.join(broken, part))
    with open(os.path.join(broken, part), "wb"):
        pass
    for call in (lambda: mmwal.Store(broken).close(), lambda: mmwal.Reader(broken).close(),
                 lambda: list(mmwal.replay(broken)), lambda: mmwal.verify(broken)):
        try:
            call()
        except mmwal.MmwalError as exc:
            check_pickles(exc)


@pytest.mark.parametrize("bad", ["", "nul\x00byte", 5, None, ["a"]],
                         ids=["empty", "nul", "int", "none", "list"])
def test_paths_that_are_no_paths_are_refused(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: mmwal.Store(bad, dim=4), lambda: mmwal.Reader(bad),
                 lambda: list(mmwal.replay(bad)), lambda: mmwal.verify(bad)):
        with pytest.raises(InvalidInputError) as ei:
            call()
        assert "path" in str(ei.value)
        check_pickles(ei.value)
    assert os.listdir(tmp_path) == [], "a refused path created files"


def test_bytes_paths_work(tmp_path):
    path = os.fsencode(str(tmp_path / "s"))
    with mmwal.Store(path, dim=4, durability="os") as s:
        s.add("a", np.ones(4))
    with mmwal.Reader(path) as r:
        assert "a" in r
    assert [op.id for op in mmwal.replay(path)] == ["a"] and mmwal.verify(path).ok


@pytest.mark.parametrize("where", ["tail", "checkpoint"])
def test_norms_of_vectors_from_before_the_norm_limit(store_path, monkeypatch, where):
    # A log written before the norm limit existed can hold a vector whose squared
    # norm overflows float32: the tail and a checkpoint both give its finite norm.
    import mmwal._validate as V

    monkeypatch.setattr(V, "_MAX_NORM_SQ", float("inf"))  # what an old writer did not check
    old = np.full(DIM, 1e20, dtype=np.float32)
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add_many(["old", "v1"], np.stack([old, vec(1)]))
        if where == "checkpoint":
            s.checkpoint()
    monkeypatch.undo()
    with mmwal.Reader(store_path) as r:
        snap = r.snapshot()
        norms = snap._norms[: snap._n] if where == "tail" else r._state.ckpt.parts[0].view.norms
        want = np.float32(np.linalg.norm(old.astype(np.float64)))
        assert np.isfinite(np.asarray(norms)).all()
        assert np.float32(np.asarray(norms)[0]) == want
