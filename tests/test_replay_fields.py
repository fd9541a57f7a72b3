"""replay(fields=...): the Op fields asked for, the others None."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mmwal


def _store(path):
    with mmwal.Store(path, dim=4, durability="os") as st:
        st.add("a", np.ones(4), content="x", metadata={"k": [1, {"d": 2}]})
        st.add_many(["b", "c"], np.eye(4)[:2], contents=["y", "z"], metadatas=[None, {"k": 2}])
        st.remove("a")
        st.clear()
        st.add("d", np.full(4, 2.0))


@pytest.mark.parametrize("fields", [("id", "embedding"), ("id",), ("metadata",), ("seq",),
                                    ("id", "embedding", "content", "metadata", "timestamp")])
def test_fields_are_a_projection_of_the_full_replay(tmp_path, fields):
    path = str(tmp_path / "s")
    _store(path)
    full = list(mmwal.replay(path))
    part = list(mmwal.replay(path, fields=fields))
    assert [(o.seq, o.kind) for o in part] == [(o.seq, o.kind) for o in full]
    for f, p in zip(full, part):
        for name in ("id", "content", "metadata"):
            assert getattr(p, name) == (getattr(f, name) if name in fields else None)
        if "embedding" in fields and f.embedding is not None:
            assert np.array_equal(p.embedding, f.embedding)
        else:
            assert p.embedding is None
        assert p.timestamp == (f.timestamp if "timestamp" in fields else 0.0)
    assert list(mmwal.replay(path, 3, fields=("id",)))[0].seq == 4


@pytest.mark.parametrize("bad", ["id", ("id", "vector"), 7, (b"id",)])
def test_unknown_or_malformed_fields_are_typed_errors(tmp_path, bad):
    path = str(tmp_path / "s")
    _store(path)
    with pytest.raises(mmwal.errors.InvalidInputError):
        list(mmwal.replay(path, fields=bad))


def _append_record_with_an_int_content(path) -> None:
    """A CRC-valid add record whose content is not a str: no writer makes one."""
    from mmwal import _format as F

    wal = path / "wal"
    seg = wal / sorted(p for p in os.listdir(wal) if p.endswith(".seg"))[-1]
    data = seg.read_bytes()
    seed = F.salt_seed(F.decode_segment_header(data[:64]).salt)
    payload = F.pack([1.0, 4, ["bad"], [5], [{"k": 1}], np.ones(4, "<f4").tobytes()])
    with open(seg, "ab") as f:
        f.write(F.encode_frame(F.KIND_ADD, 2, 1, payload, seed))


def test_ids_and_vectors_only_leave_the_documents_undecoded(tmp_path):
    with mmwal.Store(tmp_path, dim=4, durability="os") as st:
        st.add("a", np.ones(4), content="x")
    _append_record_with_an_int_content(tmp_path)
    # The full replay decodes the documents and refuses the record ...
    with pytest.raises(mmwal.CorruptionError, match="wrong type"):
        list(mmwal.replay(tmp_path))
    # ... a replay of ids and vectors never looks at it.
    ops = list(mmwal.replay(tmp_path, fields=("id", "embedding")))
    assert [(o.seq, o.id, o.content, o.metadata) for o in ops] == [(1, "a", None, None),
                                                                   (2, "bad", None, None)]
    assert ops[1].embedding.tolist() == [1.0] * 4
