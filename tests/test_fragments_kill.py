"""The checkpointer and the compactor SIGKILLed at every step of publication; retention.

A template store has three fragments with deletion vectors (documents
replaced and removed across them) and a log tail of adds, replacements and
removes.  A child process runs ``checkpoint()`` (a new fragment plus new
deletion vectors for the three old ones) then ``compact()``, with an I/O layer
that SIGKILLs it before its Nth mutating operation (every pwrite, fsync,
rename, replace, unlink, mkdir, rmdir), for N = 1, 2, ... until a run
completes.  After each kill: a new Reader equals the oracle (nothing
acknowledged lost, nothing removed come back), ``verify()`` is ok, and a
following write, ``checkpoint()`` and ``compact()`` succeed and leave no file
in ``checkpoints/`` that no version lists.

The retention test checks which version files, fragments and deletion
vectors ``keep_checkpoints`` keeps when deletion vectors are shared by several
versions, and that a Reader held on a retired version still reads every row.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import pytest
from ckpt_helpers import child_main, child_result, content_of, key_vec, key_vecs, meta_of, reaped
from frag_helpers import orphans, publish_child

import mmwal
from mmwal._fsutil import Paths
from mmwal._store import open_manifest
from mmwal._version import read_version

FORK = mp.get_context("fork")
DIM = 8
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108


class Template:
    """Three fragments with deletions plus a tail; ``model`` is id -> key of its data."""

    def __init__(self, path: str, cfg: dict[str, Any]) -> None:
        self.path = path
        self.cfg = cfg
        self.model: dict[str, int] = {}
        with mmwal.Store(path, dim=DIM, durability="fsync", config=mmwal.Config(**cfg)) as s:
            self._batch(s, range(0, 24))
            s.checkpoint()                                   # fragment 1
            self._batch(s, range(24, 40))
            for k in (1, 2, 30):
                self._put(s, f"k{k}", 1000 + k)              # replaced: dead in 1 (and 2)
            self._remove(s, "k3")
            s.checkpoint()                                   # fragment 2, 1 loses rows
            self._batch(s, range(40, 52))
            self._remove(s, "k4")
            self._remove(s, "k25")
            self._put(s, "k26", 1026)
            s.checkpoint()                                   # fragment 3, 1 and 2 lose rows
            # the tail the killed checkpoint folds: new ids, replacements and
            # removes in every fragment
            self._batch(s, range(60, 66))
            self._put(s, "k5", 2005)
            self._put(s, "k27", 2027)
            self._put(s, "k41", 2041)
            for name in ("k6", "k28", "k42", "k61"):
                self._remove(s, name)
            self.seq = s.seq
        paths = Paths(path)
        v = read_version(paths, open_manifest(paths))
        assert len(v.entries) == 3 and v.entries[0].dead and v.entries[1].dead

    def _put(self, s: mmwal.Store, name: str, key: int) -> None:
        s.add(name, key_vec(key), content=content_of(key), metadata=meta_of(key))
        self.model[name] = key

    def _remove(self, s: mmwal.Store, name: str) -> None:
        s.remove(name)
        self.model.pop(name, None)

    def _batch(self, s: mmwal.Store, keys: range) -> None:
        names = [f"k{k}" for k in keys]
        s.add_many(names, key_vecs(list(keys)), contents=[content_of(k) for k in keys],
                   metadatas=[meta_of(k) for k in keys])
        self.model.update(zip(names, keys))


def check_state(path: str, model: dict[str, int], seq: int) -> None:
    with mmwal.Reader(path) as r:
        assert r.seq == seq
        ids = list(r.ids)
        assert len(r) == len(ids) == len(set(ids)) == len(model)
        assert set(ids) == set(model), (sorted(set(model) - set(ids)),
                                        sorted(set(ids) - set(model)))
        assert np.array_equal(r.embeddings, key_vecs([model[i] for i in ids]))
        for name, key in model.items():
            d = r[name]
            assert (d.content, d.metadata) == (content_of(key), meta_of(key)), name
            assert np.array_equal(d.embedding, key_vec(key)), name
        for gone in ("k3", "k4", "k6", "k61", "never"):
            assert gone not in r


def recover_and_check(path: str, t: Template) -> None:
    report = mmwal.verify(path)
    assert report.ok, report.problems
    check_state(path, t.model, t.seq)
    with mmwal.Store(path, config=mmwal.Config(**t.cfg)) as s:
        assert s.seq == t.seq
        assert s.add("after", key_vec(7), content=content_of(7),
                     metadata=meta_of(7)) == t.seq + 1  # no gap, no reuse
        s.remove("k7")
        model = {**t.model, "after": 7}
        del model["k7"]
        info = s.checkpoint()
        assert (info.seq, info.documents) == (t.seq + 2, len(model))
        assert orphans(path) == []
        c = s.compact()
        assert (c.seq, c.documents, c.fragments) == (t.seq + 2, len(model), 1)
        assert orphans(path) == []
    assert not [n for n in os.listdir(os.path.join(path, "wal")) if n.startswith(".tmp")]
    report = mmwal.verify(path)
    assert report.ok, report.problems
    check_state(path, model, t.seq + 2)


CONFIGS = {
    # the checkpoint writes fragment 4 and three deletion vectors; compact() merges all
    "explicit": ({"segment_bytes": 4096, "chunk_documents": 8, "keep_checkpoints": 2,
                  "auto_compact": False}, {}),
    # the checkpoint compacts in the same lock hold (4 > max_fragments), then a
    # tiered compaction by dead share
    "auto": ({"segment_bytes": 4096, "chunk_documents": 8, "keep_checkpoints": 1,
              "max_fragments": 3, "auto_compact": True, "compact_dead_fraction": 0.5},
             {"target_fragments": 2, "min_dead_fraction": 0.0}),
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: Any) -> dict[str, Template]:
    d = tmp_path_factory.mktemp("frag-kill")
    return {name: Template(str(d / name), cfg) for name, (cfg, _c) in CONFIGS.items()}


def _run(path: str, out: str, kill_at: int, cfg: dict[str, Any],
         compact_kwargs: dict[str, Any]) -> int | None:
    p = FORK.Process(target=child_main,
                     args=(out, publish_child, path, kill_at, cfg, compact_kwargs))
    with reaped(p):
        p.start()
        p.join(60)
    return p.exitcode


SHARDS = 2


@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_kill_before_every_operation_of_checkpoint_and_compact(templates, config, shard):
    t = templates[config]
    cfg, compact_kwargs = CONFIGS[config]
    work = tempfile.mkdtemp(prefix="frag-kill-", dir=SCRATCH)
    try:
        dry = shutil.copytree(t.path, os.path.join(work, "dry"))
        out = os.path.join(work, "dry.json")
        assert _run(dry, out, 0, cfg, compact_kwargs) == 0
        res = child_result(out)
        total, opened, trace = res["count"], res["opened"], res["trace"]
        assert {"pwrite", "fsync", "rename", "replace", "unlink", "mkdir"} <= set(trace)
        if config == "explicit":
            assert res["checkpoint"][1:] == [4, 0] and res["compact"][1:] == [4, 1, 4]
        else:
            assert res["checkpoint"][2] > 0  # the checkpoint compacted
        if shard == 0:
            recover_and_check(dry, t)
        killed = 0
        for n in range(opened + 1 + shard, total + 1, SHARDS):
            path = shutil.copytree(t.path, os.path.join(work, f"run-{n}"))
            out = os.path.join(work, f"run-{n}.json")
            code = _run(path, out, n, cfg, compact_kwargs)
            assert code == -9, f"op {n} ({trace[n - 1]}): exit code {code}"
            killed += 1
            try:
                recover_and_check(path, t)
            except AssertionError as exc:
                where = "checkpoint" if n <= res["after_checkpoint"] else "compact"
                raise AssertionError(f"killed in {where} before op {n} of {total} "
                                     f"({trace[n - 1]}, after {trace[n - 2]}): {exc}") from exc
            shutil.rmtree(path)
        assert killed >= (total - opened) // SHARDS
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ====================================================================== retention
def test_retention_with_shared_deletion_vectors(tmp_path):
    keep = 3
    path = str(tmp_path / "store")
    cfg = mmwal.Config(keep_checkpoints=keep, auto_compact=False, max_fragments=64,
                       chunk_documents=4)
    model: dict[str, int] = {}
    held: list[tuple[mmwal.Reader, dict[str, int]]] = []
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        keys = list(range(40))
        s.add_many([f"k{k}" for k in keys], key_vecs(keys), contents=[content_of(k) for k in keys],
                   metadatas=[meta_of(k) for k in keys])
        model.update((f"k{k}", k) for k in keys)
        assert s.checkpoint().id == 1
        for c in range(2, 9):
            # a new fragment of two documents; one row of fragment 1 dies each time,
            # one row of fragment 2 dies at checkpoint 3 only
            new = [100 * c, 100 * c + 1]
            s.add_many([f"k{k}" for k in new], key_vecs(new),
                       contents=[content_of(k) for k in new], metadatas=[meta_of(k) for k in new])
            model.update((f"k{k}", k) for k in new)
            s.remove(f"k{c}")
            del model[f"k{c}"]
            if c == 3:
                s.remove("k200")
                del model["k200"]
            info = s.checkpoint()
            assert info.id == c and info.fragments == c
            if c in (3, 5):
                held.append((mmwal.Reader(path), dict(model)))
        names = set(os.listdir(os.path.join(path, "checkpoints")))
    # versions 6, 7, 8 are kept; each lists every fragment 1..c; fragment 1's
    # deletion vector is its own version's, fragment 2's the one version 3 wrote
    want = ({f"{v:08d}.version" for v in (6, 7, 8)}
            | {f"{f:08d}" for f in range(1, 9)}
            | {f"00000001-{v:08d}.deleted" for v in (6, 7, 8)}
            | {"00000002-00000003.deleted"})
    assert names == want, (sorted(names - want), sorted(want - names))
    assert orphans(path) == []
    assert mmwal.verify(path).ok
    # Readers held on retired versions 3 and 5 read all their rows
    for r, m in held:
        ids = list(r.ids)
        assert set(ids) == set(m) and len(ids) == len(m)
        assert np.array_equal(r.embeddings, key_vecs([m[i] for i in ids]))
        for name, key in m.items():
            d = r[name]
            assert (d.content, d.metadata) == (content_of(key), meta_of(key))
        assert r.find({"page": {"$gte": 0}}) and r.search(key_vec(0), k=3)
        r.refresh()
        assert set(r.ids) == set(model)
        r.close()
    # a full compaction leaves one fragment and the versions it keeps
    with mmwal.Store(path, config=cfg) as s:
        info = s.compact()
        assert (info.fragments_before, info.fragments, info.documents) == (8, 1, len(model))
    names = set(os.listdir(os.path.join(path, "checkpoints")))
    assert f"{info.id:08d}.version" in names and orphans(path) == []
    versions = sorted(n for n in names if n.endswith(".version"))
    assert versions == [f"{v:08d}.version" for v in (7, 8, info.id)]
