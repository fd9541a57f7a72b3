"""Simulated power loss while a checkpoint writes deletion vectors and while compacting.

The workload (fsync durability, and "os" for the deletion-vector checkpoint;
``auto_compact`` off) builds three fragments,
each checkpoint marking rows of the older ones dead, then runs the steps under
test: a checkpoint that writes a fragment and deletion vectors for three
older fragments, a full ``compact()``, more writes, a checkpoint that
auto-compacts, and a compaction to a target.  A :class:`PowerLossLayer`
captures a crash image before every crash point (fsync, directory fsync,
create, mkdir, rename, replace, unlink, rmdir) of those steps; each image is
materialised in several variants (unsynced data and directory entries
dropped, kept, or a mix) and recovered after a simulated reboot by the
campaign's own judge (``mmwal._faults.check_crash_state``): every
acknowledged record present with exact data, the state a prefix of the log,
``verify()`` agreeing with reads, and a new writer continuing (append,
checkpoint, verify).  The helpers are those of tests/test_powerloss.py and
mmwal/_faults.py.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Any

import numpy as np
import pytest
from test_powerloss import open_tree  # noqa: F401 (the same helpers as the base sweep)

import mmwal
from mmwal import _faults, _io, _publish
from mmwal._faults import (
    DIM,
    PowerLossLayer,
    WOp,
    _Oracle,
    _pick_variants,
    _Tally,
    _thin,
    apply_op,
    check_crash_state,
    crash_states,
    model_states,
    scratch_dir,
    sequential_judge,
    simulated_reboot,
)

#: The steps whose crash points are swept (the others only build the store).
SWEPT = ("checkpoint-dv", "compact", "checkpoint-auto", "compact-target")
#: Steps swept at every crash point (the others at an even spread of them).
FULL = ("checkpoint-dv", "compact")


def build_ops() -> list[tuple[str, WOp]]:
    """(label, op): the label names the publication steps swept."""
    ops: list[tuple[str, WOp]] = []

    def put(*keys: int) -> None:
        if len(keys) == 1:
            ops.append(("", WOp("add", keys)))
        else:
            ops.append(("", WOp("add_many", keys)))

    def remove(k: int) -> None:
        ops.append(("", WOp("remove", (k,))))

    put(*range(0, 10))
    ops.append(("", WOp("checkpoint")))             # fragment 1
    put(*range(10, 16))
    put(2)                                          # replaced: a dead row in fragment 1
    remove(3)
    ops.append(("", WOp("checkpoint")))             # fragment 2, vector for 1
    put(*range(16, 22))
    remove(11)
    remove(4)
    put(12)
    ops.append(("", WOp("checkpoint")))             # fragment 3, vectors for 1 and 2
    put(22, 23, 24)
    remove(5)
    remove(13)
    put(17)
    ops.append(("checkpoint-dv", WOp("checkpoint")))  # fragment 4, vectors for 1, 2, 3
    ops.append(("compact", WOp("compact")))          # everything into one fragment
    for k in range(25, 29):
        put(k)
        ops.append(("", WOp("checkpoint")))
        remove(k - 20)
    put(29)
    ops.append(("checkpoint-auto", WOp("checkpoint")))  # past max_fragments: compacts
    remove(25)
    put(26)
    ops.append(("", WOp("checkpoint")))
    ops.append(("compact-target", WOp("compact", (2,))))  # tiered, by dead share
    return ops


def run_workload(run_dir: str, labelled: list[tuple[str, WOp]], *, auto_max: int,
                 durability: str = "fsync") -> tuple[list[tuple[Any, _Oracle, str]], int]:
    """Run the workload under a PowerLossLayer; an image before every swept crash point."""
    store_path = os.path.join(run_dir, "store")
    oracle = _Oracle()
    captured: list[tuple[Any, _Oracle, str]] = []
    step = [""]
    layer: PowerLossLayer

    def on_point(n: int, op: str, path: str) -> None:
        if step[0] in SWEPT:
            captured.append((layer.capture(n, op, path), oracle.snap(), step[0]))

    layer = PowerLossLayer(run_dir, on_point=on_point)
    old = _io.set_layer(layer)
    store = None
    publishes = 0
    try:
        cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4,
                           auto_compact=False, max_fragments=auto_max)
        store = mmwal.Store(store_path, dim=DIM, durability=durability, config=cfg)
        oracle.created = True
        rec = 0
        for label, op in labelled:
            if label == "checkpoint-auto":  # the same store, auto_compact on from here
                store.close()
                cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4,
                                   auto_compact=True, max_fragments=auto_max)
                store = mmwal.Store(store_path, durability=durability, config=cfg)
            step[0] = label
            oracle.inflight = op.kind
            if op.records:
                oracle.started = rec + 1
            if op.kind == "compact":
                info = store.compact(target_fragments=op.keys[0] if op.keys else None,
                                     min_dead_fraction=0.0 if op.keys else None)
                assert info.fragments_merged > 0, info
                publishes += 1
            else:
                info = apply_op(store, op)
                if op.kind == "checkpoint":
                    publishes += 1
                    if label == "checkpoint-dv":
                        assert info.fragments == 4 and info.fragments_merged == 0, info
                    if label == "checkpoint-auto":
                        assert info.fragments_merged > 0, info
            step[0] = ""
            if op.records:
                rec += 1
                oracle.done = rec
                if durability == "fsync":
                    oracle.durable = rec
            elif op.kind == "checkpoint":  # "os": a checkpoint makes what it folded durable
                oracle.durable = rec
            oracle.inflight = ""
        store.close()
        store = None
    finally:
        _faults.end_capture(layer, old, store)
    return captured, publishes


def sweep(tmp_path: Any, *, per_point: int, max_points: int | None, seed: int = 5,
          variants: tuple[str, ...] = tuple(_faults.VARIANTS),
          steps: tuple[str, ...] = SWEPT, durability: str = "fsync",
          ) -> tuple[_Tally, dict[str, int]]:
    labelled = build_ops()
    ops = [op for _l, op in labelled]
    seqs, states = model_states(ops)
    scratch = scratch_dir(str(tmp_path), True)
    tally = _Tally()
    rng = random.Random(seed)
    try:
        run_dir = tempfile.mkdtemp(prefix="run-", dir=scratch)
        captured, _n = run_workload(run_dir, labelled, auto_max=3, durability=durability)
        shutil.rmtree(run_dir, ignore_errors=True)
        per_step: dict[str, int] = {}
        for _img, _o, label in captured:
            per_step[label] = per_step.get(label, 0) + 1
        # every point of the step under test most wanted, an even spread of the others
        chosen: list[tuple[Any, _Oracle, str]] = []
        for label in steps:
            mine = [c for c in captured if c[2] == label]
            chosen += mine if label in FULL or max_points is None else _thin(
                mine, max_points)
        always = [v for v in ("drop", "keep") if v in variants]
        others = [v for v in variants if v not in always]
        states_dir = tempfile.mkdtemp(prefix="states-", dir=scratch)
        for i, (image, oracle, label) in enumerate(chosen):
            tally.crash_points += 1
            for st in crash_states(image, states_dir, seed=rng.getrandbits(32),
                                   variants=_pick_variants(always, others, per_point, i)):
                where = f"{label} crash point {image.index} (before {image.op} {image.path}) " \
                        f"state {st.label}"
                with simulated_reboot():
                    check_crash_state(os.path.join(st.root, "store"),
                                      sequential_judge(oracle, seqs, states),
                                      durable=seqs[oracle.durable], created=True,
                                      # "os": a hole among unsynced frames is the
                                      # documented limitation (point-in-time recovers)
                                      must_be_clean=durability == "fsync" or st.variant == "keep",
                                      tally=tally, where=where)
                tally.crash_states += 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tally, per_step


@pytest.mark.parametrize("steps", [("checkpoint-dv",), ("compact",),
                                   ("checkpoint-auto", "compact-target")])
def test_power_loss_while_writing_deletion_vectors_and_compacting(tmp_path, steps):
    tally, per_step = sweep(tmp_path, per_point=3, max_points=14, steps=steps)
    assert not tally.violations, tally.violations[:5]
    assert tally.lost == tally.phantoms == tally.duplicates == 0
    assert set(per_step) == set(SWEPT), per_step
    # the deletion-vector checkpoint and the full compaction at every crash point
    assert per_step["checkpoint-dv"] >= 15 and per_step["compact"] >= 15
    want = sum(per_step[s] if s in FULL else min(14, per_step[s]) for s in steps)
    assert tally.crash_points == want
    assert tally.crash_states >= 3 * tally.crash_points
    assert tally.strict_refusals == 0 and tally.outcomes.get("strict-ok") == tally.crash_states


def test_power_loss_during_a_deletion_vector_checkpoint_in_os_mode(tmp_path):
    """"os" durability: what the checkpoint folded is durable once it returns, never before
    it is published - including the removes its deletion vectors record."""
    tally, per_step = sweep(tmp_path, per_point=3, max_points=0, steps=("checkpoint-dv",),
                            durability="os")
    assert not tally.violations, tally.violations[:5]
    assert tally.lost == tally.phantoms == tally.duplicates == 0
    assert tally.crash_points == per_step["checkpoint-dv"] >= 15
    assert tally.outcomes.get("point-in-time", 0) == tally.strict_refusals


def _unsynced_vectors(monkeypatch: Any) -> None:
    """Deletion vectors renamed into place without an fsync of their data."""
    real = _publish.write_deletions

    def write_deletions(*args: Any) -> Any:
        layer = _io.layer
        fsync = layer.fsync
        layer.fsync = lambda fd: None
        try:
            return real(*args)
        finally:
            layer.fsync = fsync

    monkeypatch.setattr(_publish, "write_deletions", write_deletions)


def _unsynced_fragment_dirs(monkeypatch: Any) -> None:
    """Fragment directories renamed into place without an fsync of their entries."""
    monkeypatch.setattr(_publish, "fsync_dir", lambda path: None)


@pytest.mark.parametrize(("mutation", "variant"), [(_unsynced_vectors, "drop"),
                                                   (_unsynced_fragment_dirs, "dirs-lost")])
def test_the_sweep_catches_a_publish_that_skips_an_fsync(tmp_path, monkeypatch, mutation,
                                                        variant):
    mutation(monkeypatch)
    tally, _ps = sweep(tmp_path, per_point=1, max_points=2, variants=(variant,),
                       steps=("checkpoint-dv", "compact"))
    assert tally.lost > 0 and tally.violations, "a publish missing an fsync went unnoticed"


def test_the_workload_publishes_what_the_sweep_assumes(tmp_path):
    """The workload itself, without a crash: every publish happened, the end state reads."""
    labelled = build_ops()
    seqs, states = model_states([op for _l, op in labelled])
    root = str(tmp_path / "root")
    os.mkdir(root)
    captured, publishes = run_workload(root, labelled, auto_max=3)
    assert publishes == sum(op.kind in ("checkpoint", "compact") for _l, op in labelled)
    assert captured
    with mmwal.Reader(os.path.join(root, "store")) as r:
        assert r.seq == seqs[-1]
        want = states[-1]
        assert set(r.ids) == set(want)
        for name, key in want.items():
            assert np.array_equal(r[name].embedding, _faults.doc_vec(key))


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
