"""Input validation of Store and friends: typed errors, clear messages, nothing written.

Every bad call is made against a store that already holds a few records; the
test then checks that the log files are byte-identical and that the next good
call gets the next seq.  Every raised error must survive a pickle round trip
(errors cross process boundaries in worker pools); pickle is used for nothing
else in the suite.
"""

from __future__ import annotations

import hashlib
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
        assert getattr(back, key) == value


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


def test_add_accepts_huge_finite_and_castable_values(filled):
    # float32 max squared overflows a dot product: the fast finiteness check must not refuse it.
    big = np.full(DIM, np.finfo(np.float32).max, dtype=np.float32)
    s1 = filled.add("big", big)
    s2 = filled.add("ints", list(range(DIM)))
    s3 = filled.add("f64", np.arange(DIM, dtype=np.float64) / 3)
    s4 = filled.add_many(["big1", "big2"], np.stack([big, -big]))[0]
    ops = {op.seq: op for op in mmwal.replay(filled.path)}
    assert ops[s1].embedding.tobytes() == big.tobytes()
    assert ops[s2].embedding.tolist() == list(range(DIM))
    assert ops[s3].embedding.tobytes() == (np.arange(DIM) / 3).astype(np.float32).tobytes()
    assert ops[s4 + 1].embedding.tobytes() == (-big).tobytes()


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
    monkeypatch.setattr(F, "FORMAT_VERSION", F.FORMAT_VERSION + 1)
    newer = F.encode_manifest({**body, "format": F.FORMAT_VERSION})
    monkeypatch.undo()
    with open(manifest, "wb") as f:
        f.write(newer)
    before = fingerprint(path)
    for call in (lambda: mmwal.Store(path), lambda: mmwal.Store(path, dim=DIM),
                 lambda: list(mmwal.replay(path))):
        with pytest.raises(FormatVersionError) as ei:
            call()
        assert "upgrade" in str(ei.value) and ei.value.version == F.FORMAT_VERSION + 1
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
