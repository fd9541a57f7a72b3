"""Simulated power loss: the PowerLossLayer model, crash states, and quick sweeps.

The long sweeps live in ``stress/faults/run_sweeps.py``; here: the layer's own
semantics (what survives which variant), a sample of the campaign per
durability mode, proof that the campaign's oracle catches a store that skips
an fsync, and the documented limitation (a hole among unsynced frames makes
the strict mode refuse; point-in-time recovers every durable record).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import mmwal
from mmwal import _checkpoint, _faults, _fsutil, _io, _publish, _version, _wal
from mmwal._faults import (
    PowerLossLayer,
    SimulatedCrash,
    crash_states,
    doc_vec,
    materialise,
    simulated_reboot,
)

O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _states(image, dest, variants, **kw):
    return {st.variant: open_tree(st.root) for st in crash_states(image, dest, variants=variants,
                                                                  **kw)}


def open_tree(root):
    """{relative path: bytes} of every file under ``root`` (directories end with /)."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name)) + "/"] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = f.read()
    return out


# ====================================================================== the layer
def test_unsynced_data_is_dropped_synced_data_kept(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    p = os.path.join(root, "f")
    fd = layer.open(p, O_NEW, 0o644)
    layer.pwrite(fd, b"a" * 1000, 0)
    layer.fsync(fd)
    layer.pwrite(fd, b"b" * 700, 1000)
    layer.close(fd)
    layer.fsync_dir(root)
    image = layer.capture()
    got = _states(image, str(tmp_path / "s"), ["drop", "keep"])
    assert got["drop"]["f"] == b"a" * 1000
    assert got["keep"]["f"] == b"a" * 1000 + b"b" * 700
    # The real file has everything: the model, not the disk, decides.
    with open(p, "rb") as f:
        assert f.read() == b"a" * 1000 + b"b" * 700


def test_unsynced_directory_entries_are_lost(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    for name in ("old", "gone"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(name.encode())  # existed before the layer: durable
    layer = PowerLossLayer(root)
    fd = layer.open(os.path.join(root, "new"), O_NEW, 0o644)
    layer.pwrite(fd, b"new", 0)
    layer.fsync(fd)  # the data is durable, its directory entry is not
    layer.close(fd)
    layer.rename(os.path.join(root, "old"), os.path.join(root, "renamed"))
    layer.unlink(os.path.join(root, "gone"))
    layer.mkdir(os.path.join(root, "sub"))
    image = layer.capture()
    got = _states(image, str(tmp_path / "s"), ["drop", "keep", "dirs-lost", "data-lost"])
    assert got["drop"] == got["dirs-lost"] == {"old": b"old", "gone": b"gone"}
    assert got["keep"] == got["data-lost"] == {"new": b"new", "renamed": b"old", "sub/": None}
    layer.fsync_dir(root)
    got = _states(layer.capture(), str(tmp_path / "s2"), ["drop"])
    assert got["drop"] == {"new": b"new", "renamed": b"old", "sub/": None}


def test_a_file_in_an_unsynced_directory_is_lost_with_it(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    sub = os.path.join(root, "sub")
    layer.mkdir(sub)
    fd = layer.open(os.path.join(sub, "f"), O_NEW, 0o644)
    layer.pwrite(fd, b"x", 0)
    layer.fsync(fd)
    layer.close(fd)
    layer.fsync_dir(sub)
    assert _states(layer.capture(), str(tmp_path / "s"), ["drop"])["drop"] == {}
    layer.fsync_dir(root)
    assert _states(layer.capture(), str(tmp_path / "s2"), ["drop"])["drop"] == {
        "sub/": None, "sub/f": b"x"}


def test_writes_through_a_writable_map_are_tracked(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    p = os.path.join(root, "m")
    fd = layer.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    layer.ftruncate(fd, 4096)
    layer.fsync(fd)
    layer.fsync_dir(root)
    mm = layer.mmap(fd, 4096, write=True)
    mm[1000:1004] = b"MMAP"
    got = _states(layer.capture(), str(tmp_path / "s"), ["drop", "keep"])
    assert got["drop"]["m"] == bytes(4096)
    assert got["keep"]["m"][1000:1004] == b"MMAP"
    layer.fsync(fd)
    assert _states(layer.capture(), str(tmp_path / "s2"), ["drop"])["drop"]["m"][1000:1004] \
        == b"MMAP"
    mm.close()
    layer.close(fd)
    layer.release()


def test_random_variants_work_per_sector_and_are_reproducible(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    fd = layer.open(os.path.join(root, "f"), O_NEW, 0o644)
    layer.fsync_dir(root)
    data = bytes(random.Random(1).randbytes(_faults.SECTOR * 8))
    layer.pwrite(fd, data, 0)
    layer.close(fd)
    image = layer.capture()
    for variant in ("subset", "garble", "hole", "size-first"):
        a = _states(image, str(tmp_path / "a"), [variant], seed=5)[variant]["f"]
        b = _states(image, str(tmp_path / "b"), [variant], seed=5)[variant]["f"]
        assert a == b
        for s in range(0, len(a), _faults.SECTOR):
            sector, orig = a[s : s + _faults.SECTOR], data[s : s + _faults.SECTOR]
            # Each sector is the new data, nothing, zeros, or (garble only) junk.
            assert sector in (orig, b"", bytes(len(sector))) or variant == "garble"
    # "hole": the first sector is lost, the last one survives.
    hole = _states(image, str(tmp_path / "h"), ["hole"], seed=3)["hole"]["f"]
    assert hole[: _faults.SECTOR] == bytes(_faults.SECTOR)
    assert hole[-_faults.SECTOR :] == data[-_faults.SECTOR :]
    # "size-first": the size reached the disk even where the data did not.
    assert len(_states(image, str(tmp_path / "z"), ["size-first"])["size-first"]["f"]) \
        == len(data)


def test_crash_at_stops_everything_but_close(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root, crash_at=1)
    fd = layer.open(os.path.join(root, "f"), O_NEW, 0o644)  # crash point 0 (a create)
    layer.pwrite(fd, b"x", 0)
    with pytest.raises(SimulatedCrash):
        layer.fsync(fd)  # crash point 1
    assert layer.dead and layer.image is not None
    assert (layer.image.index, layer.image.op) == (1, "fsync")
    with pytest.raises(SimulatedCrash):
        layer.pwrite(fd, b"y", 1)
    layer.close(fd)
    assert layer.ops == [("create", "f")]


def test_simulated_reboot_changes_the_boot_id_and_restores_it():
    before = _fsutil.boot_id()
    with simulated_reboot() as new:
        assert _fsutil.boot_id() == new != before
    assert _fsutil.boot_id() == before


# ====================================================================== recovery of a store
def _store_under(layer, path, durability, docs):
    old = _io.set_layer(layer)
    try:
        with mmwal.Store(path, dim=_faults.DIM, durability=durability) as s:
            for k in docs:
                s.add(f"doc-{k}", doc_vec(k))
            if durability != "fsync":
                s.sync()
    finally:
        _io.set_layer(old)


def test_keep_state_is_a_process_kill(tmp_path):
    """"keep" = the page cache reached the disk: every "os" acknowledgement survives."""
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    path = os.path.join(root, "store")
    old = _io.set_layer(layer)
    try:
        s = mmwal.Store(path, dim=_faults.DIM, durability="os")
        for k in range(20):
            s.add(f"doc-{k}", doc_vec(k))
        image = layer.capture()  # the process dies here, its Store never closed
        s.close()
    finally:
        _io.set_layer(old)
    for st in crash_states(image, str(tmp_path / "s"), variants=["keep"]):
        with simulated_reboot(), mmwal.Reader(os.path.join(st.root, "store")) as r:
            assert len(r) == 20 and r.seq == 20
            assert r["doc-7"].embedding.tobytes() == doc_vec(7).tobytes()


def _hole_state(tmp_path, second_durability):
    """3 durable records, then two unsynced frames; the first one never reached the disk."""
    root = str(tmp_path / "root")
    os.mkdir(root)
    layer = PowerLossLayer(root)
    path = os.path.join(root, "store")
    old = _io.set_layer(layer)
    try:
        a = mmwal.Store(path, dim=_faults.DIM, durability="fsync")
        for k in range(3):
            a.add(f"doc-{k}", doc_vec(k))  # acknowledged, durable
        b = mmwal.Store(path, durability="os")
        b.add("doc-3", doc_vec(3))  # pending: an os writer, or an fsync writer before its sync
        a2 = mmwal.Store(path, durability=second_durability)
        if second_durability == "fsync":
            # The second writer's fdatasync is the crash point: capture just before it.
            layer.on_point = lambda n, op, p: (
                images.append(layer.capture(n, op, p)) if op == "fdatasync" and not images
                else None)
        images: list = []
        a2.add("doc-4", doc_vec(4))
        image = images[0] if images else layer.capture()
        for s in (a, b, a2):
            s.close()
    finally:
        _io.set_layer(old)
    seg = image.top.live["store"].live["wal"].live["00000000000000000001.seg"]
    (first, *_rest) = [w for w in seg.pending if w[0] == "w"]
    dest = str(tmp_path / "hole")
    materialise(image, dest, "keep", random.Random(0))
    # The crash state where frame 4's sectors were never written back, frame 5's were.
    seg_path = os.path.join(dest, "store", "wal", "00000000000000000001.seg")
    with open(seg_path, "r+b") as f:
        f.seek(first[1])
        f.write(bytes(len(first[2])))
    return os.path.join(dest, "store")


@pytest.mark.parametrize("second", ["os", "fsync"])
def test_hole_among_unsynced_frames_is_a_known_limitation(tmp_path, second):
    """docs/concepts.md, "Guarantees under faults", known limitation: strict refuses, point-in-time recovers.

    Two writers' frames pending at a power loss (os/interval mode, or concurrent
    fsync writers in one group commit); the disk wrote back the second frame but
    not the first.  Every durable record is intact; strict recovery cannot tell
    the hole from damage of acknowledged data, so it refuses.
    """
    store = _hole_state(tmp_path, second)
    with simulated_reboot():
        with pytest.raises(mmwal.CorruptionError) as exc:
            mmwal.Reader(store)
        assert exc.value.path.endswith("00000000000000000001.seg")
        assert not mmwal.verify(store).ok
        with mmwal.Reader(store, recovery="point-in-time") as r:
            assert sorted(r.ids) == ["doc-0", "doc-1", "doc-2"]  # every durable record
            assert r["doc-2"].embedding.tobytes() == doc_vec(2).tobytes()
        ops = [op.id for op in mmwal.replay(store, mode="point-in-time")]
        assert ops == ["doc-0", "doc-1", "doc-2"]
        # `mmwal repair` (point-in-time) makes the store writable again; the seqs of
        # the frames it dropped are never handed out again.
        from mmwal.cli import main

        assert main(["repair", store, "--mode", "point-in-time", "--yes"]) == 0
        with mmwal.Store(store, durability="fsync") as s:
            assert s.add("new", doc_vec(9)) > 5
        with mmwal.Reader(store) as r:
            assert sorted(r.ids) == ["doc-0", "doc-1", "doc-2", "new"]
        assert mmwal.verify(store).ok


# ====================================================================== campaigns
def test_quick_sweep_fsync_mode(tmp_path):
    rep = _faults.run_powerloss(str(tmp_path), quick=True, seed=11, durabilities=("fsync",),
                                sample=0.0, per_point=3, max_points=24)
    assert rep["ok"], rep["violations"][:5]
    assert rep["lost"] == rep["phantoms"] == rep["duplicates"] == 0
    assert rep["crash_states"] >= 60 and rep["acknowledged"] > 0
    assert rep["strict_refusals"] == 0
    kinds = {v.split(":", 1)[0] for v in rep["violations"]}
    assert not kinds
    # The sweep went through first creation, a roll, both publishes and a retirement.
    assert rep["outcomes"].get("not-created", 0) > 0
    assert rep["checkpoints"] >= 2


@pytest.mark.parametrize("mode", ["os", "interval", "fsync-concurrent"])
def test_quick_sweep_other_modes(tmp_path, mode):
    rep = _faults.run_powerloss(str(tmp_path), quick=True, seed=12, durabilities=(mode,),
                                sample=0.0, per_point=3, max_points=10)
    assert rep["ok"], rep["violations"][:5]
    assert rep["lost"] == rep["phantoms"] == 0
    # A strict refusal is only ever the documented limitation, recovered by point-in-time.
    assert rep["outcomes"].get("point-in-time", 0) == rep["strict_refusals"]


def _mutated_sweep(tmp_path):
    return _faults.run_powerloss(str(tmp_path), quick=True, seed=3, durabilities=("fsync",),
                                 variants=("drop",), sample=0.0, per_point=1, max_points=20)


def test_the_oracle_catches_a_store_that_skips_fdatasync(tmp_path, monkeypatch):
    monkeypatch.setattr(_wal.Appender, "sync", lambda self, seg, end: None)
    rep = _mutated_sweep(tmp_path)
    assert not rep["ok"]
    assert rep["lost"] > 0 and "lost" in rep["violation_counts"]


def test_the_oracle_catches_a_store_that_skips_directory_fsyncs(tmp_path, monkeypatch):
    for mod in (_wal, _fsutil, _publish, _version):
        monkeypatch.setattr(mod, "fsync_dir", lambda path: None)
    rep = _mutated_sweep(tmp_path)
    assert not rep["ok"] and "lost" in rep["violation_counts"]


def test_the_oracle_catches_unsynced_checkpoint_files(tmp_path, monkeypatch):
    def finish(self):
        _io.layer.close(self.fd)
        self.fd = -1
        return [self.size, self.crc]

    monkeypatch.setattr(_checkpoint._Stream, "finish", finish)
    rep = _mutated_sweep(tmp_path)
    assert not rep["ok"]


def test_stress_report_has_the_harness_keys(tmp_path):
    rep = _faults.run_powerloss(str(tmp_path), quick=True, seed=1, durabilities=("fsync",),
                                variants=("keep",), sample=0.0, per_point=1, max_points=3)
    full = _faults.stress_report(rep)
    for key in ("ok", "exit_code", "scenario", "settings", "acknowledged", "lost", "phantoms",
                "duplicates", "kills", "checkpoints", "violations", "violation_counts",
                "throughput", "crash_states", "readers", "audit", "verify", "run_s"):
        assert key in full
    assert full["scenario"]["name"] == "powerloss" and full["kills"] == 0
    assert isinstance(np.float64(full["run_s"]), np.floating)
