"""A Reader's tail keeps each record's documents encoded until one of them is read.

Opening a Reader over a long log tail decodes ids and vectors only; contents
and metadata are decoded (and checked against the writers' limits) when read,
a bounded number of records at a time.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import mmwal
from mmwal import _format as F
from mmwal import _snapshot

DIM = 4


def _docs(n: int, start: int = 0) -> tuple[list[str], np.ndarray, list[str], list[dict]]:
    ids = [f"d{i}" for i in range(start, start + n)]
    vecs = np.arange(start * DIM, (start + n) * DIM, dtype=np.float32).reshape(n, DIM) + 1
    contents = [f"text {i} " * (i % 5) for i in range(start, start + n)]
    metas = [{"i": i, "tags": ["a", str(i % 3)], "nested": {"k": [i, {"z": None}]}}
             for i in range(start, start + n)]
    return ids, vecs, contents, metas


def _fill(path: str) -> dict[str, tuple[str, dict]]:
    want = {}
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        ids, vecs, contents, metas = _docs(300)
        for i in range(0, 150):
            s.add(ids[i], vecs[i], contents[i], metas[i])
        s.add_many(ids[150:], vecs[150:], contents[150:], metas[150:])
        s.add("d7", np.ones(DIM), "replaced", {"r": 1})  # replaces a single-record doc
        s.remove("d200")  # a doc of the batch
    want = {i: (c, m) for i, c, m in zip(ids, contents, metas)}
    want["d7"] = ("replaced", {"r": 1})
    del want["d200"]
    return want


def test_every_document_reads_back_through_a_small_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_snapshot._TailDocs, "DOC_CACHE", 10)  # far below one batch
    want = _fill(str(tmp_path))
    with mmwal.Reader(tmp_path) as r:
        docs = r.snapshot()._tail.docs
        assert len(docs.raw) == 150 + 1 + 1  # one entry per add record, none per document
        # Twice over, in two orders: every read decodes what is not cached.
        for order in (sorted(want), sorted(want, reverse=True)):
            for key in order:
                d = r.get(key)
                assert (d.content, d.metadata) == want[key], key
            assert docs._cached <= max(10, 150)  # at most one record beyond the bound
        assert len(r) == len(want)
        assert r.find({"i": {"$gte": 295}}) == [f"d{i}" for i in range(295, 300)]


def test_threads_reading_documents_at_once_each_get_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(_snapshot._TailDocs, "DOC_CACHE", 5)  # evictions all the time
    want = _fill(str(tmp_path))
    keys = sorted(want)
    errors: list[str] = []
    with mmwal.Reader(tmp_path) as r:
        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for key in rng.choice(keys, 400):
                d = r.get(str(key))
                if (d.content, d.metadata) != want[str(key)]:
                    errors.append(str(key))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def _append_raw(path: str, payload: bytes, seq: int) -> None:
    wal = os.path.join(path, "wal")
    seg = os.path.join(wal, sorted(p for p in os.listdir(wal) if p.endswith(".seg"))[-1])
    with open(seg, "rb") as f:
        seed = F.salt_seed(F.decode_segment_header(f.read(64)).salt)
    with open(seg, "ab") as f:
        f.write(F.encode_frame(F.KIND_ADD, seq, 1, payload, seed))


def test_a_record_whose_documents_no_writer_made_fails_when_read(tmp_path):
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add("ok", np.ones(DIM), "fine", {"k": 1})
    deep: object = 1
    for _ in range(F.MAX_METADATA_DEPTH + 1):
        deep = [deep]
    _append_raw(str(tmp_path), F.pack([1.0, DIM, ["bad"], ["c"], [{"k": deep}],
                                       np.ones(DIM, "<f4").tobytes()]), 2)
    with mmwal.Reader(tmp_path) as r:  # opens: ids and vectors are sound
        assert len(r) == 2 and r.get("ok").metadata == {"k": 1}
        assert {h.id for h in r.search(np.ones(DIM), k=2)} == {"ok", "bad"}
        with pytest.raises(mmwal.CorruptionError, match="nested deeper") as e:
            r.get("bad")
        assert e.value.path.endswith(".seg") and e.value.offset > 0
        with pytest.raises(mmwal.CorruptionError):
            r.find({"k": 1})  # a filter reads every tail document
    report = mmwal.verify(tmp_path)
    assert not report.ok and any("nested deeper" in p.what for p in report.problems)
