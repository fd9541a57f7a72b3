"""A Reader racing a checkpoint that retires the segments it is walking through."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct

import helpers
import numpy as np
import pytest

import mmwal
from mmwal import _io, _wal


def test_reader_opened_while_its_segments_are_retired_is_current(tmp_path, monkeypatch):
    # Found by the tiny-segments stress scenario: the Reader at the end of
    # segment N found N+1 already retired and took "no next segment" for "the
    # end of the log", opening with a state older than acknowledged writes.
    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096)
    with mmwal.Store(path, dim=16, durability="os", config=cfg) as st:
        for i in range(200):
            st.add(f"d{i}", np.full(16, i + 1, np.float32), content="x" * 100)
        acknowledged = st.seq
    orig = _wal.LogCursor._next_segment_state
    fired: list[int] = []

    def checkpoint_now(self):
        if self.seg_id == 3 and not fired:
            fired.append(1)  # another writer's checkpoint completes right here
            with mmwal.Store(path, config=cfg) as other:
                other.checkpoint()
        return orig(self)

    monkeypatch.setattr(_wal.LogCursor, "_next_segment_state", checkpoint_now)
    with mmwal.Reader(path) as r:
        assert fired
        assert r.seq == acknowledged
        assert len(r) == 200
        assert np.array_equal(r["d199"].embedding, np.full(16, 200, np.float32))


def _torn_segment_then_more(path: str, cfg: mmwal.Config) -> tuple[int, int]:
    """A store whose newest-but-one segment ends in a torn frame, sealed by a rebuild.

    What a writer killed mid-``pwrite`` leaves: a frame header whose payload
    runs past the end of the file; the next writer (finding the tail record's
    pending word set) seals that segment and starts the next one.  Returns
    (the torn segment's id, the seq acknowledged last).
    """
    from mmwal import _format as F

    with mmwal.Store(path, dim=16, durability="os", config=cfg) as st:
        for i in range(60):
            st.add(f"d{i}", np.full(16, i + 1, np.float32), content="x" * 100)
        last = st.seq
    seg = helpers.segment_files(path)[-1]
    torn_id = int(os.path.basename(seg).split(".")[0])
    spans = helpers.frame_spans(seg)
    start, _pend, end, first, count = spans[-1]
    header = bytearray(helpers.read_bytes(seg)[start : start + F.FRAME_HEADER_SIZE])
    struct.pack_into("<Q", header, 16, first + count)  # continues the sequence
    with open(seg, "r+b") as f:  # a torn write: the header and 8 bytes of payload
        f.seek(end)
        f.write(bytes(header) + b"\x01" * 8)
    helpers.set_tail(path, "stale", end=end, last_seq=last, segment=torn_id)
    with mmwal.Store(path, config=cfg) as st:
        for i in range(60, 120):
            st.add(f"d{i}", np.full(16, i + 1, np.float32), content="x" * 100)
        last = st.seq
    assert os.path.exists(os.path.join(path, "wal", f"{torn_id + 1:020d}.seg"))
    return torn_id, last


def test_reader_at_a_torn_tail_whose_successors_were_retired_moves_on(tmp_path, monkeypatch):
    # Issue: a kill soak's reader, opened from a manifest whose replay segment
    # ended in a torn frame, found the next segments retired by a checkpoint
    # and the tail record far ahead, and reported "invalid frame followed by
    # committed data" - corruption in a healthy store.  Its view was stale.
    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096)
    torn_id, _ = _torn_segment_then_more(path, cfg)
    orig = _wal.LogCursor._next_segment_state
    fired: list[int] = []

    def checkpoint_now(self):
        if self.seg_id == torn_id and not fired:
            fired.append(1)  # a checkpoint folds and retires everything up to here
            with mmwal.Store(path, config=cfg) as other:
                other.checkpoint()
                for i in range(120, 130):  # the tail record moves past the torn segment
                    other.add(f"d{i}", np.full(16, i + 1, np.float32), content="y")
        return orig(self)

    monkeypatch.setattr(_wal.LogCursor, "_next_segment_state", checkpoint_now)
    with mmwal.Reader(path) as r:
        assert fired
        assert len(r) == 130
        assert np.array_equal(r["d129"].embedding, np.full(16, 130, np.float32))
        with mmwal.Store(path, config=cfg) as st:
            assert r.seq == st.seq
    assert mmwal.verify(path).ok


def test_refresh_and_replay_at_a_torn_tail_whose_successors_were_retired(tmp_path, monkeypatch):
    # The same stale view reached through refresh() and replay(): neither may
    # report damage that a newer checkpoint has already made irrelevant.
    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096)
    torn_id, _ = _torn_segment_then_more(path, cfg)
    orig = _wal.LogCursor._next_segment_state
    armed: list[int] = []

    def checkpoint_now(self):
        if self.seg_id == torn_id and armed == [1]:
            armed.append(2)
            with mmwal.Store(path, config=cfg) as other:
                other.checkpoint()
                other.add("late", np.full(16, 7, np.float32))
        return orig(self)

    monkeypatch.setattr(_wal.LogCursor, "_next_segment_state", checkpoint_now)
    seqs = []
    armed.append(1)
    for op in mmwal.replay(path):  # retirement under a replay: it goes on, no error
        seqs.append(op.seq)
    assert armed == [1, 2]
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == 121  # "late"


class _RetireOnOpen(_io.OSLayer):
    """Runs ``hook`` once, just before the first open of a file named ``name``."""

    def __init__(self, name: str, hook) -> None:
        super().__init__()
        real_open = self.open
        self.fired = 0

        def opener(path, flags, *mode):
            if os.path.basename(path) == name and not self.fired:
                self.fired += 1
                hook()
            return real_open(path, flags, *mode)

        self.open = opener


def _store_with_checkpoint(path: str, cfg: mmwal.Config, n: int = 50) -> None:
    with mmwal.Store(path, dim=8, durability="os", config=cfg) as st:
        for i in range(n):
            st.add(f"d{i}", np.full(8, i + 1, np.float32))
        st.checkpoint()
        st.add("after", np.full(8, 99, np.float32))


def test_reader_open_and_refresh_while_keep1_retires_the_checkpoint(tmp_path):
    # keep_checkpoints=1: a checkpoint published between the Reader's look at
    # the MANIFEST and its mapping of the files deletes the checkpoint it was
    # about to map.  Raw FileNotFoundError before; now the Reader moves on.
    path = str(tmp_path / "s")
    cfg = mmwal.Config(keep_checkpoints=1)
    _store_with_checkpoint(path, cfg)

    def checkpoint_elsewhere():
        with mmwal.Store(path, config=cfg) as other:
            other.add("late", np.full(8, 7, np.float32))
            other.checkpoint()
            # A new fragment alone retires nothing (the new version lists the old
            # ones too); the compaction merges them and keep_checkpoints=1
            # deletes every fragment the Reader was mapping.
            other.compact()

    def current() -> int:
        return int(mmwal._store.open_manifest(mmwal._fsutil.Paths(path))["checkpoint"])

    old = _io.set_layer(_RetireOnOpen("embeddings.npy", checkpoint_elsewhere))
    try:
        r = mmwal.Reader(path)
        assert _io.layer.fired == 1
    finally:
        _io.set_layer(old)
    with r:
        assert len(r) == 52 and "late" in r and r.checkpoint_id == current() == 3
        # refresh(): a newer checkpoint appears, and is retired by a third one
        # while the Reader maps it.
        with mmwal.Store(path, config=cfg) as st:
            st.add("later", np.full(8, 8, np.float32))
            st.checkpoint()
        old = _io.set_layer(_RetireOnOpen("embeddings.npy", checkpoint_elsewhere))
        try:
            r.refresh()
            assert _io.layer.fired == 1
        finally:
            _io.set_layer(old)
        assert len(r) == 53 and "later" in r and r.checkpoint_id == current() == 6
        assert r["later"].embedding[0] == 8


def _checkpoint_child(path: str, cfg_kwargs: dict) -> None:
    try:
        with mmwal.Store(path, config=mmwal.Config(**cfg_kwargs)) as other:
            other.add("late", np.full(8, 7, np.float32))
            other.checkpoint()
    finally:
        os._exit(0)


def test_verify_never_reports_a_checkpoint_retired_under_it(tmp_path):
    # verify() used to read the MANIFEST, then find the checkpoint it names
    # deleted by a keep_checkpoints=1 checkpointer and report it as damage.
    # It now holds checkpoint.lock shared: the checkpointer waits for it.
    path = str(tmp_path / "s")
    cfg = mmwal.Config(keep_checkpoints=1)
    _store_with_checkpoint(path, cfg)
    ctx = mp.get_context("fork")
    child = ctx.Process(target=_checkpoint_child, args=(path, {"keep_checkpoints": 1}))

    def checkpoint_in_another_process():
        child.start()
        child.join(3.0)  # before: done (and the checkpoint retired); now: waits for verify

    old = _io.set_layer(_RetireOnOpen("embeddings.npy", checkpoint_in_another_process))
    try:
        with helpers.reaped(child):
            report = mmwal.verify(path)
            assert _io.layer.fired == 1
            _io.set_layer(old)
            child.join(60)
            assert child.exitcode == 0
    finally:
        _io.set_layer(old)
    assert report.ok, report.problems
    assert report.checkpoint == 1
    after = mmwal.verify(path)
    assert after.ok and after.checkpoint == 2


def test_repair_look_and_verify_wait_for_a_running_checkpoint(tmp_path):
    # Neither may look at a store whose MANIFEST a checkpoint is replacing and
    # whose files it is retiring: both hold checkpoint.lock shared, so they
    # wait for the checkpointer (here: a LockTimeout after a short wait).
    from mmwal._lock import FileLock
    from mmwal._repair import repair_locks

    path = str(tmp_path / "s")
    _store_with_checkpoint(path, mmwal.Config())
    checkpointer = FileLock(os.path.join(path, "locks", "checkpoint.lock"), 1.0)
    checkpointer.acquire_exclusive_slow()
    try:
        with pytest.raises(mmwal.LockTimeout):
            with repair_locks(path, exclusive=False, timeout=0.2):
                pass
        with pytest.raises(mmwal.LockTimeout):
            mmwal.verify(path, lock_timeout=0.2)
    finally:
        checkpointer.release_slow()
        checkpointer.close()
    with repair_locks(path, exclusive=False, timeout=0.2):
        pass
    assert mmwal.verify(path, lock_timeout=0.2).ok


def test_strict_replay_still_reports_damage_in_a_folded_segment_left_on_disk(tmp_path):
    # replay reads segments a checkpoint folded but did not retire (a crash
    # between the MANIFEST replace and the retirement leaves them) on purpose:
    # damage there must still raise, not be skipped as a "stale view".
    import shutil

    from mmwal._fsutil import Paths, list_segments
    from mmwal._store import open_manifest

    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096)
    paths = Paths(path)
    with mmwal.Store(path, dim=4, durability="os", config=cfg) as st:
        for i in range(60):
            st.add(f"id{i}", np.full(4, i, np.float32), "x" * 20)
        segs = list_segments(paths)
        saved = {g: helpers.read_bytes(paths.segment(g)) for g in segs}
        st.checkpoint()
        st.add("late", np.full(4, 7, np.float32))
    first_kept = open_manifest(paths)["replay_segment"]
    for g, data in saved.items():  # the folded segments, as an interrupted retirement leaves them
        if g < first_kept:
            helpers.overwrite(paths.segment(g), data)
    damaged = bytearray(saved[segs[0]])
    damaged[200] ^= 0xFF
    helpers.overwrite(paths.segment(segs[0]), bytes(damaged))
    assert shutil.disk_usage(path)  # (the store is on disk, nothing mapped)
    with pytest.raises(mmwal.CorruptionError) as exc:
        list(mmwal.replay(path))
    assert exc.value.path == paths.segment(segs[0])
    # A Reader needs none of those segments: it opens on the checkpoint.
    with mmwal.Reader(path) as r:
        assert len(r) == 61
