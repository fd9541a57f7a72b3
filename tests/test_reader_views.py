"""A view taken from a Reader is a snapshot of the state it was taken from."""

from __future__ import annotations

from typing import Any

import numpy as np
from helpers import DIM, doc_id, vec

import mmwal


def test_ids_taken_before_refresh_still_name_their_rows(tmp_path: Any) -> None:
    path = str(tmp_path / "s")
    cfg = mmwal.Config(keep_checkpoints=1)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as store:
        for k in range(6):
            store.add(doc_id(k), vec(k))
        store.checkpoint()
        r = mmwal.Reader(path)
        ids, emb = r.ids, r.embeddings
        before = list(ids)
        assert before == [doc_id(k) for k in range(6)]
        # A new checkpoint with other rows (two removed, one added), the old one retired.
        store.remove(doc_id(0))
        store.remove(doc_id(3))
        store.add(doc_id(9), vec(9))
        store.checkpoint()
    r.refresh()
    assert list(r.ids) == [doc_id(k) for k in (1, 2, 4, 5, 9)]
    # The old pair still agrees with itself, element by element and as a whole.
    assert len(ids) == len(emb) == 6
    assert [ids[i] for i in range(len(ids))] == before
    assert list(ids) == before and ids[-1] == doc_id(5) and ids[1:3] == before[1:3]
    for i, key in enumerate(range(6)):
        assert ids[i] == doc_id(key)
        np.testing.assert_array_equal(emb[i], vec(key))
    r.close()
