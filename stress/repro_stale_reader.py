"""Reproduce the stale Reader the tiny-segments scenario found (see RESULTS.md).

A Reader replaying the log tail walks from segment N to N+1.  When a checkpoint
(another process) retires N and N+1 while the Reader is still at the end of N,
``LogCursor.frames()`` finds no segment N+1, ``_tail_claims_more`` only looks
at the tail record when it is in segment N, and the cursor returns "nothing
written here yet".  ``Reader()`` then opens (or ``refresh()`` returns) with a
state that misses writes acknowledged before it started; the next refresh
catches up.  The state is a consistent prefix - nothing is lost or torn - but
a Reader opened after ``add()`` returned does not show that document.

This script makes the race deterministic by running the checkpoint exactly at
that moment (it patches a private method, so it follows the library's
internals of the day).  Exit code 1 while the bug is present, 0 once fixed
(fixed in commit b594c92: the cursor now raises ``Retired`` when its own
segment is gone, and the Reader moves to the newer checkpoint).

    python stress/repro_stale_reader.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

import mmwal
from mmwal import _wal


def main() -> int:
    d = tempfile.mkdtemp(prefix="mmwal-stale-")
    cfg = mmwal.Config(segment_bytes=4096)  # a segment every few frames
    with mmwal.Store(d, dim=16, durability="os", config=cfg) as st:
        for i in range(200):
            st.add(f"d{i}", np.full(16, i + 1, np.float32), content="x" * 100)
        acknowledged = st.seq
    segments = len(os.listdir(os.path.join(d, "wal")))
    orig = _wal.LogCursor._next_segment_state
    fired: list[int] = []

    def checkpoint_now(self: _wal.LogCursor) -> bool:
        if self.seg_id == 3 and not fired:
            fired.append(1)  # another process's checkpoint completes right here
            with mmwal.Store(d, config=cfg) as other:
                other.checkpoint()
        return orig(self)

    _wal.LogCursor._next_segment_state = checkpoint_now  # type: ignore[method-assign]
    try:
        r = mmwal.Reader(d)
    finally:
        _wal.LogCursor._next_segment_state = orig  # type: ignore[method-assign]
    print(f"{acknowledged} writes acknowledged across {segments} segments; a Reader opened "
          f"afterwards, racing a checkpoint, shows seq {r.seq} ({len(r)} documents)")
    stale = r.seq < acknowledged
    r.refresh()
    print(f"after one refresh(): seq {r.seq} ({len(r)} documents)")
    r.close()
    print("BUG: the fresh Reader was stale" if stale else "ok: the fresh Reader was current")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
