"""A Reader racing a checkpoint that retires the segments it is walking through."""

from __future__ import annotations

import numpy as np

import mmwal
from mmwal import _wal


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
