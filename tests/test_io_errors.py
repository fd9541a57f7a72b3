"""EIO / ENOSPC injected at exact operations (mmwal._faults.ErrorLayer).

What must hold (SQLite's I/O-error loops are the model): the error reaches the
caller as a StorageIOError carrying the errno and the file; nothing
acknowledged is lost; after a failed fsync of the log the Store is poisoned
(PoisonedError with the errno on every later write); after the fault is gone
("space was freed") a new Store continues cleanly.  The long sweep (every Nth
operation of every category) is ``stress/faults/run_sweeps.py io-errors``.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from helpers import arm

import mmwal
from mmwal import _faults, _io, _wal
from mmwal._faults import doc_vec
from mmwal.errors import PoisonedError, StorageIOError

DIM = _faults.DIM


def add(s, k):
    return s.add(f"doc-{k}", doc_vec(k), content=f"c{k}")


def expect_state(path, keys):
    with mmwal.Reader(path) as r:
        assert sorted(r.ids) == sorted(f"doc-{k}" for k in keys)
        for k in keys:
            assert r[f"doc-{k}"].embedding.tobytes() == doc_vec(k).tobytes()
            assert r[f"doc-{k}"].content == f"c{k}"
    report = mmwal.verify(path)
    assert report.ok, report.problems


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_failed_fdatasync_poisons_the_store(store_path, layer, err):
    s = mmwal.Store(store_path, dim=DIM, durability="fsync")
    for k in range(3):
        add(s, k)
    arm(layer, "fsync", err)
    with pytest.raises(PoisonedError) as exc:
        add(s, 3)
    assert exc.value.errno == err and exc.value.path.endswith(".seg")
    assert isinstance(exc.value, StorageIOError) and isinstance(exc.value, OSError)
    layer.heal()  # even once the device works again, this Store refuses (RULES.md 12)
    for call in (lambda: add(s, 4), lambda: s.remove("doc-0"), lambda: s.clear(), s.sync,
                 lambda: s.add_many(["x"], np.ones((1, DIM), np.float32))):
        with pytest.raises(PoisonedError) as again:
            call()
        assert again.value.errno == err
    s.close()
    with mmwal.Store(store_path, durability="fsync") as s2:  # a new Store continues
        add(s2, 5)
    with mmwal.Reader(store_path) as r:
        # doc-3 is in doubt (written, not known durable); everything acknowledged is there.
        assert {"doc-0", "doc-1", "doc-2", "doc-5"} <= set(r.ids) <= {
            "doc-0", "doc-1", "doc-2", "doc-3", "doc-5"}
    assert mmwal.verify(store_path).ok


def test_failed_fdatasync_while_sealing_a_segment_poisons(store_path, layer):
    cfg = mmwal.Config(segment_bytes=4096)
    s = mmwal.Store(store_path, dim=DIM, durability="os", config=cfg)
    add(s, 0)
    arm(layer, "fsync")
    with pytest.raises(PoisonedError) as exc:
        s.checkpoint()  # the roll fdatasyncs the segment it seals
    assert exc.value.errno == errno.EIO
    layer.heal()
    with pytest.raises(PoisonedError):
        add(s, 1)
    s.close()
    with mmwal.Store(store_path, config=cfg) as s2:
        add(s2, 2)
        s2.checkpoint()
    expect_state(store_path, [0, 2])


@pytest.mark.parametrize("durability", ["os", "interval"])
def test_failed_sync_poisons_in_os_and_interval_mode(store_path, layer, durability):
    cfg = mmwal.Config(sync_every_records=1000, sync_every_ms=60_000.0)
    s = mmwal.Store(store_path, dim=DIM, durability=durability, config=cfg)
    for k in range(3):
        add(s, k)
    s.sync()
    add(s, 3)
    arm(layer, "fsync", errno.EIO)
    with pytest.raises(PoisonedError) as exc:
        s.sync()
    assert exc.value.errno == errno.EIO
    layer.heal()
    with pytest.raises(PoisonedError):
        add(s, 4)
    s.close()
    with mmwal.Store(store_path, durability=durability) as s2:
        add(s2, 5)
        s2.sync()
    with mmwal.Reader(store_path) as r:
        assert {"doc-0", "doc-1", "doc-2", "doc-5"} <= set(r.ids) <= {
            "doc-0", "doc-1", "doc-2", "doc-3", "doc-5"}
    assert mmwal.verify(store_path).ok


@pytest.mark.parametrize("durability", ["fsync", "os", "interval"])
@pytest.mark.parametrize("torn", [False, True])
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_failed_pwrite_is_typed_and_the_next_write_rebuilds(store_path, layer, err, torn,
                                                            durability):
    s = mmwal.Store(store_path, dim=DIM, durability=durability)
    for k in range(3):
        add(s, k)
    arm(layer, "write", err, torn=torn)
    with pytest.raises(StorageIOError) as exc:
        add(s, 3)
    assert not isinstance(exc.value, PoisonedError)
    assert exc.value.errno == err and exc.value.op == "write"
    assert exc.value.path.endswith("00000000000000000001.seg")
    # The pending word was left set: the next writer (this Store or another) rebuilds
    # the tail record from the log and writes over whatever half frame is there.
    add(s, 4)
    with mmwal.Store(store_path, durability=durability) as other:
        add(other, 5)
    add(s, 6)
    s.close()  # (interval: close flushes)
    expect_state(store_path, [0, 1, 2, 4, 5, 6])
    with mmwal.Reader(store_path) as r:
        assert r.seq == 6  # no seq was used by the failed write


@pytest.mark.parametrize("category", ["create", "write", "fsync", "rename"])
def test_enospc_on_a_segment_roll_then_space_is_freed(store_path, layer, category):
    cfg = mmwal.Config(segment_bytes=4096)
    s = mmwal.Store(store_path, dim=DIM, durability="fsync", config=cfg)
    keys = []
    k = 0
    # Fill the first segment to just before the roll.
    while os.path.getsize(os.path.join(store_path, "wal", "00000000000000000001.seg")) < 3600:
        add(s, k)
        keys.append(k)
        k += 1
    # From here every roll step of ``category`` fails (the roll's own fdatasync
    # of the sealed segment is skipped: "fsync" then means the new segment's).
    arm(layer, category, errno.ENOSPC, persistent=True,
        after=1 if category == "fsync" else 0)
    failures = 0
    for _ in range(6):
        try:
            add(s, k)
            keys.append(k)
        except StorageIOError as exc:
            assert exc.errno == errno.ENOSPC and store_path in exc.path
            failures += 1
            if isinstance(exc, PoisonedError) or s._poisoned is not None:
                s.close()
                s = mmwal.Store(store_path, durability="fsync", config=cfg)
        k += 1
    assert failures
    layer.heal()
    with mmwal.Reader(store_path) as r:  # readable all along
        assert set(r.ids) >= {f"doc-{x}" for x in keys}
    s.close()
    with mmwal.Store(store_path, durability="fsync", config=cfg) as s2:
        for _ in range(30):  # rolls now succeed
            add(s2, k)
            keys.append(k)
            k += 1
    assert len(os.listdir(os.path.join(store_path, "wal"))) >= 2
    with mmwal.Reader(store_path) as r:
        assert {f"doc-{x}" for x in keys} <= set(r.ids)
    assert mmwal.verify(store_path).ok


@pytest.mark.parametrize("category", ["write", "fsync", "rename", "create", "mmap"])
def test_enospc_during_a_checkpoint(store_path, layer, category):
    s = mmwal.Store(store_path, dim=DIM, durability="fsync",
                    config=mmwal.Config(chunk_documents=4))
    for k in range(20):
        add(s, k)
    s.checkpoint()
    for k in range(20, 30):
        add(s, k)
    # Past the roll that opens the checkpoint, so the failure is in building/publishing.
    after = {"write": 1, "fsync": 1, "rename": 1, "create": 1, "mmap": 0}[category]
    arm(layer, category, errno.ENOSPC, persistent=True, after=after)
    with pytest.raises(StorageIOError) as exc:
        s.checkpoint()
    assert exc.value.errno == errno.ENOSPC and store_path in exc.value.path
    layer.heal()
    expect_state(store_path, range(30))  # the old checkpoint and the log still serve
    if s._poisoned is not None:
        s.close()
        s = mmwal.Store(store_path, durability="fsync")
    info = s.checkpoint()
    assert info.seq == 30
    add(s, 30)
    s.close()
    expect_state(store_path, range(31))
    assert not [n for n in os.listdir(os.path.join(store_path, "checkpoints"))
                if n.startswith(".tmp-")]


def test_mmap_failure_in_a_reader_is_typed(store_path, layer):
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        for k in range(5):
            add(s, k)
        s.checkpoint()
        add(s, 5)
    arm(layer, "mmap", errno.EIO)
    with pytest.raises(StorageIOError) as exc:
        mmwal.Reader(store_path)
    assert exc.value.errno == errno.EIO and store_path in exc.value.path
    expect_state(store_path, range(6))  # the next open works


def test_failed_manifest_replace_keeps_the_old_checkpoint(store_path, layer):
    s = mmwal.Store(store_path, dim=DIM, durability="fsync")
    for k in range(5):
        add(s, k)
    first = s.checkpoint()
    add(s, 5)
    # Renames of this checkpoint: segment roll, fragment dir, version file, then MANIFEST.
    arm(layer, "rename", errno.EIO, after=3)
    with pytest.raises(StorageIOError) as exc:
        s.checkpoint()
    assert exc.value.path.endswith("MANIFEST") and exc.value.errno == errno.EIO
    layer.heal()
    with mmwal.Reader(store_path) as r:
        assert r.checkpoint_id == first.id and r.seq == 6
    assert s.checkpoint().seq == 6
    s.close()
    expect_state(store_path, range(6))


# ====================================================================== campaigns
def test_quick_io_error_sweep(tmp_path):
    rep = _faults.run_io_errors(str(tmp_path), quick=True, seed=5, per_category=2)
    assert rep["ok"], rep["violations"][:5]
    assert rep["lost"] == rep["phantoms"] == 0
    assert rep["cases_fired"] == rep["cases"] > 0 and rep["faults"] >= rep["cases"]
    assert rep["poisoned"] > 0
    full = _faults.stress_report(rep)
    assert full["scenario"]["name"] == "io-errors" and "faults" in full


def test_the_io_sweep_catches_a_store_that_ignores_a_failed_fsync(tmp_path, monkeypatch):
    real = _wal.Appender.sync

    def sync(self, seg, end):
        try:
            real(self, seg, end)
        except OSError:
            pass  # the bug: acknowledge anyway

    monkeypatch.setattr(_wal.Appender, "sync", sync)
    rep = _faults.run_io_errors(str(tmp_path), quick=True, seed=5, categories=("fsync",),
                                errnos=(errno.EIO,), per_category=4)
    assert not rep["ok"]
    assert "poison" in rep["violation_counts"]


class _FailHeaderRead(_io.OSLayer):
    """The real OS, except that reading the header of segment ``target`` fails with EIO."""

    def __init__(self, target: str) -> None:
        super().__init__()
        real_open, real_pread, real_close = self.open, self.pread, self.close
        fds: set[int] = set()
        self.failed = 0

        def open_(path, flags, mode=0o777):
            fd = real_open(path, flags, mode)
            if os.path.basename(path) == target:
                fds.add(fd)
            return fd

        def pread(fd, n, off):
            if fd in fds and off == 0:
                self.failed += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_pread(fd, n, off)

        def close(fd):
            fds.discard(fd)
            real_close(fd)

        self.open, self.pread, self.close = open_, pread, close


def test_an_io_error_on_the_next_segments_header_is_not_called_corruption(tmp_path):
    # A reader at the end of segment 1 looks at segment 2's header to know whether
    # it continues the log; an EIO there is a StorageIOError, not "the log has a gap".
    with mmwal.Store(tmp_path, dim=DIM, durability="os",
                     config=mmwal.Config(segment_bytes=4096, auto_checkpoint=False)) as s:
        for k in range(200):
            add(s, k)
    segs = sorted(x for x in os.listdir(tmp_path / "wal") if x.endswith(".seg"))
    assert len(segs) >= 3
    lay = _FailHeaderRead(segs[1])
    old = _io.set_layer(lay)
    try:
        with pytest.raises(StorageIOError) as exc:
            with mmwal.Reader(tmp_path):
                pass
    finally:
        _io.set_layer(old)
    assert not isinstance(exc.value, mmwal.CorruptionError)
    assert exc.value.errno == errno.EIO and lay.failed
    expect_state(tmp_path, list(range(200)))  # nothing is wrong with the store
