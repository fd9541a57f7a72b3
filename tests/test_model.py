"""A Hypothesis state machine: Store + Readers against a plain dict model.

Rules write (add, add_many with repeated ids, remove, clear), fold (checkpoint),
reopen the Store, and open or refresh Readers.  Each Reader is checked against
the model *as of its last open/refresh* after every step, so a stale Reader
whose checkpoint files were retired under it is checked too.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import mmwal

DIM = 4
POOL = [f"id-{i}" for i in range(6)] + ["\u00e9t\u00e9", "x" * 40]
NEVER = "never-added"

ids = st.sampled_from(POOL)
vectors = st.lists(
    st.floats(-1000, 1000, width=32, allow_nan=False, allow_infinity=False),
    min_size=DIM, max_size=DIM,
).map(lambda v: np.array(v, dtype=np.float32))
contents = st.text(max_size=12)
# What add accepts (tests/test_store_input.py): finite floats, 64-bit ints.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
metadatas = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=4),
                    st.one_of(scalars, st.lists(scalars, max_size=2),
                              st.fixed_dictionaries({"k": scalars})),
                    max_size=3),
)
docs = st.tuples(ids, vectors, contents, metadatas)

Model = dict[str, tuple[np.ndarray, str, Any]]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mmwal-model-")
        self.path = self.dir + "/store"
        # Small segments: the log rolls every few records, so readers follow
        # rolls and checkpoints retire several segments at once.
        self.cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1)
        self.store = mmwal.Store(self.path, dim=DIM, durability="os", config=self.cfg)
        self.model: Model = {}
        self.seq = 0
        self.readers: list[tuple[mmwal.Reader, Model, int]] = []

    # ---------------------------------------------------------------- writes
    def _next_seq(self, seq: int) -> None:
        assert seq == self.seq + 1, f"seq {seq} after {self.seq}: gap or reuse"
        self.seq = seq

    @rule(doc=docs)
    def add(self, doc: tuple[str, np.ndarray, str, Any]) -> None:
        id_, v, c, m = doc
        self._next_seq(self.store.add(id_, v, content=c, metadata=m))
        self.model[id_] = (v, c, m)

    @rule(batch=st.lists(docs, max_size=6))
    def add_many(self, batch: list[tuple[str, np.ndarray, str, Any]]) -> None:
        got = self.store.add_many([d[0] for d in batch],
                                  np.array([d[1] for d in batch], dtype=np.float32).reshape(-1, DIM),
                                  contents=[d[2] for d in batch], metadatas=[d[3] for d in batch])
        assert isinstance(got, range) and len(got) == len(batch)
        if batch:
            assert got.start == self.seq + 1
            self.seq = got[-1]
        for id_, v, c, m in batch:  # a repeated id: the last occurrence wins
            self.model[id_] = (v, c, m)

    @rule(id_=st.one_of(ids, st.just(NEVER)))
    def remove(self, id_: str) -> None:
        self._next_seq(self.store.remove(id_))
        self.model.pop(id_, None)

    @rule()
    def clear(self) -> None:
        self._next_seq(self.store.clear())
        self.model.clear()

    @rule()
    def checkpoint(self) -> None:
        info = self.store.checkpoint()
        assert info.seq == self.seq
        assert info.documents == len(self.model)
        assert self.store.needs_checkpoint() is False

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = mmwal.Store(self.path, durability="os", config=self.cfg)
        assert self.store.dim == DIM
        assert self.store.seq == self.seq

    # ---------------------------------------------------------------- readers
    @rule()
    def reader_open(self) -> None:
        r = mmwal.Reader(self.path)
        self.readers.append((r, dict(self.model), self.seq))
        if len(self.readers) > 2:
            self.readers.pop(0)[0].close()

    @rule(which=st.integers(0, 1))
    def reader_refresh(self, which: int) -> None:
        if not self.readers:  # (not a precondition: that makes Hypothesis redraw rules)
            self.reader_open()
            return
        i = which % len(self.readers)
        r, _old, seq_before = self.readers[i]
        assert r.seq == seq_before
        moved = r.refresh()
        assert moved == self.seq - seq_before
        self.readers[i] = (r, dict(self.model), self.seq)

    # ---------------------------------------------------------------- checks
    @invariant()
    def readers_match_model(self) -> None:
        for r, model, seq in self.readers:
            check_reader(r, model, seq)

    @invariant()
    def verify_ok(self) -> None:
        report = mmwal.verify(self.path)
        assert report.ok, report.problems

    def teardown(self) -> None:
        for r, _m, _s in self.readers:
            r.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def check_reader(r: mmwal.Reader, model: Model, seq: int) -> None:
    assert r.seq == seq
    assert len(r) == len(model)
    ids_ = list(r.ids)
    assert len(ids_) == len(set(ids_)) == len(model)
    assert set(ids_) == set(model)
    emb = r.embeddings
    assert emb.shape == (len(model), DIM) and emb.dtype == np.float32
    assert not emb.flags.writeable
    for row, id_ in enumerate(ids_):
        assert np.array_equal(emb[row], model[id_][0]), f"row {row} is not {id_!r}"
    for id_ in [*POOL, NEVER]:
        want = model.get(id_)
        assert (id_ in r) is (want is not None)
        got = r.get(id_)
        if want is None:
            assert got is None
            try:
                r[id_]
            except KeyError:
                pass
            else:
                raise AssertionError(f"r[{id_!r}] of a missing id did not raise KeyError")
            continue
        assert got is not None and got.id == id_
        assert np.array_equal(got.embedding, want[0])
        assert got.content == want[1]
        assert got.metadata == want[2]
        assert r[id_] == got
    for metric in ("cosine", "dot", "l2"):
        hits = r.search(np.ones(DIM, dtype=np.float32), k=max(1, len(model)), metric=metric)
        assert sorted(h.id for h in hits) == sorted(model)


StoreMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreMachine.TestCase
