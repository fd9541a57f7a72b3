"""Versions, fragments and compaction against a plain dict oracle.

A Hypothesis state machine writes (add, add_many with repeated ids, replace,
remove, clear), folds (checkpoint, with ``auto_compact`` drawn at random and a
small ``max_fragments``), compacts (full, to a target, by dead share) and opens
or refreshes Readers.  After every step every Reader is compared with the
oracle: Readers marked "live" are refreshed first; one "held" Reader is only
refreshed by a rule, so it is also checked on versions whose files retention
has already deleted.  Each comparison covers len, the id set, ``get`` of every
id, row i of ``embeddings`` against ``get(ids[i])``, exact search of each
document's own vector, ``find`` and filtered search against a Python filter,
then ``verify``, and the absence of files no version on disk lists.

The multi-process test runs two writer processes (each on its own ids, with
replacements and removes), a process looping ``checkpoint()`` and
``compact()``, and the parent refreshing a Reader; at the end a fresh Reader
must hold exactly what the writers report they were acknowledged.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from ckpt_helpers import child_main, child_result, key_vec, key_vecs, reaped
from frag_helpers import (
    KEY_SPAN,
    compact_child,
    frag_publisher,
    frag_writer,
    orphans,
    wcontent,
    wmeta,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mmwal
from mmwal._fsutil import Paths
from mmwal._store import open_manifest
from mmwal._version import read_version

DIM = 4
POOL = [f"id-{i}" for i in range(11)] + ["\u00e9t\u00e9"]
NEVER = "never-added"

keys = st.integers(0, 60)
contents = st.text(max_size=6)
docs = st.tuples(st.sampled_from(POOL), keys, contents)


def meta_of(key: int) -> dict[str, Any] | None:
    """Metadata of a document from its key: a None, a missing key, ints, strs, a list."""
    if key % 7 == 0:
        return None
    m: dict[str, Any] = {"k": key % 5, "tag": "ab"[key % 2], "l": [key, "x"]}
    if key % 3 == 0:
        del m["tag"]
    return m


# Filters in Chroma's grammar and the same predicate written in Python
# (a document without metadata, or without the key, matches no condition).
def _eq(m: Any, key: str, v: Any) -> bool:
    return isinstance(m, dict) and key in m and m[key] == v


FILTERS: list[tuple[dict[str, Any], Callable[[Any], bool]]] = [
    ({"tag": "a"}, lambda m: _eq(m, "tag", "a")),
    ({"k": {"$gte": 3}}, lambda m: isinstance(m, dict) and m.get("k", -1) >= 3),
    ({"k": {"$in": [0, 2]}}, lambda m: _eq(m, "k", 0) or _eq(m, "k", 2)),
    ({"$or": [{"k": 1}, {"tag": "b"}]}, lambda m: _eq(m, "k", 1) or _eq(m, "tag", "b")),
    ({"$and": [{"k": {"$lt": 4}}, {"tag": {"$eq": "b"}}]},
     lambda m: isinstance(m, dict) and m.get("k", 9) < 4 and _eq(m, "tag", "b")),
]

# tmpfs when there is one: this test is about what readers see, not about fsync,
# and on a disk the checkpoints' fsyncs would dominate its run time.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108

Model = dict[str, tuple[int, str]]  # id -> (key of vector and metadata, content)


def check_reader(r: Any, model: Model, seq: int) -> None:
    """Everything a Reader exposes equals ``model`` (the state at ``seq``)."""
    assert r.seq == seq
    assert len(r) == len(model)
    ids = list(r.ids)
    assert len(ids) == len(set(ids)) == len(model)
    assert set(ids) == set(model)
    emb = r.embeddings
    assert emb.shape == (len(model), DIM) and emb.dtype == np.float32
    for row, id_ in enumerate(ids):
        key, content = model[id_]
        d = r.get(id_)
        assert d is not None and d.id == id_
        assert np.array_equal(d.embedding, key_vec(key, DIM)), id_
        assert (d.content, d.metadata) == (content, meta_of(key)), id_
        assert np.array_equal(emb[row], d.embedding), f"row {row} is not {id_!r}"
    for id_ in [*POOL, NEVER]:
        assert (id_ in r) is (id_ in model)
        if id_ not in model:
            assert r.get(id_) is None
    for id_, (key, _c) in model.items():
        (hit,) = r.search(key_vec(key, DIM), k=1, metric="l2", exact=True)
        # two ids may hold the same key: any of them is a right answer
        assert model[hit.id][0] == key and hit.score == 0.0, (id_, hit)
    for where, pred in FILTERS:
        want = {i for i, (k, _c) in model.items() if pred(meta_of(k))}
        got = r.find(where)
        assert len(got) == len(set(got)) and set(got) == want, where
        hits = r.search(np.ones(DIM, np.float32), k=len(model) + 1, metric="dot", where=where,
                        exact=True)
        assert {h.id for h in hits} == want, where


class FragmentMachine(RuleBasedStateMachine):
    @initialize(chunk=st.integers(1, 4), auto=st.sampled_from([False, False, True]),
                keep=st.integers(1, 3), max_fragments=st.integers(2, 3),
                dead_fraction=st.sampled_from([0.2, 0.6, 1.0]),
                first=st.lists(docs, max_size=10))
    def open_store(self, chunk: int, auto: bool, keep: int, max_fragments: int,
                   dead_fraction: float, first: list[tuple[str, int, str]]) -> None:
        self.dir = tempfile.mkdtemp(prefix="mmwal-frag-model-", dir=SCRATCH)
        self.path = self.dir + "/store"
        self.cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=keep,
                                chunk_documents=chunk, max_fragments=max_fragments,
                                auto_compact=auto, compact_dead_fraction=dead_fraction)
        self.store = mmwal.Store(self.path, dim=DIM, durability="os", config=self.cfg)
        self.model: Model = {}
        self.seq = 0
        self.ckpt_seq = self.ckpt_docs = 0
        # one live Reader from the start: every step is checked through a Reader
        self.live: list[mmwal.Reader] = [mmwal.Reader(self.path)]
        self.held: tuple[mmwal.Reader, Model, int] | None = None
        if first:  # a first fragment to delete from, replace in and compact
            self.add_many(first)
            self.checkpoint()

    # ---------------------------------------------------------------- writes
    def _next(self, seq: int) -> None:
        assert seq == self.seq + 1
        self.seq = seq

    @rule(doc=docs)
    def add(self, doc: tuple[str, int, str]) -> None:
        id_, key, c = doc
        self._next(self.store.add(id_, key_vec(key, DIM), content=c, metadata=meta_of(key)))
        self.model[id_] = (key, c)

    @rule(batch=st.lists(docs, min_size=1, max_size=5))
    def add_many(self, batch: list[tuple[str, int, str]]) -> None:
        got = self.store.add_many([d[0] for d in batch], key_vecs([d[1] for d in batch], DIM),
                                  contents=[d[2] for d in batch],
                                  metadatas=[meta_of(d[1]) for d in batch])
        assert got.start == self.seq + 1 and len(got) == len(batch)
        self.seq = got[-1]
        for id_, key, c in batch:  # a repeated id: the last one wins
            self.model[id_] = (key, c)

    @rule(pick=st.integers(0, 99), key=keys)
    def replace(self, pick: int, key: int) -> None:
        if not self.model:
            return
        id_ = sorted(self.model)[pick % len(self.model)]
        self._next(self.store.add(id_, key_vec(key, DIM), content=f"r{key}",
                                  metadata=meta_of(key)))
        self.model[id_] = (key, f"r{key}")

    @rule(pick=st.integers(0, 99), missing=st.integers(0, 9))
    def remove(self, pick: int, missing: int) -> None:
        if self.model and missing:
            id_ = sorted(self.model)[pick % len(self.model)]
        else:
            id_ = NEVER if missing == 0 else POOL[pick % len(POOL)]
        self._next(self.store.remove(id_))
        self.model.pop(id_, None)

    @rule(really=st.integers(0, 3))
    def clear(self, really: int) -> None:
        if really:  # rarely: a clear empties what the other rules built up
            return
        self._next(self.store.clear())
        self.model.clear()

    # ---------------------------------------------------------------- versions
    def _fragments(self) -> list[tuple[int, int, int]]:
        """(fragment id, rows, dead rows) of each fragment the current version lists."""
        paths = Paths(self.path)
        v = read_version(paths, open_manifest(paths))
        return [(e.fid, e.rows, e.dead) for e in v.entries]

    @rule(removes=st.lists(st.integers(0, 99), max_size=2))
    def checkpoint(self, removes: list[int] = []) -> None:  # noqa: B006 (never mutated)
        for pick in removes:  # deletions land in older fragments more often this way
            self.remove(pick, 1)
        info = self.store.checkpoint()
        assert (info.seq, info.documents) == (self.seq, len(self.model))
        if self.cfg.auto_compact:
            assert info.fragments <= self.cfg.max_fragments
        self.ckpt_seq, self.ckpt_docs = self.seq, len(self.model)
        assert len(self._fragments()) == info.fragments

    @rule(tgt=st.sampled_from([None, 1, 2, 3]),
          min_dead=st.sampled_from([None, 0.0, 0.3, 1.0]), skip=st.integers(0, 2))
    def compact(self, tgt: int | None, min_dead: float | None, skip: int) -> None:
        if skip:  # less often than checkpoints, or versions rarely grow fragments
            return
        before = self._fragments()
        info = self.store.compact(target_fragments=tgt, min_dead_fraction=min_dead)
        # no log record is folded: the version keeps the last checkpoint's seq
        assert (info.seq, info.documents) == (self.ckpt_seq, self.ckpt_docs)
        assert info.fragments_before == len(before)
        after = self._fragments()
        # No argument: a full compaction.  Either argument: a partial one, whose
        # target defaults to Config.max_fragments (Store.compact's docstring).
        full = tgt is None and min_dead is None
        t = 1 if full else (tgt if tgt is not None else self.cfg.max_fragments)
        assert info.fragments == len(after) <= (t if len(before) > t else len(before))
        if full:
            # a full compaction: one fragment (none for an empty version), no dead row
            assert len(after) <= 1 and all(f[2] == 0 for f in after), after
        if full or min_dead == 0.0:
            assert all(f[2] == 0 for f in after), after
        if info.fragments_merged == 0:
            assert info.fragments_written == 0 and after == before

    # ---------------------------------------------------------------- readers
    @rule(action=st.sampled_from(["open", "hold", "refresh held"]))
    def readers(self, action: str) -> None:
        """Open a second live Reader; (re)open the held one, which stays on this state
        until it is refreshed by this rule (versions and files may be retired meanwhile)."""
        if action == "open":
            if len(self.live) >= 2:
                self.live.pop().close()
            self.live.append(mmwal.Reader(self.path))
        elif action == "hold" or self.held is None:
            if self.held is not None:
                self.held[0].close()
            self.held = (mmwal.Reader(self.path), dict(self.model), self.seq)
        else:
            r = self.held[0]
            r.refresh()
            self.held = (r, dict(self.model), self.seq)

    # ---------------------------------------------------------------- checks
    @invariant()
    def readers_equal_the_oracle(self) -> None:
        if not hasattr(self, "store"):
            return
        for r in self.live:
            r.refresh()
            check_reader(r, self.model, self.seq)
        # A Reader that followed every step may answer from its own tail; a new
        # one reads the version's deletion vectors.
        with mmwal.Reader(self.path) as r:
            check_reader(r, self.model, self.seq)
        if self.held is not None:
            check_reader(*self.held)

    @invariant()
    def verify_and_no_orphans(self) -> None:
        if not hasattr(self, "store"):
            return
        report = mmwal.verify(self.path)
        assert report.ok, report.problems
        assert orphans(self.path) == []

    def teardown(self) -> None:
        if not hasattr(self, "store"):
            return
        for r in self.live:
            r.close()
        if self.held is not None:
            self.held[0].close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


FragmentMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None, database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFragmentModel = FragmentMachine.TestCase


# ====================================================================== processes
def _check_row_data(r: Any) -> dict[str, int]:
    """Every visible row holds the data of one write of its own id; returns id -> key."""
    ids = list(r.ids)
    assert len(ids) == len(set(ids)) == len(r)
    emb = r.embeddings
    seen: dict[str, int] = {}
    for row, id_ in enumerate(ids):
        d = r.get(id_)
        assert d is not None, id_
        key = int(d.content[1:])
        assert id_.startswith(f"w{key // KEY_SPAN}-"), (id_, key)  # its own writer's data
        assert d.content == wcontent(key) and d.metadata == wmeta(key), id_
        assert np.array_equal(d.embedding, key_vec(key)) and np.array_equal(emb[row], d.embedding)
        seen[id_] = key
    return seen


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_writers_and_a_publisher_in_processes(tmp_path, method):
    ctx = mp.get_context(method)
    path = str(tmp_path / "store")
    mmwal.Store(path, dim=8, durability="fsync").close()
    stop = str(tmp_path / "stop")
    outs = [str(tmp_path / f"w{w}.json") for w in range(2)]
    pub_out = str(tmp_path / "pub.json")
    writers = [ctx.Process(target=child_main, args=(outs[w], frag_writer, path, w, 220, 7 + w))
               for w in range(2)]
    pub = ctx.Process(target=child_main,
                      args=(pub_out, frag_publisher, path, stop, os.getpid(), 3))
    refreshes = 0
    with reaped(*writers, pub), mmwal.Reader(path) as r:
        pub.start()
        for p in writers:
            p.start()
        while any(p.is_alive() for p in writers) or refreshes == 0:
            r.refresh()
            _check_row_data(r)
            refreshes += 1
        for p in writers:
            p.join(60)
        with open(stop, "w"):
            pass
        pub.join(60)
        assert [p.exitcode for p in (*writers, pub)] == [0, 0, 0]
        want: dict[str, int] = {}
        written: list[str] = []
        for o in outs:
            res = child_result(o)
            want.update(res["state"])
            written += res["ids"]
        assert len(written) > len(want) > 100  # some were removed
        published = child_result(pub_out)
        assert published["checkpoints"] >= 2 and published["compactions"] >= 1
        r.refresh()
        assert _check_row_data(r) == want
    with mmwal.Reader(path) as fresh:
        assert _check_row_data(fresh) == want
        assert [i for i in written if (i in fresh) is not (i in want)] == []
    report = mmwal.verify(path)
    assert report.ok, report.problems
    with mmwal.Store(path, config=mmwal.Config(keep_checkpoints=1,
                                               compact_dead_fraction=0.9)) as s:
        # removes of folded documents: the version marks them in deletion vectors
        for name in sorted(want)[::7]:
            s.remove(name)
            del want[name]
        assert s.checkpoint().documents == len(want)
        with mmwal.Reader(path) as fresh:
            assert _check_row_data(fresh) == want
            assert [i for i in written if (i in fresh) is not (i in want)] == []
        info = s.compact()
        assert info.documents == len(want) and info.fragments <= 1
    with mmwal.Reader(path) as fresh:
        assert _check_row_data(fresh) == want
        assert [i for i in written if (i in fresh) is not (i in want)] == []
    assert orphans(path) == []
    assert mmwal.verify(path).ok


def test_two_processes_compacting_at_once_rewrite_once(tmp_path):
    """A second compact() waits for the first, then finds nothing to do (DESIGN.md)."""
    path = str(tmp_path / "store")
    with mmwal.Store(path, dim=8, config=mmwal.Config(auto_compact=False)) as s:
        for c in range(4):
            keys = list(range(10 * c, 10 * c + 10))
            s.add_many([f"k{k}" for k in keys], key_vecs(keys))
            s.remove(f"k{c}")
            s.checkpoint()
    outs = [str(tmp_path / f"c{i}.json") for i in range(2)]
    go = str(tmp_path / "go")
    procs = [mp.get_context("fork").Process(target=child_main,
                                            args=(o, compact_child, path, go)) for o in outs]
    with reaped(*procs):
        for p in procs:
            p.start()
        with open(go, "w"):
            pass
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    got = sorted(child_result(o) for o in outs)
    assert got[0][:2] == [0, 0] and got[1][:2] == [4, 1], got  # one merged, one found it done
    assert got[0][2] == got[1][2]  # both report the version the first one published
    assert orphans(path) == []
    with mmwal.Reader(path) as r:
        assert len(r) == 36 and r.stats().fragments[0]["dead_rows"] == 0
