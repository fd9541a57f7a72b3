"""The checkpointer SIGKILLed at every step and at random moments.

A template store holds acknowledged records (written with "fsync" and "os"
durability): two checkpoints, then a log tail of adds, replacements, removes
and a batch spanning several segments.  Each run copies it, starts a child
that checkpoints it and kills the child:

* deterministically, with an I/O layer that SIGKILLs the child right before
  its Nth mutating operation (pwrite, fsync, fdatasync, rename, replace,
  unlink, mkdir, rmdir), for every N of a whole checkpoint: while building,
  around the rename, around the MANIFEST replace (the commit point), while
  retiring old segments and checkpoints;
* from the parent, after a random delay between 0 and about the duration of a
  checkpoint.

Afterwards: Store and Reader open, every acknowledged record is there with
exact data, nothing else is, verify() is ok, seqs continue without a gap, and
the next checkpoint succeeds and leaves no leftovers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import time

import numpy as np
import pytest
from ckpt_helpers import (
    DIM,
    MUTATING_OPS,
    checkpoint_child,
    child_main,
    child_result,
    content_of,
    key_vec,
    key_vecs,
    leftovers,
    manifest,
    meta_of,
    reaped,
)

import mmwal

FORK = mp.get_context("fork")


class Template:
    """A store with acknowledged records and the model of what it must hold."""

    def __init__(self, path: str, cfg: dict, n_ckpt: int, n_tail: int) -> None:
        self.path = path
        self.cfg = cfg
        self.model: dict[str, int] = {}  # id -> key of its data
        config = mmwal.Config(**cfg)
        with mmwal.Store(path, dim=DIM, durability="fsync", config=config) as s:
            self._batch(s, range(n_ckpt))
            s.checkpoint()
            self._batch(s, range(n_ckpt, n_ckpt + n_ckpt // 4))
            replaced = range(0, n_ckpt, 11)
            s.add_many([f"k{k}" for k in replaced], key_vecs([100_000 + k for k in replaced]),
                       contents=[content_of(100_000 + k) for k in replaced],
                       metadatas=[meta_of(100_000 + k) for k in replaced])
            self.model.update((f"k{k}", 100_000 + k) for k in replaced)
            s.checkpoint()
        with mmwal.Store(path, durability="os", config=config) as s:
            base = 200_000
            for j in range(n_tail):
                if j % 3 == 0:
                    self._put(s, f"k{j * 7 % n_ckpt}", base + j)   # replace a checkpoint row
                elif j % 3 == 1:
                    self._put(s, f"t{j}", base + j)                # new document
                else:
                    victim = f"k{(j * 13 + 5) % n_ckpt}"
                    s.remove(victim)
                    self.model.pop(victim, None)
            self._batch(s, range(300_000, 300_000 + n_tail), prefix="b")
            s.remove("t1")
            self.model.pop("t1", None)
            self.seq = s.seq
        with mmwal.Store(path, durability="fsync", config=config) as s:
            self._put(s, "last", 400_000)  # an fsync'ed record after the os ones
            self.seq = s.seq
        assert len(os.listdir(os.path.join(path, "wal"))) > 2
        keep = max(1, cfg.get("keep_checkpoints", 2))
        names = os.listdir(os.path.join(path, "checkpoints"))
        assert len([n for n in names if n.endswith(".version")]) == min(2, keep)
        assert leftovers(path, keep) == []

    def _put(self, s: mmwal.Store, name: str, key: int) -> None:
        s.add(name, key_vec(key), content=content_of(key), metadata=meta_of(key))
        self.model[name] = key

    def _batch(self, s: mmwal.Store, keys: range, prefix: str = "k") -> None:
        names = [f"{prefix}{k}" for k in keys]
        s.add_many(names, key_vecs(list(keys)), contents=[content_of(k) for k in keys],
                   metadatas=[meta_of(k) for k in keys])
        self.model.update(zip(names, keys))

    def copy(self, dst: str) -> str:
        shutil.copytree(self.path, dst)
        return dst


def check_state(path: str, model: dict[str, int], seq: int, full: bool = True) -> None:
    with mmwal.Reader(path) as r:
        assert r.seq == seq
        assert len(r) == len(model)
        ids = list(r.ids)
        assert set(ids) == set(model) and len(ids) == len(set(ids))
        assert np.array_equal(r.embeddings, key_vecs([model[i] for i in ids]))
        names = ids if full else random.Random(seq).sample(ids, min(40, len(ids)))
        for name in names:
            key = model[name]
            d = r[name]
            assert (d.content, d.metadata) == (content_of(key), meta_of(key)), name
            assert np.array_equal(d.embedding, key_vec(key))


def recover_and_check(path: str, t: Template, full: bool = True) -> None:
    """What must hold after the checkpointer died anywhere."""
    report = mmwal.verify(path)
    assert report.ok, report.problems
    check_state(path, t.model, t.seq, full)
    keep = t.cfg.get("keep_checkpoints", 2)
    with mmwal.Store(path, config=mmwal.Config(**t.cfg)) as s:
        assert s.seq == t.seq
        model = dict(t.model)
        assert s.add("after", key_vec(7), content=content_of(7),
                     metadata=meta_of(7)) == t.seq + 1  # no gap, no reuse
        model["after"] = 7
        info = s.checkpoint()
        assert info.seq == t.seq + 1 and info.documents == len(model)
        assert leftovers(path, keep) == []
    report = mmwal.verify(path)
    assert report.ok, report.problems
    assert not [n for n in report.notes if "published" in n or "temporary" in n], report.notes
    check_state(path, model, t.seq + 1, full)


def run_child(path: str, out: str, kill_at: int, cfg: dict, ready_fd: int = -1):
    p = FORK.Process(target=child_main, args=(out, checkpoint_child, path, kill_at, cfg,
                                              ready_fd))
    return p


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Template:
    d = tmp_path_factory.mktemp("kill-small")
    # keep_checkpoints=1: the checkpoint (new fragment + deletion vectors) passes
    # compact_dead_fraction, so the same run compacts, publishes again and
    # retires the fragments no kept version lists - every step is a kill point.
    cfg = {"segment_bytes": 4096, "keep_checkpoints": 1, "chunk_documents": 16}
    return Template(str(d / "template"), cfg, n_ckpt=120, n_tail=60)


def kill_points(trace: list[str], first: int) -> list[int]:
    """Op numbers (1-based) to kill before: every kind of step, every boundary between
    different steps; of a run of the same op (streaming pwrites, the unlinks of a
    retired checkpoint) its first two, its last and every 25th."""
    total = len(trace)
    points = []
    for n in range(first, total + 1):
        op = trace[n - 1]
        prev2 = trace[n - 3] if n >= 3 else None
        prev = trace[n - 2] if n >= 2 else None
        nxt = trace[n] if n < total else None
        if op != prev or op != prev2 or op != nxt or n % 25 == 0:
            points.append(n)
    return points


SHARDS = 3


@pytest.mark.parametrize("shard", range(SHARDS))
def test_kill_before_every_mutating_operation(small, tmp_path, shard):
    # a dry run counts the operations of one whole checkpoint
    dry = small.copy(str(tmp_path / "dry"))
    out = str(tmp_path / "dry.json")
    p = run_child(dry, out, 0, small.cfg)
    with reaped(p):
        p.start()
        p.join(60)
    assert p.exitcode == 0
    res = child_result(out)
    total, opened, trace = res["count"], res["opened"], res["trace"]
    assert {"fsync", "rename", "replace", "unlink", "pwrite", "mkdir", "rmdir"} <= set(trace)
    assert set(trace) <= set(MUTATING_OPS)
    if shard == 0:
        recover_and_check(dry, small)
    points = kill_points(trace, opened + 1)
    assert 20 < len(points) < 120
    outcomes = {"before publish": 0, "after publish": 0}
    for n in points[shard::SHARDS]:
        path = small.copy(str(tmp_path / f"run-{n}"))
        out = str(tmp_path / f"run-{n}.json")
        p = run_child(path, out, n, small.cfg)
        with reaped(p):
            p.start()
            p.join(60)
        assert p.exitcode == -9, f"op {n} ({trace[n - 1]}): exit code {p.exitcode}"
        assert not os.path.exists(out)
        published = manifest(path)["checkpoint"] == 3
        outcomes["after publish" if published else "before publish"] += 1
        try:
            recover_and_check(path, small, full=n % 4 == 0)
        except AssertionError as exc:
            raise AssertionError(f"killed before op {n} of {total} ({trace[n - 1]}, "
                                 f"after {trace[n - 2] if n > 1 else '-'}): {exc}") from exc
        shutil.rmtree(path)
    assert outcomes["before publish"] > 0 and outcomes["after publish"] > 0, outcomes


def test_kill_at_random_moments(tmp_path):
    cfg = {"segment_bytes": 64 * 1024, "keep_checkpoints": 1, "chunk_documents": 64}
    t = Template(str(tmp_path / "template"), cfg, n_ckpt=3000, n_tail=800)
    # how long one checkpoint of this store takes here (a bound for the delays)
    durations = []
    for j in range(2):
        path = t.copy(str(tmp_path / f"timing-{j}"))
        out = str(tmp_path / f"timing-{j}.json")
        r_fd, w_fd = os.pipe()
        p = run_child(path, out, 0, cfg, w_fd)
        with reaped(p):
            p.start()
            os.close(w_fd)
            assert os.read(r_fd, 1) == b"r"
            t0 = time.monotonic()
            p.join(60)
            durations.append(time.monotonic() - t0)
        os.close(r_fd)
        assert p.exitcode == 0
        child_result(out)
        shutil.rmtree(path)
    span = max(durations) * 1.2
    rng = random.Random(20240607)
    killed = 0
    # Six kills at random moments; on a loaded machine the timing runs may
    # overstate the duration, so a checkpoint that finished before its kill
    # halves the span and adds a run (at most 14 more) until one lands inside.
    runs = 6
    j = -1
    while j + 1 < runs:
        j += 1
        path = t.copy(str(tmp_path / f"run-{j}"))
        out = str(tmp_path / f"run-{j}.json")
        r_fd, w_fd = os.pipe()
        p = run_child(path, out, 0, cfg, w_fd)
        with reaped(p):
            p.start()
            os.close(w_fd)
            assert os.read(r_fd, 1) == b"r"  # the Store is open: the checkpoint starts now
            time.sleep(rng.uniform(0, span))
            os.kill(p.pid, 9)
            p.join(60)
        os.close(r_fd)
        inside = p.exitcode == -9 and not os.path.exists(out)
        killed += inside
        if not inside and not killed and runs < 20:
            span /= 2
            runs += 1
        recover_and_check(path, t, full=False)
        shutil.rmtree(path)
    assert killed >= 1  # at least one kill landed inside a checkpoint
