"""A Reader moving to a compacted version keeps its tail instead of replaying the log."""

from __future__ import annotations

import numpy as np

import mmwal
from mmwal import _format

DIM = 4


def vec(k: int) -> np.ndarray:
    return np.array([k, 1, -k, 2], dtype=np.float32)


def state(r) -> dict:
    return {i: (r.get(i).embedding.tolist(), r.get(i).metadata) for i in r.ids}


def counting(monkeypatch) -> list[int]:
    """Count the add records a Reader decodes (ids and vectors; documents stay encoded)."""
    calls = [0]
    real = _format.decode_add_ids_vectors

    def counted(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    monkeypatch.setattr(_format, "decode_add_ids_vectors", counted)
    return calls


def test_refresh_over_a_compaction_keeps_the_tail(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    cfg = mmwal.Config(auto_compact=False)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        s.add_many([f"a{i}" for i in range(50)], np.stack([vec(i) for i in range(50)]))
        s.checkpoint()
        s.add_many([f"b{i}" for i in range(30)], np.stack([vec(100 + i) for i in range(30)]))
        for i in range(0, 50, 5):
            s.remove(f"a{i}")  # dead rows in fragment 1
        s.checkpoint()
        # the tail: replaces and removes of version rows, new documents
        for i in range(1, 50, 7):
            s.add(f"a{i}", vec(1000 + i), metadata={"t": i})
        for i in range(0, 30, 4):
            s.remove(f"b{i}")
        s.add_many([f"c{i}" for i in range(20)], np.stack([vec(2000 + i) for i in range(20)]))
    with mmwal.Reader(path) as r:
        before = state(r)
        snap = r.snapshot()
        tail_ids = r._state.tail.ids
        with mmwal.Store(path, config=cfg) as s:
            info = s.compact()
            assert info.fragments == 1 and info.rows_dropped > 0
        calls = counting(monkeypatch)
        assert r.refresh() == 0
        assert calls[0] == 0  # no log record decoded again
        assert r._state.tail.ids is tail_ids  # the same tail rows
        assert r.checkpoint_id == info.id and len(r.fragments) == 1
        assert state(r) == before
        assert list(r.ids) == list(snap.ids) and np.array_equal(r.embeddings, snap.embeddings)
        # The old snapshot still reads its own version.
        assert {i: snap.get(i).embedding.tolist() for i in snap.ids} == \
            {i: v[0] for i, v in before.items()}
        # New records after the compaction: only they are read.
        with mmwal.Store(path, config=cfg) as s:
            s.add("d1", vec(3000))
            s.remove("a1")  # a tail row's id
            s.remove("a2")  # a row of the compacted version
        assert r.refresh() == 3 and calls[0] == 1
        with mmwal.Reader(path) as fresh:
            assert state(r) == state(fresh) and list(r.ids) == list(fresh.ids)
            q = vec(7)
            assert r.search(q, k=10) == fresh.search(q, k=10)
    assert mmwal.verify(path).ok


def test_a_checkpoint_is_not_a_rebase(tmp_path, monkeypatch):
    """A version that folded records (a new seq) is read from the log as before."""
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many([f"a{i}" for i in range(10)], np.stack([vec(i) for i in range(10)]))
        s.checkpoint()
        s.add("x", vec(50))
    with mmwal.Reader(path) as r:
        with mmwal.Store(path) as s:
            s.add("y", vec(51))
            s.checkpoint()
            s.add("z", vec(52))
        assert r.refresh() == 2
        with mmwal.Reader(path) as fresh:
            assert state(r) == state(fresh)
