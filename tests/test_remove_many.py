"""Store.remove_many: one write for many removals, each a record of its own.

What must hold: the same state as ``remove`` of each id in order; seqs one per
id, consecutive, the ids in the order given; bad input is refused before
anything is written; concurrent writers in other processes never interleave
with a batch; a write that fails half-way leaves a prefix of the batch (each
removal a whole record), never a damaged log.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from helpers import arm, remove_many_worker

import mmwal
from mmwal import _faults
from mmwal._faults import doc_vec
from mmwal.errors import InvalidInputError, PoisonedError, StorageIOError

DIM = _faults.DIM


def _fill(path, n):
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_many([f"doc-{k}" for k in range(n)], np.stack([doc_vec(k) for k in range(n)]))


def _removes(path):
    return [(op.seq, op.id) for op in mmwal.replay(path) if op.kind == "remove"]


def test_same_state_as_one_remove_each(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    batch = ["doc-3", "doc-7", "absent", "doc-3", "doc-0", "doc-19"]
    for p in (a, b):
        _fill(p, 20)
    with mmwal.Store(a, durability="os") as s:
        seqs = s.remove_many(batch)
        assert s.remove_many([]) == range(0)
    with mmwal.Store(b, durability="os") as s:
        one = [s.remove(k) for k in batch]
    assert list(seqs) == one == list(range(21, 21 + len(batch)))
    assert _removes(a) == _removes(b) == list(zip(seqs, batch))
    with mmwal.Reader(a) as ra, mmwal.Reader(b) as rb:
        assert sorted(ra.ids) == sorted(rb.ids)
        assert len(ra) == 16 and "doc-3" not in ra and "doc-1" in ra
    # ... and after a checkpoint (a deletion vector), and when the Reader was open before.
    with mmwal.Reader(a) as r, mmwal.Store(a, durability="os") as s:
        s.remove_many(("doc-1", "doc-2"))
        r.refresh()
        assert "doc-1" not in r and len(r) == 14
        s.checkpoint()
    with mmwal.Reader(a) as r:
        assert len(r) == 14 and r.seq == 21 + len(batch) + 1
        assert mmwal.verify(a).ok


@pytest.mark.parametrize("bad", ["doc-1", {"doc-1"}, iter(["doc-1"]), ["doc-1", 5],
                                 ["doc-1", ""], ["x" * 100_000]])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, bad):
    _fill(tmp_path, 3)
    with mmwal.Store(tmp_path, durability="os") as s:
        with pytest.raises(InvalidInputError):
            s.remove_many(bad)
    with mmwal.Reader(tmp_path) as r:
        assert r.seq == 3 and len(r) == 3


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_processes_never_interleave_with_a_batch(tmp_path, method):
    _fill(tmp_path, 600)
    ctx = mp.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=remove_many_worker, args=(str(tmp_path), 200 * w, 20, q))
             for w in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(kind == "ok" for kind, _ in results), results
    logged = dict(_removes(tmp_path))
    for _, calls in results:
        for seqs, ids in calls:
            assert seqs == list(range(seqs[0], seqs[0] + 10))  # consecutive
            assert [logged[q] for q in seqs] == ids  # the ids, in order
    with mmwal.Reader(tmp_path) as r:
        assert len(r) == 60 and all(k.startswith("new-") for k in r.ids)
    assert mmwal.verify(tmp_path).ok


@pytest.mark.parametrize("torn", [False, True])
def test_a_failed_write_leaves_a_prefix_of_the_batch(tmp_path, layer, torn):
    _fill(tmp_path, 40)
    batch = [f"doc-{k}" for k in range(0, 40, 2)]
    s = mmwal.Store(tmp_path, durability="os")
    arm(layer, "write", torn=torn)
    with pytest.raises(StorageIOError):
        s.remove_many(batch)
    s.add("after", doc_vec(1))  # the next writer rebuilds and goes on
    s.close()
    gone = _removes(tmp_path)
    k = len(gone)
    assert [i for _, i in gone] == batch[:k]  # a prefix, each removal whole
    assert k == (10 if torn else 0)  # torn: the first half of the bytes, 10 whole frames
    with mmwal.Reader(tmp_path) as r:
        assert "after" in r and r.seq == 40 + k + 1
        assert set(r.ids) == {f"doc-{j}" for j in range(40)} - set(batch[:k]) | {"after"}
    assert mmwal.verify(tmp_path).ok


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_fsync_mode_makes_each_removal_durable_in_order(tmp_path, layer, durability):
    # One pwrite (and no fdatasync of its own) per batch, except under "fsync": a
    # pwrite and an fdatasync per record, so a power loss can only cut a suffix.
    _fill(tmp_path, 20)
    with mmwal.Store(tmp_path, durability=durability) as s:
        w0, f0 = layer.counts["write"], layer.counts["fsync"]
        seqs = s.remove_many([f"doc-{k}" for k in range(5)])
        writes, syncs = layer.counts["write"] - w0, layer.counts["fsync"] - f0
    assert list(seqs) == [21, 22, 23, 24, 25]
    assert (writes, syncs) == ((5, 5) if durability == "fsync" else (1, 0))
    with mmwal.Reader(tmp_path) as r:
        assert len(r) == 15


def test_fsync_mode_failed_write_mid_batch_leaves_the_records_before_it(tmp_path, layer):
    _fill(tmp_path, 20)
    batch = [f"doc-{k}" for k in range(6)]
    s = mmwal.Store(tmp_path, durability="fsync")
    arm(layer, "write", torn=True, after=2)  # the third record's pwrite tears
    with pytest.raises(StorageIOError):
        s.remove_many(batch)
    layer.armed = False
    s.add("after", doc_vec(1))
    s.close()
    assert [i for _, i in _removes(tmp_path)] == batch[:2]
    assert mmwal.verify(tmp_path).ok


def test_fsync_mode_failed_fdatasync_mid_batch_poisons(tmp_path, layer):
    _fill(tmp_path, 20)
    batch = [f"doc-{k}" for k in range(6)]
    s = mmwal.Store(tmp_path, durability="fsync")
    arm(layer, "fsync", after=1)  # the second record's fdatasync fails
    with pytest.raises(PoisonedError):
        s.remove_many(batch)
    layer.armed = False
    with pytest.raises(PoisonedError):
        s.add("refused", doc_vec(1))
    s.close()
    with mmwal.Store(tmp_path, durability="fsync") as again:
        again.add("after", doc_vec(2))
    # The second record was written before its fdatasync failed: the next
    # writer adopts it (it is complete and continuing); nothing after it exists.
    assert [i for _, i in _removes(tmp_path)] == batch[:2]
    with mmwal.Reader(tmp_path) as r:
        assert "refused" not in r and "after" in r
    assert mmwal.verify(tmp_path).ok
