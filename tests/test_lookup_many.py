"""Looking many ids up at once gives what looking each up alone gives.

``VersionView.lookup_many`` (and ``CheckpointView.lookup_many`` under it)
probes the mapped id index for all keys a step at a time; a checkpoint's fold
and a Reader's tail use it.  Checked against ``lookup`` over versions with
several fragments, dead rows, replaced ids, absent ids and ids crafted to
collide under CRC-32 (long probe runs, or the keyed hash).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_index_collisions import colliding_ids

import mmwal

DIM = 4


def _version(r: mmwal.Reader):
    return r._state.ckpt


def _check(view, keys: list[str]) -> None:
    enc = [k.encode("utf-8") for k in keys]
    assert view.lookup_many(enc).tolist() == [view.lookup(b) for b in enc]
    for part in view.parts:  # and each fragment alone
        assert part.view.lookup_many(enc).tolist() == [part.view.lookup(b) for b in enc]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_at_once_equals_one_by_one(tmp_path, seed):
    rng = np.random.default_rng(seed)
    cfg = mmwal.Config(auto_compact=False, ann_min_rows=0)
    written: list[str] = []
    with mmwal.Store(tmp_path, dim=DIM, durability="os", config=cfg) as s:
        for round_ in range(4):  # four fragments
            ids = [f"k{int(x)}" for x in rng.integers(0, 600, 200)]  # replacements across them
            ids = list(dict.fromkeys(ids))
            s.add_many(ids, rng.standard_normal((len(ids), DIM), dtype=np.float32))
            for k in rng.choice(ids, 20, replace=False):
                s.remove(str(k))  # dead rows in this and older fragments
            written += ids
            s.checkpoint()
    keys = written + [f"absent-{i}" for i in range(300)] + ["", "k1" * 50]
    with mmwal.Reader(tmp_path) as r:
        view = _version(r)
        assert len(view.parts) == 4 and any(p.dead is not None for p in view.parts)
        _check(view, keys)
        _check(view, keys[::-1][:7])
        _check(view, [])


@pytest.mark.parametrize("n", [40, 400])
def test_ids_that_collide_under_crc32(tmp_path, n):
    ids = colliding_ids(n + 50)
    stored, absent = ids[:n], ids[n:]  # the absent ones collide with the stored ones too
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add_many(stored, np.ones((n, DIM), np.float32))
        s.checkpoint()
    with mmwal.Reader(tmp_path) as r:
        _check(_version(r), stored + absent + ["plain"])


def test_ids_of_one_length_that_differ_in_one_byte(tmp_path):
    # Every candidate a probe finds has the key's length: the byte comparison decides.
    stored = [f"id-{i:04d}" for i in range(0, 2000, 2)] + ["é-ü-" + str(i) for i in range(50)]
    absent = [f"id-{i:04d}" for i in range(1, 2000, 2)] + ["é-ü-x" + str(i) for i in range(50)]
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add_many(stored, np.ones((len(stored), DIM), np.float32))
        s.checkpoint()
    with mmwal.Reader(tmp_path) as r:
        view = _version(r)
        _check(view, stored + absent)
        got = view.lookup_many([k.encode() for k in stored + absent]).tolist()
        assert all(x >= 0 for x in got[: len(stored)])
        assert all(x == -1 for x in got[len(stored):])


def test_a_damaged_id_offset_is_a_corruption_error(tmp_path):
    ids = [f"doc-{i}" for i in range(64)]
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add_many(ids, np.ones((len(ids), DIM), np.float32))
        s.checkpoint()
    with mmwal.Reader(tmp_path) as r:
        part = _version(r).parts[0].view
        path = f"{part.dir}/ids_offsets.npy"
    offs = np.load(path)
    offs[10] = 1 << 40  # row 9 ends, and row 10 starts, far past ids.bin
    np.save(path, offs)
    with mmwal.Reader(tmp_path) as r:
        view = _version(r).parts[0].view
        with pytest.raises(mmwal.CorruptionError, match="ids_offsets.npy"):
            view.lookup_many([k.encode() for k in ids])
