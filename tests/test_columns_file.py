"""columns.bin: metadata columns written with each fragment, mapped, checked, fuzzed."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import mmwal
from mmwal._checkpoint import CheckpointView
from mmwal._search import colfile
from mmwal._search import where as where_

DIM = 4


def metas(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 9 == 0:
            out.append(None)
            continue
        m = {"src": rng.choice(["a.pdf", "b.pdf", "c.txt", "\u00e9t\u00e9.md"]),
             "page": rng.randint(-3, 50)}
        if i % 3:
            m["score"] = rng.random() * 10
        if i % 4 == 0:
            m["draft"] = rng.random() < 0.5
        if i % 5 == 0:
            m["page"] = rng.choice(["iv", 2.5, True, None, [1, 2]])
        if i % 7 == 0:
            m["tags"] = {"nested": i}
        out.append(m)
    return out


FILTERS = [{"src": "a.pdf"}, {"page": {"$gte": 10}}, {"page": {"$lt": 3}},
           {"src": {"$in": ["b.pdf", "\u00e9t\u00e9.md"]}}, {"score": {"$gt": 5.0}},
           {"draft": True}, {"page": {"$ne": "iv"}}, {"tags": {"$exists": True}},
           {"$or": [{"src": "c.txt"}, {"$and": [{"page": {"$gt": 40}}, {"score": {"$lt": 3}}]}]},
           {"src": {"$nin": ["a.pdf"]}}, {"nope": {"$exists": False}}]


def make(path: str, n: int = 600) -> list:
    ms = metas(n)
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many([f"d{i}" for i in range(n)], np.ones((n, DIM), np.float32) + np.arange(
            n, dtype=np.float32)[:, None], metadatas=ms)
        s.checkpoint()
    return ms


def test_columns_file_is_written_and_filters_never_decompress(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    ms = make(path)
    frag = os.path.join(path, "checkpoints", "00000001")
    assert colfile.COLUMNS_FILE in os.listdir(frag)

    def no_chunks(self, k):
        raise AssertionError("a filter decompressed a documents chunk")

    with mmwal.Reader(path) as r:
        monkeypatch.setattr(CheckpointView, "chunk", no_chunks)
        for f in FILTERS:
            want = [f"d{i}" for i, m in enumerate(ms) if where_.matches(where_.parse(f), m)]
            assert r.find(f) == want, f
            hits = r.search(np.ones(DIM), k=5, where=f, exact=True)
            assert {h.id for h in hits} <= set(want)
        monkeypatch.undo()
        cols = r.stats().fragments[0]["columns"]
        assert {"src", "page", "score", "draft", "tags"} <= set(cols)
    assert mmwal.verify(path).ok


def test_columns_file_equals_columns_built_in_memory(tmp_path):
    ms = metas(300, seed=3)
    cols = where_.build_columns(ms)
    p = str(tmp_path / "c.bin")
    meta = colfile.write(p, cols, len(ms))
    assert meta[0] == os.path.getsize(p)
    got = colfile.load(p, meta, len(ms))
    assert set(got) == set(cols)
    for key, kc in cols.items():
        assert set(got[key]) == set(kc)
        for kind, val in kc.items():
            g = got[key][kind]
            if kind == "str":
                assert np.array_equal(g[0], val[0]) and list(g[1]) == list(val[1])
            elif kind == "other":
                assert np.array_equal(g, val)
            else:
                assert np.array_equal(g[0], val[0]) and np.array_equal(g[1], val[1])
    for f in FILTERS:
        e = where_.parse(f)
        assert np.array_equal(where_.compile_columns(e, got, len(ms)),
                              where_.compile_columns(e, cols, len(ms))), f


def test_a_damaged_columns_file_is_reported_and_rebuilt(tmp_path):
    path = str(tmp_path / "s")
    ms = make(path)
    f = os.path.join(path, "checkpoints", "00000001", colfile.COLUMNS_FILE)
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) - 10)
        fh.write(b"\x55" * 8)
    with mmwal.Reader(path) as r:
        want = [f"d{i}" for i, m in enumerate(ms) if m and m.get("src") == "a.pdf"]
        assert r.find({"src": "a.pdf"}) == want  # rebuilt from the documents
        assert "checksum" in r.stats().fragments[0]["columns_error"]
    report = mmwal.verify(path)
    assert not report.ok and [p for p in report.problems if "metadata columns" in p.what]


def test_load_of_random_damage_is_only_corruption(tmp_path):
    """Bit flips and truncations with a matching CRC (a crafted file) never crash load."""
    ms = metas(200, seed=5)
    p = str(tmp_path / "c.bin")
    colfile.write(p, where_.build_columns(ms), len(ms))
    with open(p, "rb") as fh:
        good = fh.read()
    rng = random.Random(11)
    q = str(tmp_path / "bad.bin")
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:
            data = data[: rng.randrange(len(data))]
        for _ in range(rng.randint(1, 6)):
            if data:
                data[rng.randrange(min(len(data), 600))] = rng.randrange(256)
        with open(q, "wb") as fh:
            fh.write(data)
        import zlib
        meta = [len(data), zlib.crc32(bytes(data))]  # as if the descriptor agreed
        try:
            cols = colfile.load(q, meta, len(ms))
            for f in FILTERS:  # whatever loaded evaluates or reports corruption
                where_.compile_columns(where_.parse(f), cols, len(ms))
        except mmwal.CorruptionError:
            pass
    # The descriptor's CRC catches every accidental change.
    with open(q, "wb") as fh:
        fh.write(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(mmwal.CorruptionError, match="checksum"):
        colfile.load(q, [len(good), __import__("zlib").crc32(good)], len(ms))


# ---------------------------------------------------------------------- property tests
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_where import filters as where_filters  # noqa: E402
from test_where import metadatas as where_metadatas  # noqa: E402


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where_filters, where_metadatas)
def test_columns_file_round_trip_agrees_with_matches(tmp_path, where, metas):
    """Any metadata, any filter: the mapped file evaluates exactly like matches()."""
    p = str(tmp_path / f"c-{abs(hash(str(where))) % 10**9}.bin")
    meta = colfile.write(p, where_.build_columns(metas), len(metas))
    try:
        cols = colfile.load(p, meta, len(metas))
        e = where_.parse(where)
        want = [where_.matches(e, m) for m in metas]
        assert where_.compile_columns(e, cols, len(metas)).tolist() == want
    finally:
        os.unlink(p)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(where_filters, min_size=3, max_size=3), where_metadatas, where_metadatas,
       st.integers(0, 2**32 - 1))
def test_filters_through_fragments_deletions_and_tail(tmp_path_factory, wheres, first, second,
                                                      seed):
    """find() equals a dict oracle through two fragments, deletions, a compaction, a tail."""
    rng = random.Random(seed)
    path = str(tmp_path_factory.mktemp("s"))
    oracle: dict[str, object] = {}
    cfg = mmwal.Config(auto_compact=False, chunk_documents=3)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        def put(i, m):
            try:
                s.add(f"d{i}", np.full(DIM, i + 1, np.float32), metadata=m)
            except mmwal.errors.InvalidInputError:  # e.g. NaN or an int past msgpack's range
                m = None
                s.add(f"d{i}", np.full(DIM, i + 1, np.float32), metadata=m)
            oracle[f"d{i}"] = m
        for i, m in enumerate(first):
            put(i, m)
        s.checkpoint()
        for i, m in enumerate(second):  # replaces some rows of the first fragment
            put(rng.randrange(len(first) + len(second) + 1), m)
        for k in rng.sample(sorted(oracle), min(3, len(oracle))):
            s.remove(k)
            oracle.pop(k)
        s.checkpoint()
        def check():
            with mmwal.Reader(path) as r:
                for w in wheres:
                    e = where_.parse(w)
                    want = {k for k, m in oracle.items() if where_.matches(e, m)}
                    assert set(r.find(w)) == want, w
        check()
        if rng.random() < 0.5:
            s.compact()
            check()
        for i, m in enumerate(first[:3]):  # a tail over the fragments
            put(1000 + i, m)
        if oracle:
            k = rng.choice(sorted(oracle))
            s.remove(k)
            oracle.pop(k)
        check()
