"""The Reader API contract: lookups, ids/embeddings, search, refresh, read-only-ness."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ckpt_helpers import DIM, content_of, key_vec, key_vecs, meta_of, snapshot

import mmwal
from mmwal import _snapshot
from mmwal._checkpoint import CheckpointView

Model = dict[str, tuple[np.ndarray, str, object]]


def gauss_vecs(keys, dim: int = DIM) -> np.ndarray:
    """Seeded Gaussian rows: well separated, unlike the integer pattern of key_vecs."""
    return np.stack([np.random.default_rng(k).standard_normal(dim) for k in keys]
                    ).astype(np.float32).reshape(-1, dim)


def put(store: mmwal.Store, model: Model, name: str, key: int, dim: int = DIM,
        vecf=key_vecs) -> None:
    v = vecf([key], dim)[0]
    store.add(name, v, content=content_of(key), metadata=meta_of(key))
    model[name] = (v, content_of(key), meta_of(key))


def check(r: mmwal.Reader, model: Model) -> None:
    assert len(r) == len(model)
    ids = list(r.ids)
    assert len(ids) == len(set(ids)) and set(ids) == set(model)
    emb = r.embeddings
    assert emb.shape == (len(model), r.dim) and emb.dtype == np.float32
    assert not emb.flags.writeable
    with pytest.raises(ValueError):
        emb[:1] = 0  # read-only in every case
    want = np.stack([model[i][0] for i in ids]) if ids else np.empty((0, r.dim), np.float32)
    assert np.array_equal(emb, want)
    for i in ids:
        d = r[i]
        assert d.id == i and (d.content, d.metadata) == model[i][1:]
        assert np.array_equal(d.embedding, model[i][0])


def mixed_store(path: str, dim: int = DIM, n: int = 300, cfg: mmwal.Config | None = None,
                vecf=key_vecs) -> Model:
    """A checkpoint of ``n`` docs plus a log tail that adds, replaces and removes."""
    model: Model = {}
    with mmwal.Store(path, dim=dim, durability="os", config=cfg) as s:
        keys = list(range(n))
        vs = vecf(keys, dim)
        s.add_many([f"c{k}" for k in keys], vs,
                   contents=[content_of(k) for k in keys], metadatas=[meta_of(k) for k in keys])
        for k in keys:
            model[f"c{k}"] = (vs[k], content_of(k), meta_of(k))
        s.checkpoint()
        for k in range(0, n, 9):  # replace checkpoint rows from the tail
            put(s, model, f"c{k}", 10_000 + k, dim, vecf)
        for k in range(40):       # tail-only documents
            put(s, model, f"t{k}", 20_000 + k, dim, vecf)
        for k in range(0, 40, 5):  # replace tail documents
            put(s, model, f"t{k}", 30_000 + k, dim, vecf)
        for name in [f"c{k}" for k in range(1, n, 13)] + [f"t{k}" for k in range(1, 40, 7)]:
            s.remove(name)        # remove checkpoint rows and tail documents
            model.pop(name, None)
        s.remove("absent")
    return model


# ---------------------------------------------------------------------- basics
def test_lookups_ids_embeddings(store_path):
    model = mixed_store(store_path)
    with mmwal.Reader(store_path) as r:
        check(r, model)
        assert "c1" not in r and r.get("c1") is None and r.get("c1", 7) == 7
        with pytest.raises(KeyError):
            r["c1"]
        with pytest.raises(KeyError):
            r["never"]
        assert "never" not in r and 5 not in r
        ids = r.ids
        assert len(ids) == len(model)
        assert ids[-1] == list(ids)[-1] and ids[:3] == list(ids)[:3]
        with pytest.raises(IndexError):
            ids[len(model)]
        # row order: surviving checkpoint rows, then tail docs in last-write order
        ckpt_part = [f"c{k}" for k in range(300) if k % 9 and (k - 1) % 13]
        assert list(ids)[: len(ckpt_part)] == ckpt_part
        assert r.seq == 300 + 34 + 40 + 8 + len(range(1, 300, 13)) + len(range(1, 40, 7)) + 1
    with pytest.raises(mmwal.errors.ClosedError):
        len(r)


def test_embeddings_zero_copy_after_checkpoint(store_path):
    model = mixed_store(store_path)
    with mmwal.Reader(store_path) as r:
        assert not isinstance(r.embeddings, np.memmap)  # a tail: a built copy
        check(r, model)
    with mmwal.Store(store_path) as s:
        s.checkpoint()
    with mmwal.Reader(store_path) as r:
        if len(r.fragments) > 1 or not r.fragments[0].live.all():
            # Several fragments or deletions: a copy, and the mapped parts beside it.
            assert not isinstance(r.embeddings, np.memmap)
            assert all(isinstance(f.embeddings, np.memmap) for f in r.fragments)
            live = np.concatenate([f.embeddings[f.live] for f in r.fragments])
            assert np.array_equal(live, r.embeddings)
            assert [i for f in r.fragments for i, ok in zip(f.ids, f.live) if ok] == \
                list(r.ids)
            check(r, model)
    with mmwal.Store(store_path) as s:
        s.compact()  # one fragment, no dead rows
    with mmwal.Reader(store_path) as r:
        assert len(r.fragments) == 1
        emb = r.embeddings
        assert isinstance(emb, np.memmap)
        assert emb.filename.endswith("embeddings.npy") and emb.offset % 64 == 0
        assert not emb.flags.writeable
        assert emb is r.embeddings  # no copy per access
        check(r, model)
        doc = r[next(iter(model))]
        assert not doc.embedding.flags.writeable  # a view of the read-only map
        with mmwal.Store(store_path) as s:
            put(s, model, "late", 99)
        assert r.refresh() == 1
        assert not isinstance(r.embeddings, np.memmap)
        check(r, model)
        with mmwal.Store(store_path) as s:
            s.checkpoint()
            s.compact()
        assert r.refresh() == 0
        assert isinstance(r.embeddings, np.memmap)
        check(r, model)


def test_embeddings_read_only_in_every_state(store_path):
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        with mmwal.Reader(store_path) as r:
            check(r, {})  # empty store, no checkpoint
        model: Model = {}
        put(s, model, "a", 1)
        with mmwal.Reader(store_path) as r:
            check(r, model)  # log only
        s.checkpoint()
        s.clear()
        with mmwal.Reader(store_path) as r:
            check(r, {})  # cleared tail over a checkpoint
        put(s, {}, "b", 2)
        with mmwal.Reader(store_path) as r:
            check(r, {"b": (key_vec(2), content_of(2), meta_of(2))})


# ---------------------------------------------------------------------- search
def brute(model: Model, q: np.ndarray, metric: str) -> dict[str, float]:
    out = {}
    q64 = q.astype(np.float64)
    for i, (v, _c, _m) in model.items():
        v64 = v.astype(np.float64)
        if metric == "dot":
            out[i] = float(v64 @ q64)
        elif metric == "cosine":
            den = np.linalg.norm(v64) * np.linalg.norm(q64)
            out[i] = float(v64 @ q64 / den) if den > 0 else 0.0
        else:
            out[i] = float(np.linalg.norm(v64 - q64))
    return out


def check_hits(hits: list[mmwal.Hit], model: Model, q: np.ndarray, k: int, metric: str) -> None:
    exact = brute(model, q, metric)
    sign = 1.0 if metric == "l2" else -1.0  # sort key: ascending is best first
    order = sorted(exact, key=lambda i: sign * exact[i])
    assert len(hits) == min(k, len(model))
    ids = [h.id for h in hits]
    assert len(set(ids)) == len(ids) and set(ids) <= set(model)
    scale = max(1.0, max((abs(x) for x in exact.values()), default=1.0))
    tol = 1e-4 * scale
    qq = float(q.astype(np.float64) @ q.astype(np.float64))
    for h in hits:
        assert isinstance(h, mmwal.Hit) and isinstance(h.score, float)
        if metric == "l2":
            # float32 |v|^2 - 2 v.q + |q|^2: the error is relative to the norms,
            # so compare squared distances on that scale
            vv = float(np.sum(model[h.id][0].astype(np.float64) ** 2))
            assert abs(h.score**2 - exact[h.id] ** 2) <= 1e-5 * (vv + qq), (h, exact[h.id])
        else:
            assert abs(h.score - exact[h.id]) <= tol, (h, exact[h.id])
    for a, b in zip(hits, hits[1:]):  # best first
        assert sign * a.score <= sign * b.score + tol
    if hits:  # the top k: nothing left out scores clearly better than the worst hit
        worst = sign * exact[ids[-1]]
        for i in order:
            if i not in ids:
                assert sign * exact[i] >= worst - tol
    if len(hits) == len(model):
        assert set(ids) == set(model)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("chunked", [False, True])
def test_search_equals_brute_force(store_path, monkeypatch, metric, chunked):
    if chunked:  # score the mapped checkpoint in many small steps
        monkeypatch.setattr(_snapshot, "SEARCH_ROWS", 37)
    dim = 16
    model = mixed_store(store_path, dim=dim, vecf=gauss_vecs)
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((5, dim)).astype(np.float32) * 3
    queries[0] = model["c9"][0]  # a stored (replaced) vector: it must be the exact match
    with mmwal.Reader(store_path) as r:
        for k in (1, 5, 17, len(model), len(model) + 50):
            for q in queries:
                check_hits(r.search(q, k=k, metric=metric), model, q, k, metric)
            batch = r.search(queries, k=k, metric=metric)
            assert isinstance(batch, list) and len(batch) == len(queries)
            for q, hits in zip(queries, batch):
                assert isinstance(hits, list)
                check_hits(hits, model, q, k, metric)
                assert [h.id for h in hits] == [h.id for h in r.search(q, k=k, metric=metric)]
        top = r.search(queries[0], k=1, metric=metric)[0]
        if metric != "dot":
            assert top.id == "c9"
        if metric == "l2":
            assert top.score == pytest.approx(0.0, abs=1e-3)
        # removed and replaced rows are never returned, tail docs are
        everything = r.search(queries[1], k=10_000, metric=metric)
        assert sorted(h.id for h in everything) == sorted(model)
        assert any(h.id.startswith("t") for h in everything)
        # list queries work like arrays
        assert r.search(queries[1].tolist(), k=3, metric=metric) == \
            r.search(queries[1], k=3, metric=metric)


def test_search_default_metric_is_cosine(store_path):
    model = mixed_store(store_path, n=50)
    q = key_vec(12345)
    with mmwal.Reader(store_path) as r:
        assert r.search(q, k=7) == r.search(q, k=7, metric="cosine")
        check_hits(r.search(q), model, q, 10, "cosine")


def test_search_bad_arguments(store_path):
    mixed_store(store_path, n=20)
    q = key_vec(1)
    with mmwal.Reader(store_path) as r:
        bad = [
            dict(q=q, metric="euclid"), dict(q=q, metric=None), dict(q=q, k=0),
            dict(q=q, k=-3), dict(q=q, k=2.0), dict(q=q, k=True), dict(q=q, k="3"),
            dict(q=np.ones(DIM + 1, np.float32)), dict(q=np.ones((2, DIM - 1), np.float32)),
            dict(q=np.ones((2, 2, DIM), np.float32)), dict(q=np.float32(1.0)),
            dict(q=np.full(DIM, np.nan, np.float32)), dict(q=["a"] * DIM),
        ]
        for kw in bad:
            with pytest.raises(mmwal.MmwalError) as ei:
                r.search(**kw)
            assert isinstance(ei.value, ValueError), kw
        with pytest.raises(mmwal.errors.DimensionError):
            r.search(np.ones(DIM + 1, np.float32))
        for bad_id in (1, None, b"c1"):
            with pytest.raises(mmwal.MmwalError):
                r.get(bad_id)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- refresh
def test_refresh_counts_ops_and_follows_rolls_and_checkpoints(store_path):
    cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1)
    model: Model = {}
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        r = mmwal.Reader(store_path)
        try:
            assert r.refresh() == 0 and r.seq == 0
            put(s, model, "a", 1)
            put(s, model, "b", 2)
            s.add_many(["c", "d", "c"], key_vecs([3, 4, 5]))
            model["c"] = (key_vec(5), "", None)
            model["d"] = (key_vec(4), "", None)
            s.remove("a")
            model.pop("a")
            assert r.refresh() == 6 and r.seq == 6
            check(r, model)
            assert r.refresh() == 0
            # many segment rolls between refreshes
            for k in range(300):
                s.add(f"r{k}", key_vec(100 + k), content="x" * 300)
                model[f"r{k}"] = (key_vec(100 + k), "x" * 300, None)
                if k % 37 == 0:
                    before = r.seq
                    assert r.refresh() == s.seq - before
                    check(r, model)
            assert len(os.listdir(os.path.join(store_path, "wal"))) > 10
            before = r.seq
            assert r.refresh() == s.seq - before > 0
            check(r, model)
            # a newer checkpoint (which retires every segment this reader mapped)
            s.checkpoint()
            assert r.refresh() == 0
            assert r.checkpoint_id == 1
            check(r, model)
            # writes after a checkpoint the reader has not seen, then another one
            put(s, model, "e", 7)
            s.clear()
            model.clear()
            put(s, model, "f", 8)
            s.checkpoint()
            put(s, model, "g", 9)
            before = r.seq
            assert r.refresh() == 4 == r.seq - before
            assert r.checkpoint_id == 2
            check(r, model)
        finally:
            r.close()


def test_refresh_after_the_reader_position_was_retired(store_path):
    """The reader's segment is deleted before it read it: refresh moves to the checkpoint."""
    cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1)
    model: Model = {}
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        put(s, model, "first", 1)
        with mmwal.Reader(store_path) as r:
            assert r.seq == 1
            for k in range(100):
                put(s, model, f"k{k}", k + 2)
            s.checkpoint()
            put(s, model, "tail", 500)
            assert r.refresh() == 101
            check(r, model)


def test_stale_reader_keeps_working_after_retirement(store_path):
    cfg = mmwal.Config(keep_checkpoints=1)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        s.add_many([f"d{k}" for k in range(100)], key_vecs(range(100)),
                   contents=[content_of(k) for k in range(100)])
        s.checkpoint()
        with mmwal.Reader(store_path) as r:
            emb = r.embeddings
            for round_ in range(3):
                s.add_many([f"d{k}" for k in range(100)], key_vecs(range(1000, 1100)))
                s.checkpoint()  # unlinks the files r maps
            assert not os.path.exists(os.path.join(store_path, "checkpoints", "00000001"))
            assert np.array_equal(emb, key_vecs(range(100)))
            assert r["d5"].content == content_of(5) and np.array_equal(r["d5"].embedding,
                                                                       key_vec(5))
            assert r.search(key_vec(5), k=1)[0].id == "d5"
            assert r.refresh() == 300
            assert r["d5"].content == "" and np.array_equal(r["d5"].embedding, key_vec(1005))
            assert np.array_equal(emb, key_vecs(range(100)))  # the old array is still valid


# ---------------------------------------------------------------------- missing, read-only
def test_reader_on_missing_store(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(mmwal.MmwalError) as ei:
        mmwal.Reader(missing)
    assert isinstance(ei.value, FileNotFoundError)
    assert not missing.exists()  # a Reader never creates anything
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        mmwal.Reader(empty)
    assert os.listdir(empty) == []
    afile = tmp_path / "file"
    afile.write_bytes(b"x")
    with pytest.raises(mmwal.MmwalError):
        mmwal.Reader(afile)


def _read_everything(r: mmwal.Reader) -> None:
    for i in list(r.ids):
        _ = r[i].content
        assert i in r
    _ = r.get("nope"), "nope" in r
    _ = float(np.asarray(r.embeddings, dtype=np.float64).sum())
    for metric in ("cosine", "dot", "l2"):
        r.search(key_vec(1), k=5, metric=metric)
        r.search(key_vecs([1, 2]), k=500, metric=metric)
    r.refresh()


def test_reader_never_writes(store_path):
    cfg = mmwal.Config(segment_bytes=4096)
    model = mixed_store(store_path, n=120, cfg=cfg)
    with mmwal.Store(store_path, config=cfg) as s:
        put(s, model, "extra", 5)
        s.sync()
    before = snapshot(store_path)
    r = mmwal.Reader(store_path)
    try:
        _read_everything(r)
        check(r, model)
        assert snapshot(store_path) == before
        # new frames, rolls and a checkpoint: snapshot after each writer step
        with mmwal.Store(store_path, config=cfg) as s:
            for k in range(60):
                put(s, model, f"n{k}", 700 + k)
        before = snapshot(store_path)
        _read_everything(r)
        check(r, model)
        assert snapshot(store_path) == before
        with mmwal.Store(store_path, config=cfg) as s:
            s.checkpoint()
        before = snapshot(store_path)
        _read_everything(r)
        check(r, model)
        with mmwal.Reader(store_path) as r2:
            _read_everything(r2)
        assert snapshot(store_path) == before
        # a torn, half-written frame at the end of the log: "not yet visible",
        # and the reader (which re-checks it under a shared lock) repairs nothing
        with mmwal.Store(store_path, config=cfg) as s:
            put(s, model, "last", 6)
        wal = os.path.join(store_path, "wal")
        newest = os.path.join(wal, max(n for n in os.listdir(wal) if n.endswith(".seg")))
        with open(newest, "ab") as f:
            f.write(b"\x4d\x4d\x57\x46" + os.urandom(40))
        before = snapshot(store_path)
        _read_everything(r)
        check(r, model)
        with mmwal.Reader(store_path) as r2:
            _read_everything(r2)
            check(r2, model)
        assert snapshot(store_path) == before
    finally:
        r.close()


def test_reader_open_does_not_walk_the_ids(store_path, monkeypatch):
    n = 200_000
    # No approximate index: 200k identical 2-d vectors are HNSW's worst case (a
    # minute of build) and this test is about the id index.
    with mmwal.Store(store_path, dim=2, durability="os",
                     config=mmwal.Config(ann_min_rows=0)) as s:
        for start in range(0, n, 50_000):
            s.add_many([f"doc-{k}" for k in range(start, start + 50_000)],
                       np.ones((50_000, 2), np.float32))
        s.checkpoint()
    calls = {"id_at": 0, "id_bytes": 0, "doc": 0}
    for name in calls:
        real = getattr(CheckpointView, name)

        def counted(self, row, _real=real, _name=name):
            calls[_name] += 1
            return _real(self, row)

        monkeypatch.setattr(CheckpointView, name, counted)
    with mmwal.Reader(store_path) as r:
        assert len(r) == n
        assert isinstance(r.embeddings, np.memmap) and r.embeddings.shape == (n, 2)
        assert r.refresh() == 0
        assert sum(calls.values()) == 0, calls
        assert "doc-123456" in r and "doc-x" not in r
        assert r["doc-5"].id == "doc-5"
        assert sum(calls.values()) <= 20, calls
    # a tail that replaces a few documents costs lookups for those few, not n
    with mmwal.Store(store_path, durability="os") as s:
        for k in range(5):
            s.add(f"doc-{k}", np.zeros(2, np.float32))
    for name in calls:
        calls[name] = 0
    with mmwal.Reader(store_path) as r:
        assert len(r) == n
        assert sum(calls.values()) <= 50, calls
